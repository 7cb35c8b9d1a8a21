package caddylock

// The memory lock table's queues: a conflicting request waits first in,
// first out on the node of its key, watched by the node that blocks it,
// and is woken when that node lets go (see memLocker.wait).

import (
	"context"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

type waitLists struct {
	queue    []*waiter // FIFO of requests for this key
	watchers []*waiter // queue heads blocked by this node
}

func (n *node) queue() []*waiter {
	if n.waits == nil {
		return nil
	}
	return n.waits.queue
}

func (n *node) lists() *waitLists {
	if n.waits == nil {
		n.waits = new(waitLists)
	}
	return n.waits
}

type waiter struct {
	kind     lockstore.Kind
	node     *node
	ch       chan struct{} // signalled on grant or when the blocker changed
	granted  bool
	watching *node
}

func (l *memLocker) watch(b *node, w *waiter) {
	bl := b.lists()
	bl.watchers = append(bl.watchers, w)
	w.watching = b
}

func (l *memLocker) unwatch(w *waiter) {
	b := w.watching
	if b == nil {
		return
	}
	ws := b.waits.watchers
	for i, x := range ws {
		if x == w {
			b.waits.watchers = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	w.watching = nil
	if b != w.node {
		l.maybeFree(b)
	}
}

// advance grants the locks at the head of n's queue, in order, until the
// head conflicts; that head then watches its blocker. lin is n's lineage;
// the caller holds the shard set of n.key.
func (l *memLocker) advance(n *node, lin []anc) {
	for len(n.queue()) > 0 {
		q := n.waits.queue
		w := q[0]
		l.unwatch(w)
		if b := l.blocker(n, w.kind, lin); b != nil {
			l.watch(b, w)
			return
		}
		q[0] = nil
		n.waits.queue = q[1:]
		l.grant(n, w.kind, lin)
		w.granted = true
		signal(w)
	}
}

func signal(w *waiter) {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

func (l *memLocker) wait(ctx context.Context, req lockstore.Request, m uint64, lin []anc, w *waiter) (lockstore.Lease, error) {
	n := w.node
	timer := time.NewTimer(req.Wait)
	defer timer.Stop()
	for {
		var ctxErr error
		select {
		case <-w.ch:
			l.lock(m)
			if q := n.queue(); !w.granted && w.watching == nil && len(q) > 0 && q[0] == w {
				// Our blocker went away: try again.
				l.advance(n, lin)
			}
			granted := w.granted
			var ls *memLease
			if granted {
				ls = l.newLease(l.shardOf(n), n, true)
			}
			l.unlock(m)
			if granted {
				return ls, nil
			}
			continue
		case <-timer.C:
		case <-ctx.Done():
			ctxErr = ctx.Err()
		}
		l.lock(m)
		if w.granted {
			lease := l.newLease(l.shardOf(n), n, true)
			l.unlock(m)
			if ctxErr != nil {
				// The caller left; do not hand it a lock it will not use.
				lease.Release()
				return nil, ctxErr
			}
			return lease, nil
		}
		q := n.waits.queue
		head := q[0] == w
		for i, x := range q {
			if x == w {
				n.waits.queue = append(q[:i], q[i+1:]...)
				break
			}
		}
		var b *node
		if head {
			b = w.watching
			l.unwatch(w)
			// The next in line may be grantable, or must watch instead.
			l.advance(n, lin)
		}
		var err error = ctxErr
		if err == nil {
			err = l.conflict(n, b)
		}
		l.unreserve(l.shardOf(n))
		l.maybeFree(n)
		l.unlock(m)
		return nil, err
	}
}

// wake tells the waiters watching n, of lineage lin, that n changed. Watchers sit at n or
// below it (a blocker is the waiter's own key or an ancestor). Those at n
// are advanced right here, since the caller holds n's shard set; those
// below retry from their own goroutine under their own shard set.
func (l *memLocker) wake(n *node, lin []anc) {
	if n.waits == nil || len(n.waits.watchers) == 0 {
		return
	}
	ws := n.waits.watchers
	n.waits.watchers = nil
	own := false
	for _, w := range ws {
		w.watching = nil
		if w.node == n {
			own = true
		} else {
			signal(w)
		}
	}
	if own {
		l.advance(n, lin)
	}
}
