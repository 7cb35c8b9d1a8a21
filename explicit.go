package caddylock

// Explicit locks: locks a client takes with LOCK (RFC 4918) or an operator
// takes through the admin API. Unlike in-flight locks they outlive the
// request that made them, are named by a token, and end with UNLOCK, their
// timeout, or the DELETE or MOVE of their root.
//
// LockStore is the seam between the WebDAV handling and where explicit
// locks live: in memory (one Caddy) or in Redis (cluster mode). Both
// implementations keep the same rules, stated on each method.

import (
	"bytes"
	"container/heap"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// limitTitle is the title of the problem document of a LOCK refused for
// limit.
func limitTitle(limit string) string {
	switch limit {
	case lockstore.LimitLockBytes:
		return "Lock byte budget is used up"
	case lockstore.LimitLocksPerOwner:
		return "Too many locks for one owner"
	}
	return "Lock table is full"
}

// sameToken and tokenIn are lockstore.SameToken and lockstore.TokenIn,
// the constant-time comparisons of lock tokens, under the names the
// handler's code uses.
func sameToken(submitted, stored string) bool { return lockstore.SameToken(submitted, stored) }

func tokenIn(submitted []string, stored string) bool { return lockstore.TokenIn(submitted, stored) }

// memLockStore is the in-memory LockStore of one zone.
//
// Invariants, kept under mu:
//   - Every live lock is in byToken, in exactly one tree node's locks
//     (the node of its Root), and in expiries at its index.
//   - A tree node exists exactly while it or a node below it holds a
//     lock: count is the number of locks rooted at the node or below, and
//     the node is deleted (and unlinked from its parent) when it drops to
//     0. Affecting therefore visits only paths that hold locks.
//   - expiries is a min-heap on Expires; the timer, when set, fires at
//     its head, so expired locks go without a scan even when no call
//     comes.
//   - held equals len(byToken); it is also read without mu, so that
//     Affecting on a store without locks (every write in a zone that has
//     none) takes no zone-wide mutex.
//   - bytes is the sum of lockstore.LockBytes of the live locks, and owners[c] the
//     number of live locks with Creator c (absent when 0).
type memLockStore struct {
	held     atomic.Int64
	mu       sync.Mutex
	max      int
	maxBytes int64
	perOwner int
	bytes    int64
	owners   map[string]int
	byToken  map[string]*memLock
	tree     map[string]*lockNode
	expiries expiryHeap
	timer    *time.Timer // fires at timerAt; nil until first needed
	timerAt  time.Time   // expiries[0].Expires when the timer is set; zero when stopped
	closed   bool
}

type memLock struct {
	lockstore.ExplicitLock
	index int // position in expiries
}

type lockNode struct {
	locks    []*memLock          // rooted exactly here
	children map[string]struct{} // child paths whose subtree holds locks
	count    int                 // locks rooted here or below
}

// newMemLockStore returns an empty store that holds at most maxLocks
// locks (<= 0 means DefaultMaxLocks); past it Create fails with ErrFull.
func newMemLockStore(maxLocks int) *memLockStore {
	if maxLocks <= 0 {
		maxLocks = lockstore.DefaultMaxLocks
	}
	return &memLockStore{
		max:      maxLocks,
		maxBytes: lockstore.DefaultMaxLockBytes,
		perOwner: lockstore.DefaultMaxLocksPerOwner,
		owners:   make(map[string]int),
		byToken:  make(map[string]*memLock),
		tree:     make(map[string]*lockNode),
	}
}

// SetBudget changes max_lock_bytes and max_locks_per_owner (<= 0 means
// their defaults); locks already held are never dropped.
func (s *memLockStore) SetBudget(maxBytes int64, perOwner int) {
	if maxBytes <= 0 {
		maxBytes = lockstore.DefaultMaxLockBytes
	}
	if perOwner <= 0 {
		perOwner = lockstore.DefaultMaxLocksPerOwner
	}
	s.mu.Lock()
	s.maxBytes, s.perOwner = maxBytes, perOwner
	s.mu.Unlock()
}

// Usage reports what the live locks count against max_lock_bytes and how
// many of them owner holds; expired locks are dropped first.
func (s *memLockStore) Usage(owner string) (bytes int64, owned int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(time.Now())
	return s.bytes, s.owners[owner]
}

// SetMax changes the most locks the store holds (<= 0 means
// DefaultMaxLocks); locks already held are never dropped.
func (s *memLockStore) SetMax(maxLocks int) {
	if maxLocks <= 0 {
		maxLocks = lockstore.DefaultMaxLocks
	}
	s.mu.Lock()
	s.max = maxLocks
	s.mu.Unlock()
}

// SetLimits implements LockStore.
func (s *memLockStore) SetLimits(maxLocks int, maxBytes int64, perOwner int) {
	s.SetMax(maxLocks)
	s.SetBudget(maxBytes, perOwner)
}

// Close stops the expiry timer. Requests of an unloaded config that are
// still under way may go on using the store: each call still drops the
// expired locks it meets (see begin), but none are dropped on a timer.
func (s *memLockStore) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
}

// Len reports how many locks the store holds, expired ones included
// until they are dropped.
func (s *memLockStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byToken)
}

// begin locks the store after checking ctx and drops expired locks.
func (s *memLockStore) begin(ctx context.Context) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	now := time.Now()
	s.expire(now)
	return now, nil
}

// expire drops the locks whose time has come and sets the timer for the
// next one.
func (s *memLockStore) expire(now time.Time) {
	for len(s.expiries) > 0 && !s.expiries[0].Expires.After(now) {
		s.drop(s.expiries[0])
	}
	s.schedule(now)
}

func (s *memLockStore) schedule(now time.Time) {
	if s.closed || len(s.expiries) == 0 {
		if s.timer != nil && !s.timerAt.IsZero() {
			s.timer.Stop()
			s.timerAt = time.Time{}
		}
		return
	}
	at := s.expiries[0].Expires
	if at.Equal(s.timerAt) {
		return // set already; most changes leave the earliest expiry alone
	}
	s.timerAt = at
	if s.timer == nil {
		s.timer = time.AfterFunc(at.Sub(now), s.onTimer)
	} else {
		s.timer.Reset(at.Sub(now))
	}
}

func (s *memLockStore) onTimer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timerAt = time.Time{} // fired
	if !s.closed {
		s.expire(time.Now())
	}
}

// add indexes l everywhere.
func (s *memLockStore) add(l *memLock) {
	s.byToken[l.Token] = l
	s.bytes += lockstore.LockBytes(&l.ExplicitLock)
	s.owners[l.Creator]++
	s.held.Store(int64(len(s.byToken)))
	heap.Push(&s.expiries, l)
	n := s.node(l.Root)
	n.locks = append(n.locks, l)
	n.count++
	child := l.Root
	lockstore.Ancestors(l.Root, func(a string) bool {
		an := s.node(a)
		an.count++
		if an.children == nil {
			an.children = make(map[string]struct{})
		}
		an.children[child] = struct{}{}
		child = a
		return true
	})
}

func (s *memLockStore) node(p string) *lockNode {
	n, ok := s.tree[p]
	if !ok {
		n = &lockNode{}
		s.tree[p] = n
	}
	return n
}

// drop removes l from every index.
func (s *memLockStore) drop(l *memLock) {
	delete(s.byToken, l.Token)
	s.bytes -= lockstore.LockBytes(&l.ExplicitLock)
	if s.owners[l.Creator]--; s.owners[l.Creator] <= 0 {
		delete(s.owners, l.Creator)
	}
	s.held.Store(int64(len(s.byToken)))
	heap.Remove(&s.expiries, l.index)
	n := s.tree[l.Root]
	n.locks = slices.DeleteFunc(n.locks, func(x *memLock) bool { return x == l })
	s.release(l.Root, n)
	child, emptied := l.Root, n.count == 0
	lockstore.Ancestors(l.Root, func(a string) bool {
		an := s.tree[a]
		if emptied {
			delete(an.children, child)
		}
		s.release(a, an)
		child, emptied = a, an.count == 0
		return true
	})
}

func (s *memLockStore) release(p string, n *lockNode) {
	n.count--
	if n.count == 0 {
		delete(s.tree, p)
	}
}

// covering appends the live locks whose scope includes key.
func (s *memLockStore) covering(out []lockstore.ExplicitLock, key string) []lockstore.ExplicitLock {
	if n, ok := s.tree[key]; ok {
		for _, l := range n.locks {
			out = append(out, l.ExplicitLock)
		}
	}
	lockstore.Ancestors(key, func(a string) bool {
		if n, ok := s.tree[a]; ok {
			for _, l := range n.locks {
				if l.Depth == lockstore.DepthInfinity {
					out = append(out, l.ExplicitLock)
				}
			}
		}
		return true
	})
	return out
}

// under appends the locks rooted strictly below key.
func (s *memLockStore) under(out []lockstore.ExplicitLock, key string) []lockstore.ExplicitLock {
	n, ok := s.tree[key]
	if !ok {
		return out
	}
	for c := range n.children {
		cn := s.tree[c]
		for _, l := range cn.locks {
			out = append(out, l.ExplicitLock)
		}
		out = s.under(out, c)
	}
	return out
}

// Create implements LockStore.
func (s *memLockStore) Create(ctx context.Context, l lockstore.ExplicitLock) (lockstore.ExplicitLock, error) {
	now, err := s.begin(ctx)
	if err != nil {
		return lockstore.ExplicitLock{}, err
	}
	defer s.mu.Unlock()
	if l.Token == "" || l.Timeout <= 0 {
		return lockstore.ExplicitLock{}, fmt.Errorf("creating lock on %s: token and a positive timeout are required", l.Root)
	}
	if _, dup := s.byToken[l.Token]; dup {
		return lockstore.ExplicitLock{}, fmt.Errorf("creating lock on %s: token already in use", l.Root)
	}
	held := s.covering(nil, l.Root)
	if l.Depth == lockstore.DepthInfinity {
		held = s.under(held, l.Root)
	}
	var conflicts []lockstore.ExplicitLock
	for _, h := range held {
		if h.Scope == lockstore.Exclusive || l.Scope == lockstore.Exclusive {
			conflicts = append(conflicts, h)
		}
	}
	if len(conflicts) > 0 {
		lockstore.SortLocks(conflicts)
		return lockstore.ExplicitLock{}, &lockstore.LockConflictError{Conflicts: conflicts}
	}
	// The limits come after the conflicts: a conflicting lock is refused
	// as such, whatever room there is.
	if len(s.byToken) >= s.max {
		return lockstore.ExplicitLock{}, fmt.Errorf("creating lock on %s: %w", l.Root, &lockstore.ExplicitLimitError{Limit: lockstore.LimitLocks, Max: int64(s.max)})
	}
	if l.OwnerLimited() && s.owners[l.Creator] >= s.perOwner {
		return lockstore.ExplicitLock{}, fmt.Errorf("creating lock on %s: %w", l.Root, &lockstore.ExplicitLimitError{Limit: lockstore.LimitLocksPerOwner, Max: int64(s.perOwner)})
	}
	if s.bytes+lockstore.LockBytes(&l) > s.maxBytes {
		return lockstore.ExplicitLock{}, fmt.Errorf("creating lock on %s: %w", l.Root, &lockstore.ExplicitLimitError{Limit: lockstore.LimitLockBytes, Max: s.maxBytes})
	}
	l.Created = now
	l.Expires = now.Add(l.Timeout)
	// The owner as parsed may sit in a buffer up to twice its size; the
	// lock keeps a copy of its own, which is what lockstore.LockBytes counts.
	l.Owner = bytes.Clone(l.Owner)
	s.add(&memLock{ExplicitLock: l})
	s.schedule(now)
	return l, nil
}

// withToken runs fn on the live lock with token, under mu; ErrNoSuchLock
// when there is none.
func (s *memLockStore) withToken(ctx context.Context, token string, fn func(now time.Time, l *memLock) error) (lockstore.ExplicitLock, error) {
	now, err := s.begin(ctx)
	if err != nil {
		return lockstore.ExplicitLock{}, err
	}
	defer s.mu.Unlock()
	l, ok := s.byToken[token]
	if !ok {
		return lockstore.ExplicitLock{}, lockstore.ErrNoSuchLock
	}
	if err := fn(now, l); err != nil {
		return lockstore.ExplicitLock{}, err
	}
	return l.ExplicitLock, nil
}

// Refresh implements LockStore.
func (s *memLockStore) Refresh(ctx context.Context, token string, timeout time.Duration) (lockstore.ExplicitLock, error) {
	return s.withToken(ctx, token, func(now time.Time, l *memLock) error {
		if timeout <= 0 {
			return fmt.Errorf("refreshing lock on %s: timeout must be positive", l.Root)
		}
		l.Timeout = timeout
		l.Expires = now.Add(timeout)
		heap.Fix(&s.expiries, l.index)
		s.schedule(now)
		return nil
	})
}

// Get implements LockStore.
func (s *memLockStore) Get(ctx context.Context, token string) (lockstore.ExplicitLock, error) {
	return s.withToken(ctx, token, func(time.Time, *memLock) error { return nil })
}

// Remove implements LockStore.
func (s *memLockStore) Remove(ctx context.Context, token string) (lockstore.ExplicitLock, error) {
	return s.withToken(ctx, token, func(now time.Time, l *memLock) error {
		s.drop(l)
		s.schedule(now)
		return nil
	})
}

// Affecting implements LockStore.
func (s *memLockStore) Affecting(ctx context.Context, key string, below bool) ([]lockstore.ExplicitLock, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.held.Load() == 0 {
		return nil, nil
	}
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := s.covering(nil, key)
	if below {
		out = s.under(out, key)
	}
	lockstore.SortLocks(out)
	return out, nil
}

// RemoveUnder implements LockStore.
func (s *memLockStore) RemoveUnder(ctx context.Context, key string) (int, error) {
	now, err := s.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	var gone []*memLock
	if n, ok := s.tree[key]; ok {
		gone = append(gone, n.locks...)
	}
	for _, l := range s.under(nil, key) {
		gone = append(gone, s.byToken[l.Token])
	}
	for _, l := range gone {
		s.drop(l)
	}
	s.schedule(now)
	return len(gone), nil
}

// List implements LockStore.
func (s *memLockStore) List(ctx context.Context) ([]lockstore.ExplicitLock, error) {
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := make([]lockstore.ExplicitLock, 0, len(s.byToken))
	for _, l := range s.byToken {
		out = append(out, l.ExplicitLock)
	}
	lockstore.SortLocks(out)
	return out, nil
}

// expiryHeap orders locks by Expires (container/heap); each lock knows
// its index so that Refresh and Remove can fix or remove it in O(log n).
type expiryHeap []*memLock

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].Expires.Before(h[j].Expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *expiryHeap) Push(x any) {
	l := x.(*memLock)
	l.index = len(*h)
	*h = append(*h, l)
}
func (h *expiryHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	l.index = -1
	return l
}

// Interface guard
var _ lockstore.LockStore = (*memLockStore)(nil)
