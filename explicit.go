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
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ExplicitLock is one explicit lock.
type ExplicitLock struct {
	// Token is the lock token, an absolute URI ("urn:uuid:…"), unique
	// and unguessable.
	Token string `json:"-"`
	// Root is the lock key of the locked resource: the normalised path
	// (case-folded when the zone is case-insensitive).
	Root string `json:"root"`
	// Href is the root's path as the client named it, for DAV:lockroot.
	Href string `json:"href"`
	// Scope is Exclusive or Shared.
	Scope Kind `json:"-"`
	// Depth is DepthZero or DepthInfinity; an infinite lock covers every
	// resource under Root.
	Depth Depth `json:"-"`
	// Owner is the DAV:owner element of the LOCK body, verbatim (XML),
	// echoed in lock discovery; for admin locks a plain string.
	Owner []byte `json:"-"`
	// Creator is the authenticated user who took the lock
	// ({http.auth.user.id}); "" when the request was not authenticated.
	// Only the creator may UNLOCK or write with the token.
	Creator string `json:"creator,omitempty"`
	// Created is when the lock was granted.
	Created time.Time `json:"created"`
	// Timeout is the lifetime granted by the last LOCK or refresh.
	Timeout time.Duration `json:"-"`
	// Expires is when the lock ends unless refreshed. Always set: every
	// timeout is clamped to max_timeout.
	Expires time.Time `json:"expires"`
}

// Covers reports whether key lies in the lock's scope: the root itself,
// or anything below it when the depth is infinity.
func (l *ExplicitLock) Covers(key string) bool {
	return key == l.Root || (l.Depth == DepthInfinity && isBelow(key, l.Root))
}

// isBelow reports whether key is strictly below the path root.
func isBelow(key, root string) bool {
	if root == "/" {
		return len(key) > 1 && key[0] == '/'
	}
	return len(key) > len(root) && key[len(root)] == '/' && strings.HasPrefix(key, root)
}

// Defaults of the limits on a zone's explicit locks besides max_locks.
const (
	// DefaultMaxLockBytes is max_lock_bytes: what the explicit locks of a
	// zone may keep, as counted by lockBytes. Without it max_locks alone
	// let LOCKs with large owners keep gigabytes (each may carry an owner
	// of twice max_lock_body for up to max_timeout, refreshable).
	DefaultMaxLockBytes int64 = 64 << 20
	// DefaultMaxLocksPerOwner is max_locks_per_owner: one user (all
	// anonymous clients together) cannot take the whole zone's table or
	// budget.
	DefaultMaxLocksPerOwner = 100
)

// Bytes counted per lock besides its strings: the lock record and its
// index entries (lockFixedBytes), and, in memory, the tree node and child
// map entry that each segment of the root may need (lockSegmentBytes,
// measured at about 340). TestExplicitLockBytesCoverHeap checks that the
// count covers the heap a lock keeps; an over-estimate is the safe side.
const (
	lockFixedBytes   = 512
	lockSegmentBytes = 384
)

// lockBytes is what a lock counts against max_lock_bytes: what it keeps
// (token, root, href, owner XML, creator) and a fixed share for its
// records and index entries. The root is counted three times: the memory
// store keeps it with the lock and as tree node keys, Redis in the
// lock's hash and in both index entries. The owner, the one large part,
// is counted with an eighth more for the allocator's rounding. Both
// stores count the same, so that a zone's budget means one thing
// whichever store holds it.
func lockBytes(l *ExplicitLock) int64 {
	return lockFixedBytes + int64(len(l.Token)+3*len(l.Root)+len(l.Href)+len(l.Owner)+len(l.Owner)/8+len(l.Creator)) +
		lockSegmentBytes*int64(strings.Count(l.Root, "/"))
}

// Names of the limits a LOCK may run into, as the Caddyfile spells them.
const (
	limitLocks         = "max_locks"
	limitLockBytes     = "max_lock_bytes"
	limitLocksPerOwner = "max_locks_per_owner"
)

// ExplicitLimitError is returned by LockStore.Create for a lock that
// would take the zone past one of its limits on explicit locks. It is
// ErrFull (errors.Is), so it is answered like a full table: 503 with
// Retry-After. Held locks are never evicted to make room.
type ExplicitLimitError struct {
	// Limit is the limit in the way: max_locks, max_lock_bytes or
	// max_locks_per_owner.
	Limit string
	// Max is its value.
	Max int64
}

func (e *ExplicitLimitError) Error() string {
	switch e.Limit {
	case limitLockBytes:
		return fmt.Sprintf("the zone's explicit locks would keep more than max_lock_bytes (%d bytes)", e.Max)
	case limitLocksPerOwner:
		return fmt.Sprintf("the lock's owner holds max_locks_per_owner (%d) explicit locks already", e.Max)
	}
	return fmt.Sprintf("the zone holds its maximum of %d explicit locks (max_locks)", e.Max)
}

// limitTitle is the title of the problem document of a LOCK refused for
// limit.
func limitTitle(limit string) string {
	switch limit {
	case limitLockBytes:
		return "Lock byte budget is used up"
	case limitLocksPerOwner:
		return "Too many locks for one owner"
	}
	return "Lock table is full"
}

// Unwrap makes the error ErrFull.
func (e *ExplicitLimitError) Unwrap() error { return ErrFull }

// limitsOwner reports whether max_locks_per_owner applies to locks of
// creator: not to the admin API's, which only an operator can take.
func limitsOwner(creator string) bool { return creator != adminCreator }

// sameToken compares a submitted lock token with a stored one in time
// that depends only on their lengths, so that timing does not tell how
// much of a guess was right.
func sameToken(submitted, stored string) bool {
	return subtle.ConstantTimeCompare([]byte(submitted), []byte(stored)) == 1
}

// tokenIn reports whether stored is among the submitted tokens, each
// compared in constant time.
func tokenIn(submitted []string, stored string) bool {
	found := false
	for _, t := range submitted {
		if sameToken(t, stored) {
			found = true
		}
	}
	return found
}

// ErrNoSuchLock is returned for a token the store does not hold (never
// issued, unlocked, or expired).
var ErrNoSuchLock = errors.New("no such lock")

// LockConflictError is returned by LockStore.Create when the new lock
// would conflict with held locks.
type LockConflictError struct {
	// Conflicts are the held locks in the way.
	Conflicts []ExplicitLock
}

func (e *LockConflictError) Error() string {
	if len(e.Conflicts) == 0 {
		return "conflicting lock"
	}
	return fmt.Sprintf("conflicts with a %s lock on %s", e.Conflicts[0].Scope, e.Conflicts[0].Root)
}

// LockStore holds a zone's explicit locks. Expired locks are never
// returned by any method and are dropped by the store on its own.
// Methods return ctx's error when ctx ends, and a wrapped error of the
// backing store when it fails (ErrStoreUnavailable for Redis).
type LockStore interface {
	// Create adds l, whose Token, Root, Href, Scope, Depth, Owner,
	// Creator and Timeout are set by the caller; the store sets Created
	// and Expires from its clock. Two locks conflict when the scope of
	// one includes the root of the other and either is exclusive.
	// Conflicting locks are reported as *LockConflictError and nothing
	// is added. The check and the add are atomic.
	Create(ctx context.Context, l ExplicitLock) (ExplicitLock, error)
	// Refresh restarts the timeout of the lock with this token, setting
	// it to timeout, and returns the lock; ErrNoSuchLock when absent.
	Refresh(ctx context.Context, token string, timeout time.Duration) (ExplicitLock, error)
	// Get returns the lock with this token; ErrNoSuchLock when absent.
	Get(ctx context.Context, token string) (ExplicitLock, error)
	// Remove deletes the lock with this token and returns it;
	// ErrNoSuchLock when absent.
	Remove(ctx context.Context, token string) (ExplicitLock, error)
	// Affecting returns the locks whose scope includes key (locks on key
	// and infinite locks on its ancestors) and, when below is set, also
	// the locks rooted strictly below key. Order: by Root, then Token.
	Affecting(ctx context.Context, key string, below bool) ([]ExplicitLock, error)
	// RemoveUnder deletes the locks rooted at key or below it, as after
	// a successful DELETE or MOVE of key, and returns how many it removed.
	RemoveUnder(ctx context.Context, key string) (int, error)
	// List returns every lock of the zone, ordered by Root then Token.
	List(ctx context.Context) ([]ExplicitLock, error)
}

// MemLockStore is the in-memory LockStore of one zone.
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
//   - bytes is the sum of lockBytes of the live locks, and owners[c] the
//     number of live locks with Creator c (absent when 0).
type MemLockStore struct {
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
	ExplicitLock
	index int // position in expiries
}

type lockNode struct {
	locks    []*memLock          // rooted exactly here
	children map[string]struct{} // child paths whose subtree holds locks
	count    int                 // locks rooted here or below
}

// NewMemLockStore returns an empty store that holds at most maxLocks
// locks (<= 0 means DefaultMaxLocks); past it Create fails with ErrFull.
func NewMemLockStore(maxLocks int) *MemLockStore {
	if maxLocks <= 0 {
		maxLocks = DefaultMaxLocks
	}
	return &MemLockStore{
		max:      maxLocks,
		maxBytes: DefaultMaxLockBytes,
		perOwner: DefaultMaxLocksPerOwner,
		owners:   make(map[string]int),
		byToken:  make(map[string]*memLock),
		tree:     make(map[string]*lockNode),
	}
}

// SetBudget changes max_lock_bytes and max_locks_per_owner (<= 0 means
// their defaults); locks already held are never dropped.
func (s *MemLockStore) SetBudget(maxBytes int64, perOwner int) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxLockBytes
	}
	if perOwner <= 0 {
		perOwner = DefaultMaxLocksPerOwner
	}
	s.mu.Lock()
	s.maxBytes, s.perOwner = maxBytes, perOwner
	s.mu.Unlock()
}

// Usage reports what the live locks count against max_lock_bytes and how
// many of them owner holds; expired locks are dropped first.
func (s *MemLockStore) Usage(owner string) (bytes int64, owned int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(time.Now())
	return s.bytes, s.owners[owner]
}

// SetMax changes the most locks the store holds (<= 0 means
// DefaultMaxLocks); locks already held are never dropped.
func (s *MemLockStore) SetMax(maxLocks int) {
	if maxLocks <= 0 {
		maxLocks = DefaultMaxLocks
	}
	s.mu.Lock()
	s.max = maxLocks
	s.mu.Unlock()
}

// Close stops the expiry timer. Requests of an unloaded config that are
// still under way may go on using the store: each call still drops the
// expired locks it meets (see begin), but none are dropped on a timer.
func (s *MemLockStore) Close() {
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
func (s *MemLockStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byToken)
}

// begin locks the store after checking ctx and drops expired locks.
func (s *MemLockStore) begin(ctx context.Context) (time.Time, error) {
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
func (s *MemLockStore) expire(now time.Time) {
	for len(s.expiries) > 0 && !s.expiries[0].Expires.After(now) {
		s.drop(s.expiries[0])
	}
	s.schedule(now)
}

func (s *MemLockStore) schedule(now time.Time) {
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

func (s *MemLockStore) onTimer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timerAt = time.Time{} // fired
	if !s.closed {
		s.expire(time.Now())
	}
}

// add indexes l everywhere.
func (s *MemLockStore) add(l *memLock) {
	s.byToken[l.Token] = l
	s.bytes += lockBytes(&l.ExplicitLock)
	s.owners[l.Creator]++
	s.held.Store(int64(len(s.byToken)))
	heap.Push(&s.expiries, l)
	n := s.node(l.Root)
	n.locks = append(n.locks, l)
	n.count++
	child := l.Root
	ancestors(l.Root, func(a string) bool {
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

func (s *MemLockStore) node(p string) *lockNode {
	n, ok := s.tree[p]
	if !ok {
		n = &lockNode{}
		s.tree[p] = n
	}
	return n
}

// drop removes l from every index.
func (s *MemLockStore) drop(l *memLock) {
	delete(s.byToken, l.Token)
	s.bytes -= lockBytes(&l.ExplicitLock)
	if s.owners[l.Creator]--; s.owners[l.Creator] <= 0 {
		delete(s.owners, l.Creator)
	}
	s.held.Store(int64(len(s.byToken)))
	heap.Remove(&s.expiries, l.index)
	n := s.tree[l.Root]
	n.locks = slices.DeleteFunc(n.locks, func(x *memLock) bool { return x == l })
	s.release(l.Root, n)
	child, emptied := l.Root, n.count == 0
	ancestors(l.Root, func(a string) bool {
		an := s.tree[a]
		if emptied {
			delete(an.children, child)
		}
		s.release(a, an)
		child, emptied = a, an.count == 0
		return true
	})
}

func (s *MemLockStore) release(p string, n *lockNode) {
	n.count--
	if n.count == 0 {
		delete(s.tree, p)
	}
}

// covering appends the live locks whose scope includes key.
func (s *MemLockStore) covering(out []ExplicitLock, key string) []ExplicitLock {
	if n, ok := s.tree[key]; ok {
		for _, l := range n.locks {
			out = append(out, l.ExplicitLock)
		}
	}
	ancestors(key, func(a string) bool {
		if n, ok := s.tree[a]; ok {
			for _, l := range n.locks {
				if l.Depth == DepthInfinity {
					out = append(out, l.ExplicitLock)
				}
			}
		}
		return true
	})
	return out
}

// under appends the locks rooted strictly below key.
func (s *MemLockStore) under(out []ExplicitLock, key string) []ExplicitLock {
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

func sortLocks(ls []ExplicitLock) {
	slices.SortFunc(ls, func(a, b ExplicitLock) int {
		if c := strings.Compare(a.Root, b.Root); c != 0 {
			return c
		}
		return strings.Compare(a.Token, b.Token)
	})
}

// Create implements LockStore.
func (s *MemLockStore) Create(ctx context.Context, l ExplicitLock) (ExplicitLock, error) {
	now, err := s.begin(ctx)
	if err != nil {
		return ExplicitLock{}, err
	}
	defer s.mu.Unlock()
	if l.Token == "" || l.Timeout <= 0 {
		return ExplicitLock{}, fmt.Errorf("creating lock on %s: token and a positive timeout are required", l.Root)
	}
	if _, dup := s.byToken[l.Token]; dup {
		return ExplicitLock{}, fmt.Errorf("creating lock on %s: token already in use", l.Root)
	}
	held := s.covering(nil, l.Root)
	if l.Depth == DepthInfinity {
		held = s.under(held, l.Root)
	}
	var conflicts []ExplicitLock
	for _, h := range held {
		if h.Scope == Exclusive || l.Scope == Exclusive {
			conflicts = append(conflicts, h)
		}
	}
	if len(conflicts) > 0 {
		sortLocks(conflicts)
		return ExplicitLock{}, &LockConflictError{Conflicts: conflicts}
	}
	// The limits come after the conflicts: a conflicting lock is refused
	// as such, whatever room there is.
	if len(s.byToken) >= s.max {
		return ExplicitLock{}, fmt.Errorf("creating lock on %s: %w", l.Root, &ExplicitLimitError{Limit: limitLocks, Max: int64(s.max)})
	}
	if limitsOwner(l.Creator) && s.owners[l.Creator] >= s.perOwner {
		return ExplicitLock{}, fmt.Errorf("creating lock on %s: %w", l.Root, &ExplicitLimitError{Limit: limitLocksPerOwner, Max: int64(s.perOwner)})
	}
	if s.bytes+lockBytes(&l) > s.maxBytes {
		return ExplicitLock{}, fmt.Errorf("creating lock on %s: %w", l.Root, &ExplicitLimitError{Limit: limitLockBytes, Max: s.maxBytes})
	}
	l.Created = now
	l.Expires = now.Add(l.Timeout)
	// The owner as parsed may sit in a buffer up to twice its size; the
	// lock keeps a copy of its own, which is what lockBytes counts.
	l.Owner = bytes.Clone(l.Owner)
	s.add(&memLock{ExplicitLock: l})
	s.schedule(now)
	return l, nil
}

// withToken runs fn on the live lock with token, under mu; ErrNoSuchLock
// when there is none.
func (s *MemLockStore) withToken(ctx context.Context, token string, fn func(now time.Time, l *memLock) error) (ExplicitLock, error) {
	now, err := s.begin(ctx)
	if err != nil {
		return ExplicitLock{}, err
	}
	defer s.mu.Unlock()
	l, ok := s.byToken[token]
	if !ok {
		return ExplicitLock{}, ErrNoSuchLock
	}
	if err := fn(now, l); err != nil {
		return ExplicitLock{}, err
	}
	return l.ExplicitLock, nil
}

// Refresh implements LockStore.
func (s *MemLockStore) Refresh(ctx context.Context, token string, timeout time.Duration) (ExplicitLock, error) {
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
func (s *MemLockStore) Get(ctx context.Context, token string) (ExplicitLock, error) {
	return s.withToken(ctx, token, func(time.Time, *memLock) error { return nil })
}

// Remove implements LockStore.
func (s *MemLockStore) Remove(ctx context.Context, token string) (ExplicitLock, error) {
	return s.withToken(ctx, token, func(now time.Time, l *memLock) error {
		s.drop(l)
		s.schedule(now)
		return nil
	})
}

// Affecting implements LockStore.
func (s *MemLockStore) Affecting(ctx context.Context, key string, below bool) ([]ExplicitLock, error) {
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
	sortLocks(out)
	return out, nil
}

// RemoveUnder implements LockStore.
func (s *MemLockStore) RemoveUnder(ctx context.Context, key string) (int, error) {
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
func (s *MemLockStore) List(ctx context.Context) ([]ExplicitLock, error) {
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := make([]ExplicitLock, 0, len(s.byToken))
	for _, l := range s.byToken {
		out = append(out, l.ExplicitLock)
	}
	sortLocks(out)
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
var _ LockStore = (*MemLockStore)(nil)

// explicitHint is implemented by leases whose grant also told whether the
// zone held any explicit lock at that moment (the Redis store), so that a
// write in a zone without explicit locks makes no second round trip.
type explicitHint interface {
	ExplicitLocksInZone() bool
}
