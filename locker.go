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
// Lease, or returns a *ConflictError, ErrFull, an error wrapping ErrTooDeep
// (with hierarchy), or the context's error when ctx ends while the request
// is queued. Implementations keep at most one
// grant per conflicting set: a lock is never granted twice.
type Locker interface {
	Acquire(ctx context.Context, req Request) (Lease, error)
}

// Lease is a granted lock. Release gives it back; it is safe to call more
// than once and from any goroutine, and only the first call has an effect.
type Lease interface {
	Release()
}

// QueuedLease is a Lease that tells whether its request waited in the
// queue before the grant. How long Acquire took does not tell: a Redis
// round trip can take longer than a short wait.
type QueuedLease interface {
	Lease
	Queued() bool
}

// ErrFull means the zone holds max_locks locks and waiters already; the
// request is refused rather than evicting anybody's lock.
var ErrFull = errors.New("lock table is full")

// MaxHierarchyDepth is the most segments a key may have in a zone with
// hierarchy. Every operation on a key visits each of its ancestors and
// holds the shards they hash to meanwhile, so without a bound one long
// path of short segments ("/a/a/a/…", thousands deep in a 16 KB URL)
// holds every shard's mutex for as long as it takes to walk them all,
// stalling unrelated writes: a cheap denial of service. No real tree is
// this deep.
const MaxHierarchyDepth = 255

// ErrTooDeep means a key has more than MaxHierarchyDepth segments in a
// zone with hierarchy. Retrying cannot help: the handler answers 400.
var ErrTooDeep = errors.New("too deep for a hierarchical lock")

// checkDepth returns an error wrapping ErrTooDeep when key has more than
// MaxHierarchyDepth segments. Every hierarchical lock table calls it
// before it walks key's ancestors, so that all refuse the same keys.
func checkDepth(key string) error {
	if len(key) < 2 || key[0] != '/' {
		return nil // no ancestors (see ancestors)
	}
	// One ancestor per "/", which is also the number of segments.
	if d := strings.Count(key, "/"); d > MaxHierarchyDepth {
		return fmt.Errorf("key of %d segments (at most %d): %w", d, MaxHierarchyDepth, ErrTooDeep)
	}
	return nil
}

// ConflictError describes the lock that stood in the way.
type ConflictError struct {
	// Key is the key of the conflicting lock (an ancestor or the key
	// itself, with hierarchy).
	Key string
	// Kind is the kind of the conflicting lock.
	Kind Kind
	// HeldFor is how long the conflicting lock has been held, to within
	// a hundredth of a second (it may read up to that much long).
	HeldFor time.Duration
	// Below is set when the conflict is with locks held under Key.
	Below bool
	// RetryAfter is the estimated time until the lock is free, from the
	// hold times recently observed in the zone; at least one second.
	RetryAfter time.Duration
}

func (e *ConflictError) Error() string {
	where := " lock on "
	if e.Below {
		where = " lock below "
	}
	// Concatenated, not formatted: every 423 describes its conflict.
	return "conflicts with the " + e.Kind.String() + where + e.Key + ", held for " + e.HeldFor.Round(time.Millisecond).String()
}

// Defaults for a zone.
const (
	DefaultMaxLocks   = 100000
	DefaultMaxWaiters = 64
)

// zoneLimits returns the limits a lock table enforces for the configured
// max_locks and max_waiters, where values <= 0 mean the defaults. Every
// table applies its defaults through it, so that all agree.
func zoneLimits(maxLocks, maxWaiters int) (locks, waiters int64) {
	if maxLocks <= 0 {
		maxLocks = DefaultMaxLocks
	}
	if maxWaiters <= 0 {
		maxWaiters = DefaultMaxWaiters
	}
	return int64(maxLocks), int64(maxWaiters)
}

// numShards is 64 so that a set of shards fits in one uint64 mask, which
// lets hierarchical acquisitions lock several shards in ascending order
// without allocating. A key's shard is the top shardBits bits of its hash;
// the shard's table uses the low bits.
const (
	shardBits = 6
	numShards = 1 << shardBits
)

// MemLocker is the in-memory lock table of one zone.
//
// Invariants, kept under the shard mutexes:
//   - A node is in its shard's table exactly while it is held, counts
//     locks held below it, has waiters queued, or is watched by a waiter;
//     it is removed (and recycled) as soon as none of these is true.
//   - A node is held either exclusively by one lease or shared by
//     node.shared leases, never both.
//   - Only the head of a key's queue watches a blocker; the blocker is the
//     key's own node or one of its ancestors, so every operation on a
//     waiter happens under the shard set of the waiter's own key.
//   - A request never overtakes a non-empty queue on its own key (FIFO).
//   - Every held lock and queued waiter owns one unit of the max_locks
//     budget, taken in its key's shard: held + waiting + the shards'
//     credit + free == maxLocks (free goes negative only when SetLimits
//     lowers max_locks below what is in use), so held + waiting never
//     exceeds max_locks.
type MemLocker struct {
	// Each shard has its 128-byte pair of cache lines (CPUs prefetch
	// lines in pairs) to itself: the allocation of a MemLocker begins
	// on a multiple of 128 bytes (its size class, 9472, is one), and
	// Go puts an 8-byte header first in an allocation this size that
	// holds pointers, so the shards begin 8+120 bytes in
	// (TestShardsOwnTheirCacheLines checks the addresses). Behind the
	// header fields, as they were, every shard straddled two pairs and
	// shared a line with its neighbour's hold average and table: two
	// CPUs on neighbouring shards moved that line between them on every
	// operation.
	_          [shardAlign - mallocHeader]byte
	shards     [numShards]shard
	_          [shardAlign]byte // the fields below are read by every operation
	hierarchy  bool
	seed       maphash.Seed
	maxLocks   atomic.Int64
	maxWaiters atomic.Int64
	// free is the part of max_locks that no shard holds. Shards take it
	// in batches (see reserve), so it changes rarely and its cache line
	// is read, not fought over, on the uncontended path.
	free atomic.Int64
}

const (
	// shardAlign is the alignment of a table's shards: a pair of cache
	// lines.
	shardAlign = 128
	// mallocHeader is what the Go runtime puts before an allocation of
	// more than 512 bytes that holds pointers (its type).
	mallocHeader = 8
)

// shard is a part of the table, padded to 128 bytes: CPUs prefetch cache
// lines in pairs, so neighbouring shards must not share a pair.
type shard struct {
	mu    sync.Mutex
	nodes nodeTable
	free  []*node // recycled nodes, at most maxFree
	// leases[nextLease:] are the leases not handed out yet: allocating
	// them leaseBlock at a time takes malloc off the path of most grants.
	// Each lease is handed out once.
	leases    *[leaseBlock]memLease
	nextLease int
	// credit is max_locks budget taken from MemLocker.free and not yet
	// used by this shard's locks and waiters.
	credit int64
	// holdAvg is the average hold time, in nanoseconds, of the locks
	// released in this shard, and holdN the number of releases it
	// averages, up to holdWindow (see observeHold). They are written
	// under mu and read without it, from every shard, by holdEstimate.
	holdAvg atomic.Int64
	holdN   atomic.Int64
	_       [24]byte
}

// holdWindow is about how many of a shard's latest releases its average
// hold time reflects.
const holdWindow = 8

// observeHold adds the hold time of a lock released in s to its average;
// the caller holds s.mu. The first holdWindow releases are averaged
// plainly, so that the first one seeds the average rather than moving it
// an eighth of the way from zero; later ones weigh 1/holdWindow each.
// holdN stops changing after that, so a release stores one word.
func (s *shard) observeHold(hold time.Duration) {
	n := s.holdN.Load()
	if n < holdWindow {
		n++
		s.holdN.Store(n)
	}
	avg := s.holdAvg.Load()
	// Most releases leave the average as it is (a hold shorter than a
	// tick of the coarse clock reads as 0, and so does an average of
	// such holds): then nothing is stored, which spares a locked
	// instruction (an atomic store is an exchange on amd64).
	if d := (int64(hold) - avg) / n; d != 0 {
		s.holdAvg.Store(avg + d)
	}
}

// holdEstimate is the zone's recent average hold time, 0 before any
// release: the shards' averages weighted by the releases each averages,
// so that a shard that saw one release counts less than one that saw
// many. A shard holds 1/64 of the zone's keys, too few to estimate from
// on its own: the first conflicts on a slow backend said Retry-After: 1.
// Only refusals read all the shards; a release writes its own shard only,
// sharing no counter with the releases on other shards.
func (l *MemLocker) holdEstimate() time.Duration {
	var sum, n int64
	for i := range l.shards {
		s := &l.shards[i]
		if k := s.holdN.Load(); k > 0 {
			sum += s.holdAvg.Load() * k
			n += k
		}
	}
	if n == 0 {
		return 0
	}
	return time.Duration(sum / n)
}

type node struct {
	// l and shard never change, not even when the node is recycled
	// (always within its shard), so a Release reads them without a lock.
	l     *MemLocker
	shard *shard
	key   string
	hash  uint64 // hashOf(key), kept to hash the key once
	// since is the coarse clock at the start of the current held period.
	since  int64
	shared int32
	excl   bool
	// Locks held strictly below this key (hierarchy only), since
	// belowSince.
	belowExcl, belowShared int32
	belowSince             int64
	// waits holds the waiters' lists; nil until a request waits on or
	// behind this node.
	waits *waitLists
}

type waitLists struct {
	queue    []*waiter // FIFO of requests for this key
	watchers []*waiter // queue heads blocked by this node
}

func (n *node) held() bool { return n.excl || n.shared > 0 }

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

func (n *node) idle() bool {
	return !n.held() && n.belowExcl == 0 && n.belowShared == 0 &&
		(n.waits == nil || len(n.waits.queue) == 0 && len(n.waits.watchers) == 0)
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
	// maxFree bounds the recycled nodes kept per shard: enough to take
	// a lock without allocating a node, little enough that the memory of
	// released locks goes back.
	maxFree = 2
	// creditBatch is how much max_locks budget a shard takes from the
	// zone at a time, so that locks on different shards do not all
	// update one counter.
	creditBatch = 16
	// tightFree: below this much free budget, shards stop taking batches
	// and give units straight back, so that no lock is refused while
	// another shard sits on unused credit.
	tightFree = numShards * 2 * creditBatch
)

// NewMemLocker returns an empty lock table.
func NewMemLocker(hierarchy bool, maxLocks, maxWaiters int) *MemLocker {
	l := &MemLocker{hierarchy: hierarchy, seed: maphash.MakeSeed()}
	l.SetLimits(maxLocks, maxWaiters)
	for i := range l.shards {
		l.shards[i].nodes = newNodeTable()
	}
	return l
}

// SetLimits changes max_locks and max_waiters (per key); values <= 0 mean
// the defaults. Locks already held are never affected.
func (l *MemLocker) SetLimits(maxLocks, maxWaiters int) {
	locks, waiters := zoneLimits(maxLocks, maxWaiters)
	old := l.maxLocks.Swap(locks)
	l.free.Add(locks - old)
	l.maxWaiters.Store(waiters)
	if locks < old {
		// Credit taken under the old limit must not grant locks
		// past the new one.
		l.reclaim()
	}
}

// Hierarchy reports whether a lock covers the keys below it.
func (l *MemLocker) Hierarchy() bool { return l.hierarchy }

// Stats reports held locks, queued waiters and nodes in the table.
func (l *MemLocker) Stats() (held, waiting, nodes int) {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		s.nodes.each(func(n *node) {
			nodes++
			waiting += len(n.queue())
			if n.excl {
				held++
			}
			held += int(n.shared)
		})
		s.mu.Unlock()
	}
	return held, waiting, nodes
}

func (l *MemLocker) hashOf(key string) uint64 { return maphash.String(l.seed, key) }

func shardIndex(h uint64) uint { return uint(h >> (64 - shardBits)) }

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

// anc is an ancestor of a key, with its hash.
type anc struct {
	key  string
	hash uint64 // hashOf(key)
}

// lineageInline is how many ancestors the lineage of an operation holds
// without allocating: keys that deep or less, nearly all of them.
const lineageInline = 8

// lineage appends to buf the proper ancestors of a "/"-rooted key with
// their hashes, root first, so that the ancestors of lin[i] are lin[:i].
// These are the keys ancestors() visits (but "/" once, for a key starting
// with "//"). An operation computes its lineage once and hands it to
// mask, blocker, grant and release, which used to hash every ancestor
// again each: the prefixes are hashed in one pass over the key, by one
// maphash.Hash that is written segment by segment and whose Sum64 after
// each is that of maphash.String on the prefix (TestLineageHashes), so
// the cost is linear in the key's length rather than in depth times
// length.
func (l *MemLocker) lineage(key string, buf []anc) []anc {
	if len(key) < 2 || key[0] != '/' {
		return buf
	}
	var h maphash.Hash
	h.SetSeed(l.seed)
	_, _ = h.WriteString(key[:1]) // never fails
	lin := append(buf, anc{key: key[:1], hash: h.Sum64()})
	done := 1
	for {
		i := strings.IndexByte(key[done+1:], '/')
		if i < 0 {
			return lin
		}
		i += done + 1
		_, _ = h.WriteString(key[done:i])
		lin = append(lin, anc{key: key[:i], hash: h.Sum64()})
		done = i
	}
}

// mask is the set of shards an operation on a key with hash h and
// lineage lin must hold.
func (l *MemLocker) mask(h uint64, lin []anc) uint64 {
	m := uint64(1) << shardIndex(h)
	for _, a := range lin {
		m |= 1 << shardIndex(a.hash)
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

func (l *MemLocker) lookup(a anc) *node {
	return l.shards[shardIndex(a.hash)].nodes.get(a.hash, a.key)
}

func (l *MemLocker) getNode(key string, h uint64) *node {
	s := &l.shards[shardIndex(h)]
	n, slot := s.nodes.find(h, key)
	if n != nil {
		return n
	}
	if k := len(s.free); k > 0 {
		n = s.free[k-1]
		s.free = s.free[:k-1]
	} else {
		n = &node{l: l, shard: s}
	}
	n.key = key
	n.hash = h
	s.nodes.insertAt(slot, h, n)
	return n
}

// maybeFree removes n from the table if nothing refers to it any more.
func (l *MemLocker) maybeFree(n *node) {
	if !n.idle() {
		return
	}
	s := n.shard
	if !s.nodes.remove(n.hash, n) {
		return
	}
	// An idle node is all zero but for l and shard, which stay, and key,
	// hash, since and belowSince, which are set again before they are
	// read (the stale key stays referenced until then, by at most
	// maxFree nodes per shard). Writing only what must change keeps
	// pointer writes, and the GC's write barriers, off this path.
	if n.waits != nil {
		n.waits = nil
	}
	if len(s.free) < maxFree {
		s.free = append(s.free, n)
	}
}

// blocker returns the node whose locks conflict with taking kind on n, of
// lineage lin, or nil when the lock can be granted.
func (l *MemLocker) blocker(n *node, kind Kind, lin []anc) *node {
	if n.heldConflicts(kind) {
		return n
	}
	if !l.hierarchy {
		return nil
	}
	if n.belowExcl > 0 || (kind == Exclusive && n.belowShared > 0) {
		return n
	}
	// Nearest first: the conflict reported is the closest one.
	for i := len(lin) - 1; i >= 0; i-- {
		if an := l.lookup(lin[i]); an != nil && an.heldConflicts(kind) {
			return an
		}
	}
	return nil
}

func (l *MemLocker) grant(n *node, kind Kind, lin []anc) {
	if !n.held() {
		n.since = clock.read()
	}
	if kind == Exclusive {
		n.excl = true
	} else {
		n.shared++
	}
	for _, a := range lin {
		an := l.getNode(a.key, a.hash)
		if an.belowExcl == 0 && an.belowShared == 0 {
			an.belowSince = n.since
		}
		if kind == Exclusive {
			an.belowExcl++
		} else {
			an.belowShared++
		}
	}
}

func (l *MemLocker) conflict(n *node, b *node) *ConflictError {
	if b == nil {
		// Only the queue stood in the way: report the key itself.
		b = n
	}
	// The system clock, not the coarse one, so that HeldFor is never
	// zero: since is at most one tick early, now is exact.
	now := monotonicNow()
	e := &ConflictError{Key: b.key, Kind: Shared}
	switch {
	case b.held():
		if b.excl {
			e.Kind = Exclusive
		}
		e.HeldFor = time.Duration(now - b.since)
	case b.belowExcl > 0 || b.belowShared > 0:
		e.Below = true
		e.HeldFor = time.Duration(now - b.belowSince)
		if b.belowExcl > 0 {
			e.Kind = Exclusive
		}
	}
	avg := l.holdEstimate()
	remaining := avg - e.HeldFor
	if remaining <= 0 {
		remaining = avg
	}
	e.RetryAfter = max(1, (remaining+time.Second-1)/time.Second) * time.Second
	return e
}

func (l *MemLocker) watch(b *node, w *waiter) {
	bl := b.lists()
	bl.watchers = append(bl.watchers, w)
	w.watching = b
}

func (l *MemLocker) unwatch(w *waiter) {
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
func (l *MemLocker) advance(n *node, lin []anc) {
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

// reserve takes one unit of the max_locks budget for a lock or waiter in
// shard s, whose mutex the caller holds, and reports whether there was one.
// The shard's own credit comes first; when it is spent, a batch is taken
// from the zone's free budget, or a single unit when little is left.
func (l *MemLocker) reserve(s *shard) bool {
	if s.credit > 0 {
		s.credit--
		return true
	}
	for {
		f := l.free.Load()
		if f <= 0 {
			return false
		}
		take := int64(1)
		if f >= tightFree {
			take = creditBatch
		}
		if l.free.CompareAndSwap(f, f-take) {
			s.credit += take - 1
			return true
		}
	}
}

// unreserve gives back the unit of a lock or waiter of shard s, whose
// mutex the caller holds. The shard keeps it as credit for its next lock,
// up to two batches, unless the zone is nearly full.
func (l *MemLocker) unreserve(s *shard) {
	if l.free.Load() < tightFree {
		l.free.Add(1)
		return
	}
	if s.credit++; s.credit > 2*creditBatch {
		l.free.Add(s.credit - creditBatch)
		s.credit = creditBatch
	}
}

// reclaim returns every shard's credit to the zone's free budget. It runs
// before a request is refused as full, holding no shard lock.
func (l *MemLocker) reclaim() {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		l.free.Add(s.credit)
		s.credit = 0
		s.mu.Unlock()
	}
}

// Acquire implements Locker.
func (l *MemLocker) Acquire(ctx context.Context, req Request) (Lease, error) {
	if req.Kind != Shared && req.Kind != Exclusive {
		return nil, fmt.Errorf("acquire %q: invalid lock kind %v", req.Key, req.Kind)
	}
	if !l.hierarchy {
		return l.acquire(ctx, req, nil)
	}
	if err := checkDepth(req.Key); err != nil {
		// Not quoting the key, which may be many kilobytes.
		return nil, fmt.Errorf("acquire: %w", err)
	}
	// Here, not in Acquire's frame, so that a table without hierarchy
	// does not clear it on every call.
	var buf [lineageInline]anc
	return l.acquire(ctx, req, l.lineage(req.Key, buf[:0]))
}

// acquire is Acquire for a request whose key has lineage lin (nil without
// hierarchy).
func (l *MemLocker) acquire(ctx context.Context, req Request, lin []anc) (Lease, error) {
	h := l.hashOf(req.Key)
	m := l.mask(h, lin)
	s := &l.shards[shardIndex(h)]
	for reclaimed := false; ; reclaimed = true {
		l.lock(m)
		n := l.getNode(req.Key, h)
		// A request never overtakes the queue: with one, the head's
		// blocker is what stands in the way.
		q := n.queue()
		var b *node
		if len(q) == 0 {
			b = l.blocker(n, req.Kind, lin)
		} else {
			b = l.blocker(n, q[0].kind, lin)
		}
		free := len(q) == 0 && b == nil
		// A conflict is reported as such even when the table is full:
		// the lock in the way is the more useful answer.
		if !free && (req.Wait <= 0 || int64(len(q)) >= l.maxWaiters.Load() || ctx.Err() != nil) {
			err := l.conflict(n, b)
			l.maybeFree(n)
			l.unlock(m)
			return nil, err
		}
		if !l.reserve(s) {
			l.maybeFree(n)
			l.unlock(m)
			if !reclaimed {
				l.reclaim()
				continue
			}
			return nil, ErrFull
		}
		if free {
			l.grant(n, req.Kind, lin)
			ls := newLease(n, req.Kind)
			l.unlock(m)
			return ls, nil
		}
		w := &waiter{kind: req.Kind, node: n, ch: make(chan struct{}, 1)}
		nl := n.lists()
		nl.queue = append(nl.queue, w)
		if len(nl.queue) == 1 {
			l.watch(b, w)
		}
		l.unlock(m)
		return l.wait(ctx, req, m, lin, w)
	}
}

func (l *MemLocker) wait(ctx context.Context, req Request, m uint64, lin []anc, w *waiter) (Lease, error) {
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
				ls = newLease(n, w.kind)
				ls.queued = true
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
			lease := newLease(n, w.kind)
			lease.queued = true
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
		l.unreserve(n.shard)
		l.maybeFree(n)
		l.unlock(m)
		return nil, err
	}
}

// release gives back a lock of kind on n, of lineage lin; the caller holds
// n's shard set.
func (l *MemLocker) release(n *node, kind Kind, lin []anc) {
	if kind == Exclusive {
		n.excl = false
	} else {
		n.shared--
	}
	s := n.shard
	if !n.held() {
		// A lock taken while the clock was starting has a since from
		// the system clock, which may be a little ahead of the coarse
		// one.
		s.observeHold(time.Duration(max(0, clock.read()-n.since)))
	}
	l.unreserve(s)
	l.wake(n, lin)
	for i, a := range lin {
		an := l.lookup(a)
		if kind == Exclusive {
			an.belowExcl--
		} else {
			an.belowShared--
		}
		l.wake(an, lin[:i])
	}
	l.advance(n, lin)
	l.maybeFree(n)
	for _, a := range lin {
		if an := l.lookup(a); an != nil {
			l.maybeFree(an)
		}
	}
}

// wake tells the waiters watching n, of lineage lin, that n changed. Watchers sit at n or
// below it (a blocker is the waiter's own key or an ancestor). Those at n
// are advanced right here, since the caller holds n's shard set; those
// below retry from their own goroutine under their own shard set.
func (l *MemLocker) wake(n *node, lin []anc) {
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

// memLease is a granted lock. Leases are handed out from blocks of
// leaseBlock (see shard.leases): a lease still referenced after its
// release keeps at most leaseBlock*16 bytes alive.
type memLease struct {
	n    *node
	kind Kind
	// done is set by the first Release. It is guarded by n.shard's
	// mutex; until it is set, n is held by this lease and is not
	// recycled.
	done   bool
	queued bool // granted after waiting in the queue
}

// Queued implements QueuedLease.
func (ls *memLease) Queued() bool { return ls.queued }

const leaseBlock = 8

// newLease hands out a lease of kind on n; the caller holds n's shard.
func newLease(n *node, kind Kind) *memLease {
	s := n.shard
	if s.leases == nil || s.nextLease == leaseBlock {
		s.leases, s.nextLease = new([leaseBlock]memLease), 0
	}
	ls := &s.leases[s.nextLease]
	s.nextLease++
	ls.n, ls.kind = n, kind
	return ls
}

func (ls *memLease) Release() {
	n := ls.n
	s := n.shard
	s.mu.Lock()
	if ls.done {
		s.mu.Unlock()
		return
	}
	l := n.l
	if !l.hierarchy {
		ls.done = true
		l.release(n, ls.kind, nil)
		s.mu.Unlock()
		return
	}
	ls.releaseHierarchy()
}

// releaseHierarchy is Release in a table with hierarchy; the caller holds
// the lease's shard. It is apart so that Release without hierarchy does
// not clear the lineage buffer.
func (ls *memLease) releaseHierarchy() {
	n := ls.n
	s := n.shard
	l := n.l
	// n.key is read under the shard's mutex: once the lease is done, n
	// may be recycled for another key.
	var buf [lineageInline]anc
	lin := l.lineage(n.key, buf[:0])
	m := l.mask(n.hash, lin)
	if m != 1<<shardIndex(n.hash) {
		// Ancestors' shards too: take the whole set in order, and look
		// again, since another Release may have come in between.
		s.mu.Unlock()
		l.lock(m)
		if ls.done {
			l.unlock(m)
			return
		}
	}
	ls.done = true
	l.release(n, ls.kind, lin)
	l.unlock(m)
}

var (
	_ Locker      = (*MemLocker)(nil)
	_ Lease       = (*memLease)(nil)
	_ QueuedLease = (*memLease)(nil)
)
