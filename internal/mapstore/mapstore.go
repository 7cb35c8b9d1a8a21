// Package mapstore is a lock store as small as the contract allows: each
// table is a map under one mutex. It imports nothing of the handler, only
// lockstore, passes the storetest suites and serves the handler in a
// test, which shows that the seam is all a store needs. It is for tests:
// every operation walks the whole table.
package mapstore

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// NewLocker returns an empty in-flight lock table.
func NewLocker(hierarchy bool, maxLocks, maxWaiters int) lockstore.Locker {
	l := &mapLocker{hierarchy: hierarchy, held: map[string]*holding{}, queues: map[string][]*waiter{}}
	l.SetLimits(maxLocks, maxWaiters)
	return l
}

// NewLockStore returns an empty explicit lock store with the default
// limits.
func NewLockStore() lockstore.LockStore {
	s := &mapLockStore{locks: map[string]lockstore.ExplicitLock{}}
	s.SetLimits(0, 0, 0)
	return s
}

// mapLocker is a Locker over a map of held keys and a map of queues.
// Every change that can unblock a waiter runs advance, which grants the
// head of every queue it can.
type mapLocker struct {
	hierarchy bool

	mu                   sync.Mutex
	maxLocks, maxWaiters int64
	places               int64 // holders and waiters, against maxLocks
	held                 map[string]*holding
	queues               map[string][]*waiter
	avgHold              time.Duration
}

type holding struct {
	kind  lockstore.Kind
	n     int
	since time.Time
}

type waiter struct {
	kind    lockstore.Kind
	granted bool
	ready   chan struct{} // closed on grant
}

func (l *mapLocker) Hierarchy() bool { return l.hierarchy }

func (l *mapLocker) SetLimits(maxLocks, maxWaiters int) {
	locks, waiters := lockstore.Limits(maxLocks, maxWaiters)
	l.mu.Lock()
	l.maxLocks, l.maxWaiters = locks, waiters
	l.mu.Unlock()
}

func (l *mapLocker) HeldLocks(ctx context.Context) ([]lockstore.HeldLock, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []lockstore.HeldLock
	for k, h := range l.held {
		out = append(out, lockstore.HeldLock{Key: k, Kind: h.kind, Holders: h.n, Since: h.since, Waiting: len(l.queues[k])})
	}
	return out, nil
}

// blocker returns the conflict that a lock of kind on key meets among the
// held locks, nil when there is none.
func (l *mapLocker) blocker(key string, kind lockstore.Kind) *lockstore.ConflictError {
	clash := func(h *holding) bool { return kind == lockstore.Exclusive || h.kind == lockstore.Exclusive }
	var c *lockstore.ConflictError
	found := func(k string, h *holding, below bool) {
		c = &lockstore.ConflictError{Key: k, Kind: h.kind, HeldFor: time.Since(h.since), Below: below}
	}
	if h := l.held[key]; h != nil && clash(h) {
		found(key, h, false)
	} else if l.hierarchy {
		lockstore.Ancestors(key, func(a string) bool {
			if h := l.held[a]; h != nil && clash(h) {
				found(a, h, false)
			}
			return c == nil
		})
		for k, h := range l.held {
			if c == nil && lockstore.Below(k, key) && clash(h) {
				found(key, h, true)
			}
		}
	}
	if c != nil {
		c.RetryAfter = max(time.Second, l.avgHold.Truncate(time.Second)+time.Second)
	}
	return c
}

// inTheWay is the conflict a newcomer on key reports: what blocks it, or
// with a queue on key, what blocks the queue's head (held locks on key
// when nothing does).
func (l *mapLocker) inTheWay(key string, kind lockstore.Kind) *lockstore.ConflictError {
	if q := l.queues[key]; len(q) > 0 {
		kind = q[0].kind
	}
	if c := l.blocker(key, kind); c != nil {
		return c
	}
	if c := l.blocker(key, lockstore.Exclusive); c != nil {
		return c
	}
	return &lockstore.ConflictError{Key: key, Kind: lockstore.Exclusive, RetryAfter: time.Second}
}

func (l *mapLocker) grant(key string, kind lockstore.Kind) {
	if h := l.held[key]; h != nil {
		h.n++
		return
	}
	l.held[key] = &holding{kind: kind, n: 1, since: time.Now()}
}

// advance grants the head of every queue that nothing blocks, until no
// more can be granted.
func (l *mapLocker) advance() {
	for again := true; again; {
		again = false
		for key, q := range l.queues {
			if len(q) == 0 || l.blocker(key, q[0].kind) != nil {
				continue
			}
			w := q[0]
			l.dequeue(key, w)
			l.grant(key, w.kind)
			w.granted = true
			close(w.ready)
			again = true
		}
	}
}

func (l *mapLocker) dequeue(key string, w *waiter) {
	q := l.queues[key]
	for i, x := range q {
		if x == w {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(l.queues, key)
	} else {
		l.queues[key] = q
	}
}

func (l *mapLocker) Acquire(ctx context.Context, req lockstore.Request) (lockstore.Lease, error) {
	if req.Kind != lockstore.Shared && req.Kind != lockstore.Exclusive {
		return nil, fmt.Errorf("acquire %q: invalid lock kind %v", req.Key, req.Kind)
	}
	if l.hierarchy {
		if err := lockstore.CheckDepth(req.Key); err != nil {
			return nil, fmt.Errorf("acquire: %w", err)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	free := len(l.queues[req.Key]) == 0 && l.blocker(req.Key, req.Kind) == nil
	if !free && (req.Wait <= 0 || int64(len(l.queues[req.Key])) >= l.maxWaiters || ctx.Err() != nil) {
		return nil, l.inTheWay(req.Key, req.Kind)
	}
	if l.places >= l.maxLocks {
		return nil, lockstore.ErrFull
	}
	l.places++
	if free {
		l.grant(req.Key, req.Kind)
		return &mapLease{l: l, key: req.Key}, nil
	}
	w := &waiter{kind: req.Kind, ready: make(chan struct{})}
	l.queues[req.Key] = append(l.queues[req.Key], w)
	timer := time.NewTimer(req.Wait)
	defer timer.Stop()
	l.mu.Unlock()
	var ctxErr error
	select {
	case <-w.ready:
	case <-timer.C:
	case <-ctx.Done():
		ctxErr = ctx.Err()
	}
	l.mu.Lock()
	if w.granted {
		ls := &mapLease{l: l, key: req.Key, queued: true}
		if ctxErr != nil {
			ls.release()
			return nil, ctxErr
		}
		return ls, nil
	}
	l.dequeue(req.Key, w)
	l.places--
	l.advance() // the one behind may be free now
	if ctxErr != nil {
		return nil, ctxErr
	}
	return nil, l.inTheWay(req.Key, req.Kind)
}

type mapLease struct {
	l      *mapLocker
	key    string
	queued bool
	once   sync.Once
}

func (ls *mapLease) Release() {
	ls.l.mu.Lock()
	defer ls.l.mu.Unlock()
	ls.release()
}

// release gives the lock back, under the locker's mutex.
func (ls *mapLease) release() {
	ls.once.Do(func() {
		l := ls.l
		h := l.held[ls.key]
		if h.n--; h.n == 0 {
			delete(l.held, ls.key)
			// An average over about the last HoldWindow holds.
			l.avgHold += (time.Since(h.since) - l.avgHold) / lockstore.HoldWindow
		}
		l.places--
		l.advance()
	})
}

func (ls *mapLease) Queued() bool              { return ls.queued }
func (ls *mapLease) ExplicitLocksInZone() bool { return true }

// mapLockStore is a LockStore over a map of locks by token; every call
// first drops the expired ones.
type mapLockStore struct {
	mu                 sync.Mutex
	maxLocks, perOwner int
	maxBytes           int64
	locks              map[string]lockstore.ExplicitLock
}

func (s *mapLockStore) SetLimits(maxLocks int, maxBytes int64, perOwner int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxLocks, s.maxBytes, s.perOwner = lockstore.DefaultMaxLocks, lockstore.DefaultMaxLockBytes, lockstore.DefaultMaxLocksPerOwner
	if maxLocks > 0 {
		s.maxLocks = maxLocks
	}
	if maxBytes > 0 {
		s.maxBytes = maxBytes
	}
	if perOwner > 0 {
		s.perOwner = perOwner
	}
}

// begin checks ctx, locks the store and drops the expired locks.
func (s *mapLockStore) begin(ctx context.Context) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	now := time.Now()
	for tok, l := range s.locks {
		if !now.Before(l.Expires) {
			delete(s.locks, tok)
		}
	}
	return now, nil
}

// matching returns the locks for which keep holds, in List's order.
func (s *mapLockStore) matching(keep func(*lockstore.ExplicitLock) bool) []lockstore.ExplicitLock {
	var out []lockstore.ExplicitLock
	for _, l := range s.locks {
		if keep(&l) {
			out = append(out, l)
		}
	}
	lockstore.SortLocks(out)
	return out
}

func (s *mapLockStore) Create(ctx context.Context, l lockstore.ExplicitLock) (lockstore.ExplicitLock, error) {
	now, err := s.begin(ctx)
	if err != nil {
		return lockstore.ExplicitLock{}, err
	}
	defer s.mu.Unlock()
	if l.Token == "" || l.Timeout <= 0 || (l.Scope != lockstore.Shared && l.Scope != lockstore.Exclusive) ||
		(l.Depth != lockstore.DepthZero && l.Depth != lockstore.DepthInfinity) {
		return lockstore.ExplicitLock{}, fmt.Errorf("creating lock on %s: invalid lock %+v", l.Root, l)
	}
	if conflicts := s.matching(func(h *lockstore.ExplicitLock) bool {
		return (h.Covers(l.Root) || l.Covers(h.Root)) && (h.Scope == lockstore.Exclusive || l.Scope == lockstore.Exclusive)
	}); len(conflicts) > 0 {
		return lockstore.ExplicitLock{}, &lockstore.LockConflictError{Conflicts: conflicts}
	}
	var owned int
	var used int64
	for _, h := range s.locks {
		used += lockstore.LockBytes(&h)
		if h.OwnerLimited() && h.Creator == l.Creator {
			owned++
		}
	}
	var limit *lockstore.ExplicitLimitError
	switch {
	case len(s.locks) >= s.maxLocks:
		limit = &lockstore.ExplicitLimitError{Limit: lockstore.LimitLocks, Max: int64(s.maxLocks)}
	case l.OwnerLimited() && owned >= s.perOwner:
		limit = &lockstore.ExplicitLimitError{Limit: lockstore.LimitLocksPerOwner, Max: int64(s.perOwner)}
	case used+lockstore.LockBytes(&l) > s.maxBytes:
		limit = &lockstore.ExplicitLimitError{Limit: lockstore.LimitLockBytes, Max: s.maxBytes}
	}
	if limit != nil {
		return lockstore.ExplicitLock{}, fmt.Errorf("creating lock on %s: %w", l.Root, limit)
	}
	l.Created, l.Expires, l.Owner = now, now.Add(l.Timeout), bytes.Clone(l.Owner)
	s.locks[l.Token] = l
	return l, nil
}

func (s *mapLockStore) withToken(ctx context.Context, token string, fn func(now time.Time, l *lockstore.ExplicitLock)) (lockstore.ExplicitLock, error) {
	now, err := s.begin(ctx)
	if err != nil {
		return lockstore.ExplicitLock{}, err
	}
	defer s.mu.Unlock()
	l, ok := s.locks[token]
	if !ok {
		return lockstore.ExplicitLock{}, lockstore.ErrNoSuchLock
	}
	fn(now, &l)
	return l, nil
}

func (s *mapLockStore) Refresh(ctx context.Context, token string, timeout time.Duration) (lockstore.ExplicitLock, error) {
	return s.withToken(ctx, token, func(now time.Time, l *lockstore.ExplicitLock) {
		l.Timeout, l.Expires = timeout, now.Add(timeout)
		s.locks[token] = *l
	})
}

func (s *mapLockStore) Get(ctx context.Context, token string) (lockstore.ExplicitLock, error) {
	return s.withToken(ctx, token, func(time.Time, *lockstore.ExplicitLock) {})
}

func (s *mapLockStore) Remove(ctx context.Context, token string) (lockstore.ExplicitLock, error) {
	return s.withToken(ctx, token, func(time.Time, *lockstore.ExplicitLock) { delete(s.locks, token) })
}

func (s *mapLockStore) Affecting(ctx context.Context, key string, below bool) ([]lockstore.ExplicitLock, error) {
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.matching(func(l *lockstore.ExplicitLock) bool {
		return l.Covers(key) || below && lockstore.Below(l.Root, key)
	}), nil
}

func (s *mapLockStore) RemoveUnder(ctx context.Context, key string) (int, error) {
	if _, err := s.begin(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	gone := s.matching(func(l *lockstore.ExplicitLock) bool { return l.Root == key || lockstore.Below(l.Root, key) })
	for _, l := range gone {
		delete(s.locks, l.Token)
	}
	return len(gone), nil
}

func (s *mapLockStore) List(ctx context.Context) ([]lockstore.ExplicitLock, error) {
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.matching(func(*lockstore.ExplicitLock) bool { return true }), nil
}

// Interface guards
var (
	_ lockstore.Locker    = (*mapLocker)(nil)
	_ lockstore.LockStore = (*mapLockStore)(nil)
)
