package redisstore

import (
	"context"
	"strings"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// addWaiter registers a local waiter for release notifications, starting
// the zone's subscription on first use.
func (l *Locker) addWaiter(key, wtok string) *waiter {
	w := &waiter{key: key, wtok: wtok, ch: make(chan struct{}, 1)}
	l.waitMu.Lock()
	l.waiters[w] = struct{}{}
	l.waitMu.Unlock()
	l.subscribe()
	return w
}

func (l *Locker) removeWaiter(w *waiter) {
	l.waitMu.Lock()
	delete(l.waiters, w)
	l.waitMu.Unlock()
}

// subscribe starts the one subscription of this locker to the zone's
// release channel. go-redis reconnects and resubscribes by itself; what is
// missed meanwhile the waiters' fallback poll covers.
func (l *Locker) subscribe() {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	if l.ps != nil || l.closed.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	l.ps = l.client.Subscribe(ctx, l.channel)
	cancel()
	ch := l.ps.Channel()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.done:
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				l.wake(m.Payload)
			}
		}
	}()
}

// wake signals the local waiters a message concerns: for "key\0token" the
// waiter with that token, which became the head of its queue; for a key,
// the heads of queues on that key and, with hierarchy, on its ancestors
// and descendants.
func (l *Locker) wake(msg string) {
	key, wtok, named := strings.Cut(msg, "\x00")
	l.waitMu.Lock()
	defer l.waitMu.Unlock()
	for w := range l.waiters {
		var hit bool
		if named {
			hit = w.wtok == wtok
		} else {
			hit = !w.behind.Load() && (w.key == key || (l.hierarchy && (lockstore.Below(key, w.key) || lockstore.Below(w.key, key))))
		}
		if hit {
			select {
			case w.ch <- struct{}{}:
			default:
			}
		}
	}
}
