package caddylock

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is the kind of lock a request takes on its key.
type Kind uint8

const (
	// Shared locks coexist with each other and exclude exclusive ones.
	Shared Kind = iota + 1
	// Exclusive locks exclude every other lock on the key.
	Exclusive
)

func (k Kind) String() string {
	switch k {
	case Shared:
		return "shared"
	case Exclusive:
		return "exclusive"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Request says which lock to take.
type Request struct {
	// Key identifies the resource (a normalised path by default).
	Key string
	// Kind is shared or exclusive.
	Kind Kind
	// Wait is how long to queue behind a conflicting lock before giving
	// up; 0 answers at once.
	Wait time.Duration
}

// Locker is a lock table. Acquire either grants the lock and returns a
// Lease, or returns a *ConflictError, ErrFull, or the context's error when
// ctx ends while the request is queued. Implementations keep at most one
// grant per conflicting set: a lock is never granted twice.
type Locker interface {
	Acquire(ctx context.Context, req Request) (Lease, error)
}

// Lease is a granted lock. Release gives it back; it is safe to call more
// than once and from any goroutine, and only the first call has an effect.
type Lease interface {
	Release()
}

// ErrFull means the zone holds max_locks locks and waiters already; the
// request is refused rather than evicting anybody's lock.
var ErrFull = errors.New("lock table is full")

// ConflictError describes the lock that stood in the way.
type ConflictError struct {
	// Key is the key of the conflicting lock (an ancestor or the key
	// itself, with hierarchy).
	Key string
	// Kind is the kind of the conflicting lock.
	Kind Kind
	// HeldFor is how long the conflicting lock has been held.
	HeldFor time.Duration
	// Below is set when the conflict is with locks held under Key.
	Below bool
	// RetryAfter is the estimated time until the lock is free, from the
	// recently observed hold times; at least one second.
	RetryAfter time.Duration
}

func (e *ConflictError) Error() string {
	where := "on"
	if e.Below {
		where = "below"
	}
	return fmt.Sprintf("conflicts with the %s lock %s %s, held for %s", e.Kind, where, e.Key, e.HeldFor.Round(time.Millisecond))
}

// Defaults for a zone.
const (
	DefaultMaxLocks   = 100000
	DefaultMaxWaiters = 64
)

// numShards is 64 so that a set of shards fits in one uint64 mask, which
// lets hierarchical acquisitions lock several shards in ascending order
// without allocating.
const numShards = 64

// MemLocker is the in-memory lock table of one zone.
//
// Invariants, kept under the shard mutexes:
//   - A node is in its shard's map exactly while it is held, counts locks
//     held below it, has waiters queued, or is watched by a waiter; it is
//     removed (and recycled) as soon as none of these is true.
//   - A node is held either exclusively by one lease or shared by
//     node.shared leases, never both.
//   - Only the head of a key's queue watches a blocker; the blocker is the
//     key's own node or one of its ancestors, so every operation on a
//     waiter happens under the shard set of the waiter's own key.
//   - A request never overtakes a non-empty queue on its own key (FIFO).
//   - reserved counts held locks plus queued waiters; it never exceeds
//     maxLocks.
type MemLocker struct {
	hierarchy  bool
	maxLocks   atomic.Int64
	maxWaiters atomic.Int64
	reserved   atomic.Int64
	seed       maphash.Seed
	shards     [numShards]shard
}

type shard struct {
	mu    sync.Mutex
	nodes map[string]*node
	free  []*node
	// avgHold is an exponentially weighted average of hold times of the
	// locks released in this shard, for Retry-After.
	avgHold time.Duration
	// releases counts releases, to sample one hold time in holdSample:
	// reading the clock is a large part of an uncontended release.
	releases uint
	_        [64]byte // keep shards on separate cache lines
}

type node struct {
	key    string
	shard  uint // shardOf(key), kept to hash the key once
	excl   bool
	shared int32
	since  time.Time // start of the current held period
	// Locks held strictly below this key (hierarchy only), since
	// belowSince.
	belowExcl, belowShared int32
	belowSince             time.Time
	queue                  []*waiter // FIFO
	watchers               []*waiter // queue heads blocked by this node
}

func (n *node) held() bool { return n.excl || n.shared > 0 }

func (n *node) idle() bool {
	return !n.held() && n.belowExcl == 0 && n.belowShared == 0 && len(n.queue) == 0 && len(n.watchers) == 0
}

// heldConflicts reports whether locks held on n itself conflict with kind.
func (n *node) heldConflicts(kind Kind) bool {
	return n.excl || (kind == Exclusive && n.shared > 0)
}

type waiter struct {
	kind     Kind
	node     *node
	ch       chan struct{} // signalled on grant or when the blocker changed
	granted  bool
	watching *node
}

const (
	maxFree    = 64
	holdSample = 8
)

// NewMemLocker returns an empty lock table.
func NewMemLocker(hierarchy bool, maxLocks, maxWaiters int) *MemLocker {
	l := &MemLocker{hierarchy: hierarchy, seed: maphash.MakeSeed()}
	l.SetLimits(maxLocks, maxWaiters)
	for i := range l.shards {
		l.shards[i].nodes = make(map[string]*node)
	}
	return l
}

// SetLimits changes max_locks and max_waiters (per key); values <= 0 mean
// the defaults. Locks already held are never affected.
func (l *MemLocker) SetLimits(maxLocks, maxWaiters int) {
	if maxLocks <= 0 {
		maxLocks = DefaultMaxLocks
	}
	if maxWaiters <= 0 {
		maxWaiters = DefaultMaxWaiters
	}
	l.maxLocks.Store(int64(maxLocks))
	l.maxWaiters.Store(int64(maxWaiters))
}

// Hierarchy reports whether a lock covers the keys below it.
func (l *MemLocker) Hierarchy() bool { return l.hierarchy }

// Stats reports held locks, queued waiters and nodes in the table.
func (l *MemLocker) Stats() (held, waiting, nodes int) {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for _, n := range s.nodes {
			nodes++
			waiting += len(n.queue)
			if n.excl {
				held++
			}
			held += int(n.shared)
		}
		s.mu.Unlock()
	}
	return held, waiting, nodes
}

func (l *MemLocker) shardOf(key string) uint {
	return uint(maphash.String(l.seed, key) % numShards)
}

// ancestors calls fn for every proper ancestor of a "/"-rooted key, from
// the nearest up to "/". Keys that do not start with "/" have none.
func ancestors(key string, fn func(string) bool) {
	if len(key) < 2 || key[0] != '/' {
		return
	}
	for i := strings.LastIndexByte(key, '/'); i >= 0; i = strings.LastIndexByte(key[:i], '/') {
		a := key[:i]
		if i == 0 {
			a = "/"
		}
		if !fn(a) {
			return
		}
		if i == 0 {
			return
		}
	}
}

// mask is the set of shards an operation on key must hold; shard is
// shardOf(key).
func (l *MemLocker) mask(key string, shard uint) uint64 {
	m := uint64(1) << shard
	if l.hierarchy {
		ancestors(key, func(a string) bool {
			m |= 1 << l.shardOf(a)
			return true
		})
	}
	return m
}

// lock takes the shards of mask in ascending order, which is what keeps
// two hierarchical operations from deadlocking.
func (l *MemLocker) lock(m uint64) {
	for m != 0 {
		i := bits.TrailingZeros64(m)
		l.shards[i].mu.Lock()
		m &^= 1 << i
	}
}

func (l *MemLocker) unlock(m uint64) {
	for m != 0 {
		i := bits.TrailingZeros64(m)
		l.shards[i].mu.Unlock()
		m &^= 1 << i
	}
}

func (l *MemLocker) lookup(key string) *node {
	return l.shards[l.shardOf(key)].nodes[key]
}

func (l *MemLocker) getNode(key string) *node {
	return l.getNodeIn(key, l.shardOf(key))
}

func (l *MemLocker) getNodeIn(key string, shard uint) *node {
	s := &l.shards[shard]
	if n := s.nodes[key]; n != nil {
		return n
	}
	var n *node
	if k := len(s.free); k > 0 {
		n = s.free[k-1]
		s.free = s.free[:k-1]
	} else {
		n = new(node)
	}
	n.key = key
	n.shard = shard
	s.nodes[key] = n
	return n
}

// maybeFree removes n from the table if nothing refers to it any more.
func (l *MemLocker) maybeFree(n *node) {
	if !n.idle() {
		return
	}
	s := &l.shards[n.shard]
	if s.nodes[n.key] != n {
		return
	}
	delete(s.nodes, n.key)
	*n = node{queue: n.queue[:0], watchers: n.watchers[:0]}
	if len(s.free) < maxFree {
		s.free = append(s.free, n)
	}
}

// blocker returns the node whose locks conflict with taking kind on n, or
// nil when the lock can be granted.
func (l *MemLocker) blocker(n *node, kind Kind) *node {
	if n.heldConflicts(kind) {
		return n
	}
	if !l.hierarchy {
		return nil
	}
	if n.belowExcl > 0 || (kind == Exclusive && n.belowShared > 0) {
		return n
	}
	var b *node
	ancestors(n.key, func(a string) bool {
		if an := l.lookup(a); an != nil && an.heldConflicts(kind) {
			b = an
			return false
		}
		return true
	})
	return b
}

func (l *MemLocker) grant(n *node, kind Kind) {
	if !n.held() {
		n.since = time.Now()
	}
	if kind == Exclusive {
		n.excl = true
	} else {
		n.shared++
	}
	if l.hierarchy {
		ancestors(n.key, func(a string) bool {
			an := l.getNode(a)
			if an.belowExcl == 0 && an.belowShared == 0 {
				an.belowSince = n.since
			}
			if kind == Exclusive {
				an.belowExcl++
			} else {
				an.belowShared++
			}
			return true
		})
	}
}

func (l *MemLocker) conflict(n *node, b *node) *ConflictError {
	if b == nil {
		// Only the queue stood in the way: report the key itself.
		b = n
	}
	e := &ConflictError{Key: b.key, Kind: Shared}
	switch {
	case b.held():
		if b.excl {
			e.Kind = Exclusive
		}
		e.HeldFor = time.Since(b.since)
	case b.belowExcl > 0 || b.belowShared > 0:
		e.Below = true
		e.HeldFor = time.Since(b.belowSince)
		if b.belowExcl > 0 {
			e.Kind = Exclusive
		}
	}
	avg := l.shards[b.shard].avgHold
	remaining := avg - e.HeldFor
	if remaining <= 0 {
		remaining = avg
	}
	e.RetryAfter = max(1, (remaining+time.Second-1)/time.Second) * time.Second
	return e
}

func (l *MemLocker) watch(b *node, w *waiter) {
	b.watchers = append(b.watchers, w)
	w.watching = b
}

func (l *MemLocker) unwatch(w *waiter) {
	b := w.watching
	if b == nil {
		return
	}
	for i, x := range b.watchers {
		if x == w {
			b.watchers = append(b.watchers[:i], b.watchers[i+1:]...)
			break
		}
	}
	w.watching = nil
	if b != w.node {
		l.maybeFree(b)
	}
}

// advance grants the locks at the head of n's queue, in order, until the
// head conflicts; that head then watches its blocker. The caller holds the
// shard set of n.key.
func (l *MemLocker) advance(n *node) {
	for len(n.queue) > 0 {
		w := n.queue[0]
		l.unwatch(w)
		if b := l.blocker(n, w.kind); b != nil {
			l.watch(b, w)
			return
		}
		n.queue[0] = nil
		n.queue = n.queue[1:]
		l.grant(n, w.kind)
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

func (l *MemLocker) reserve() bool {
	if l.reserved.Add(1) > l.maxLocks.Load() {
		l.reserved.Add(-1)
		return false
	}
	return true
}

// Acquire implements Locker.
func (l *MemLocker) Acquire(ctx context.Context, req Request) (Lease, error) {
	if req.Kind != Shared && req.Kind != Exclusive {
		return nil, fmt.Errorf("acquire %q: invalid lock kind %v", req.Key, req.Kind)
	}
	shard := l.shardOf(req.Key)
	m := l.mask(req.Key, shard)
	l.lock(m)
	n := l.getNodeIn(req.Key, shard)
	var b *node
	if len(n.queue) == 0 {
		if b = l.blocker(n, req.Kind); b == nil {
			if !l.reserve() {
				l.maybeFree(n)
				l.unlock(m)
				return nil, ErrFull
			}
			l.grant(n, req.Kind)
			l.unlock(m)
			return &memLease{l: l, n: n, kind: req.Kind}, nil
		}
	} else {
		b = l.blocker(n, n.queue[0].kind)
	}
	// A conflict. It is reported as such even when the table is full:
	// the lock in the way is the more useful answer.
	if req.Wait <= 0 || int64(len(n.queue)) >= l.maxWaiters.Load() || ctx.Err() != nil {
		err := l.conflict(n, b)
		l.maybeFree(n)
		l.unlock(m)
		return nil, err
	}
	if !l.reserve() {
		l.maybeFree(n)
		l.unlock(m)
		return nil, ErrFull
	}
	w := &waiter{kind: req.Kind, node: n, ch: make(chan struct{}, 1)}
	n.queue = append(n.queue, w)
	if len(n.queue) == 1 {
		l.watch(b, w)
	}
	l.unlock(m)
	return l.wait(ctx, req, m, w)
}

func (l *MemLocker) wait(ctx context.Context, req Request, m uint64, w *waiter) (Lease, error) {
	n := w.node
	timer := time.NewTimer(req.Wait)
	defer timer.Stop()
	for {
		var ctxErr error
		select {
		case <-w.ch:
			l.lock(m)
			if !w.granted && w.watching == nil && len(n.queue) > 0 && n.queue[0] == w {
				// Our blocker went away: try again.
				l.advance(n)
			}
			granted := w.granted
			l.unlock(m)
			if granted {
				return &memLease{l: l, n: n, kind: w.kind}, nil
			}
			continue
		case <-timer.C:
		case <-ctx.Done():
			ctxErr = ctx.Err()
		}
		l.lock(m)
		if w.granted {
			l.unlock(m)
			lease := &memLease{l: l, n: n, kind: w.kind}
			if ctxErr != nil {
				// The caller left; do not hand it a lock it will not use.
				lease.Release()
				return nil, ctxErr
			}
			return lease, nil
		}
		head := n.queue[0] == w
		for i, x := range n.queue {
			if x == w {
				n.queue = append(n.queue[:i], n.queue[i+1:]...)
				break
			}
		}
		var b *node
		if head {
			b = w.watching
			l.unwatch(w)
			// The next in line may be grantable, or must watch instead.
			l.advance(n)
		}
		var err error = ctxErr
		if err == nil {
			err = l.conflict(n, b)
		}
		l.maybeFree(n)
		l.unlock(m)
		l.reserved.Add(-1)
		return nil, err
	}
}

func (l *MemLocker) release(n *node, kind Kind) {
	key := n.key // n may be recycled below
	m := l.mask(key, n.shard)
	l.lock(m)
	if kind == Exclusive {
		n.excl = false
	} else {
		n.shared--
	}
	s := &l.shards[n.shard]
	if !n.held() {
		if s.releases++; s.releases%holdSample == 0 {
			s.avgHold += (time.Since(n.since) - s.avgHold) / 8
		}
	}
	l.wake(n)
	if l.hierarchy {
		ancestors(n.key, func(a string) bool {
			an := l.lookup(a)
			if kind == Exclusive {
				an.belowExcl--
			} else {
				an.belowShared--
			}
			l.wake(an)
			return true
		})
	}
	l.advance(n)
	l.maybeFree(n)
	if l.hierarchy {
		ancestors(key, func(a string) bool {
			if an := l.lookup(a); an != nil {
				l.maybeFree(an)
			}
			return true
		})
	}
	l.unlock(m)
	l.reserved.Add(-1)
}

// wake tells the waiters watching n that n changed. Watchers sit at n or
// below it (a blocker is the waiter's own key or an ancestor). Those at n
// are advanced right here, since the caller holds n's shard set; those
// below retry from their own goroutine under their own shard set.
func (l *MemLocker) wake(n *node) {
	if len(n.watchers) == 0 {
		return
	}
	ws := n.watchers
	n.watchers = nil
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
		l.advance(n)
	}
}

type memLease struct {
	l    *MemLocker
	n    *node
	kind Kind
	done atomic.Bool
}

func (ls *memLease) Release() {
	if ls.done.Swap(true) {
		return
	}
	ls.l.release(ls.n, ls.kind)
}

var (
	_ Locker = (*MemLocker)(nil)
	_ Lease  = (*memLease)(nil)
)
