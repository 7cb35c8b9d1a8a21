package caddylock

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// numShards is 64 so that a set of shards fits in one uint64 mask, which
// lets hierarchical acquisitions lock several shards in ascending order
// without allocating. A key's shard is the top shardBits bits of its hash;
// the shard's table uses the low bits.
const (
	shardBits = 6
	numShards = 1 << shardBits
)

// memLocker is the in-memory lock table of one zone.
//
// Invariants, kept under the shard mutexes:
//   - A key held by one lease, with no waiters, no watchers and no
//     hierarchy, may be held in an inline entry of its shard instead of a
//     node; a second request on it moves it into a node first (spill).
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
type memLocker struct {
	// Each shard has its 128-byte pair of cache lines (CPUs prefetch
	// lines in pairs) to itself: the allocation of a memLocker begins
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
//
// What an uncontended acquire and its release need sits in these 128
// bytes: the mutex, the keys held inline, the budget, the hold average and
// the next ticket. An operation on a shard the other CPU used last moves
// this pair and reads lines nobody writes on that path (the shard's
// shardCold, its region of tickets, the table's limits, the clock); with
// the node, its table slot and the live lease's slot it moved about 7.
type shard struct {
	mu sync.Mutex
	// inline are keys held by one lease each, with no waiters, no
	// watchers and no hierarchy, kept here instead of in a node (see
	// inlineHold). A key is in inline or in nodes, never both.
	inline [shardInline]inlineHold
	// shardCold is what the uncontended path reads at most: the nodes
	// and the live leases of the keys that are not inline.
	*shardCold
	// region.t[nextTicket:] are the tickets not handed out yet (see
	// newLease); each is handed out once.
	region *leaseRegion
	// credit is max_locks budget taken from memLocker.free and not yet
	// used by this shard's locks and waiters.
	credit int64
	// holdAvg is the average hold time, in nanoseconds, of the locks
	// released in this shard, and holdN the number of releases it
	// averages, up to holdWindow (see observeHold). They are written
	// under mu and read without it, from every shard, by holdEstimate.
	holdAvg    atomic.Int64
	holdN      atomic.Int32
	nextTicket uint8
	_          [3]byte
}

// shardInline is how many keys a shard holds inline: two, as many as fit
// in its 128 bytes, and as many as two CPUs hold at once on one shard when
// each takes and gives back one lock at a time.
const shardInline = 2

// inlineHold is a key held by the one lease numbered num&^inlineShared,
// with a lock of the kind inlineShared tells, since the coarse time since.
// num is 0 when the entry is free (lease numbers start at 1); the key of
// a free entry is stale and is never compared.
type inlineHold struct {
	hash  uint64
	key   string
	since int64
	num   uint64
}

// inlineShared marks, in inlineHold.num, a shared lock.
const inlineShared = 1 << 63

// shardCold is the part of a shard that only contended keys, hierarchy
// and keys beyond the inline ones use. It has its 128 bytes to itself
// (its size class is 128), so that the other shards' writes to theirs do
// not evict the nodes.count the uncontended path reads.
type shardCold struct {
	nodes nodeTable
	// live is the leases granted in this shard, not yet released, and
	// not inline, by number, each with its node (see memLease).
	live  nodeTable
	free  [maxFree]*node // recycled nodes: free[:nfree]
	nfree uint8
	_     [128 - 2*32 - maxFree*8 - 1]byte
}

// observeHold adds the hold time of a lock released in s to its average;
// the caller holds s.mu. The first holdWindow releases are averaged
// plainly, so that the first one seeds the average rather than moving it
// an eighth of the way from zero; later ones weigh 1/holdWindow each.
// holdN stops changing after that, so a release stores one word.
func (s *shard) observeHold(hold time.Duration) {
	n := int64(s.holdN.Load())
	if n < lockstore.HoldWindow {
		n++
		s.holdN.Store(int32(n))
	}
	avg := s.holdAvg.Load()
	// Most releases leave the average as it is (a hold shorter than a
	// tick of the coarse clock reads as 0, and so does an average of
	// such holds): then nothing is divided nor stored, which spares a
	// division and a locked instruction (an atomic store is an
	// exchange on amd64).
	if int64(hold) == avg {
		return
	}
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
func (l *memLocker) holdEstimate() time.Duration {
	var sum, n int64
	for i := range l.shards {
		s := &l.shards[i]
		if k := int64(s.holdN.Load()); k > 0 {
			sum += s.holdAvg.Load() * k
			n += k
		}
	}
	if n == 0 {
		return 0
	}
	return time.Duration(sum / n)
}

// node is 64 bytes, one cache line once the runtime aligns it (its size
// class is 64): an operation on a shard that the other CPU used last
// moves every line it touches, and a node of 80 bytes, with its table and
// its shard, straddled two. Its shard is l.shardOf(n), from its hash.
type node struct {
	key  string
	hash uint64 // hashOf(key), kept to hash the key once
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

func (n *node) held() bool { return n.excl || n.shared > 0 }

func (n *node) idle() bool {
	return !n.held() && n.belowExcl == 0 && n.belowShared == 0 &&
		(n.waits == nil || len(n.waits.queue) == 0 && len(n.waits.watchers) == 0)
}

// heldConflicts reports whether locks held on n itself conflict with kind.
func (n *node) heldConflicts(kind lockstore.Kind) bool {
	return n.excl || (kind == lockstore.Exclusive && n.shared > 0)
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

// newMemLocker returns an empty lock table.
func newMemLocker(hierarchy bool, maxLocks, maxWaiters int) *memLocker {
	l := &memLocker{hierarchy: hierarchy, seed: maphash.MakeSeed()}
	l.SetLimits(maxLocks, maxWaiters)
	for i := range l.shards {
		l.shards[i].shardCold = &shardCold{nodes: newNodeTable(), live: newNodeTable()}
	}
	return l
}

// SetLimits changes max_locks and max_waiters (per key); values <= 0 mean
// the defaults. Locks already held are never affected.
func (l *memLocker) SetLimits(maxLocks, maxWaiters int) {
	locks, waiters := lockstore.Limits(maxLocks, maxWaiters)
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
func (l *memLocker) Hierarchy() bool { return l.hierarchy }

// Stats reports held locks, queued waiters and nodes in the table.
func (l *memLocker) Stats() (held, waiting, nodes int) {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for _, e := range s.inline {
			if e.num != 0 {
				held++
				nodes++
			}
		}
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

func (l *memLocker) hashOf(key string) uint64 { return maphash.String(l.seed, key) }

// shardOf is the shard that holds n.
func (l *memLocker) shardOf(n *node) *shard { return &l.shards[shardIndex(n.hash)] }

func shardIndex(h uint64) uint { return uint(h >> (64 - shardBits)) }

// lock takes the shards of mask in ascending order, which is what keeps
// two hierarchical operations from deadlocking.
func (l *memLocker) lock(m uint64) {
	for m != 0 {
		i := bits.TrailingZeros64(m)
		l.shards[i].mu.Lock()
		m &^= 1 << i
	}
}

func (l *memLocker) unlock(m uint64) {
	for m != 0 {
		i := bits.TrailingZeros64(m)
		l.shards[i].mu.Unlock()
		m &^= 1 << i
	}
}

func (l *memLocker) lookup(a anc) *node {
	return l.shards[shardIndex(a.hash)].nodes.get(a.hash, a.key)
}

func (l *memLocker) getNode(key string, h uint64) *node {
	s := &l.shards[shardIndex(h)]
	n, slot := s.nodes.find(h, key)
	if n != nil {
		return n
	}
	if s.nfree > 0 {
		s.nfree--
		n = s.free[s.nfree]
	} else {
		n = new(node)
	}
	n.key = key
	n.hash = h
	s.nodes.insertAt(slot, h, n)
	return n
}

// maybeFree removes n from the table if nothing refers to it any more.
func (l *memLocker) maybeFree(n *node) {
	if !n.idle() {
		return
	}
	s := l.shardOf(n)
	if !s.nodes.remove(n.hash, n) {
		return
	}
	// An idle node is all zero but for key, hash, since and belowSince, which are set again before they are
	// read (the stale key stays referenced until then, by at most
	// maxFree nodes per shard). Writing only what must change keeps
	// pointer writes, and the GC's write barriers, off this path.
	if n.waits != nil {
		n.waits = nil
	}
	if s.nfree < maxFree {
		s.free[s.nfree] = n
		s.nfree++
	}
}

func (l *memLocker) grant(n *node, kind lockstore.Kind, lin []anc) {
	if !n.held() {
		n.since = clock.read()
	}
	if kind == lockstore.Exclusive {
		n.excl = true
	} else {
		n.shared++
	}
	for _, a := range lin {
		an := l.getNode(a.key, a.hash)
		if an.belowExcl == 0 && an.belowShared == 0 {
			an.belowSince = n.since
		}
		if kind == lockstore.Exclusive {
			an.belowExcl++
		} else {
			an.belowShared++
		}
	}
}

func (l *memLocker) conflict(n *node, b *node) *lockstore.ConflictError {
	e := new(lockstore.ConflictError)
	l.conflictInto(e, n, b)
	return e
}

// conflictInto writes into e the conflict of a request for n that b (or
// n's queue, for a nil b) stands in the way of.
func (l *memLocker) conflictInto(e *lockstore.ConflictError, n *node, b *node) {
	if b == nil {
		// Only the queue stood in the way: report the key itself.
		b = n
	}
	// The system clock, not the coarse one, so that HeldFor is never
	// zero: since is at most one tick early, now is exact.
	now := monotonicNow()
	*e = lockstore.ConflictError{Key: b.key, Kind: lockstore.Shared}
	switch {
	case b.held():
		if b.excl {
			e.Kind = lockstore.Exclusive
		}
		e.HeldFor = time.Duration(now - b.since)
	case b.belowExcl > 0 || b.belowShared > 0:
		e.Below = true
		e.HeldFor = time.Duration(now - b.belowSince)
		if b.belowExcl > 0 {
			e.Kind = lockstore.Exclusive
		}
	}
	avg := l.holdEstimate()
	remaining := avg - e.HeldFor
	if remaining <= 0 {
		remaining = avg
	}
	e.RetryAfter = max(1, (remaining+time.Second-1)/time.Second) * time.Second
}

// reserve takes one unit of the max_locks budget for a lock or waiter in
// shard s, whose mutex the caller holds, and reports whether there was one.
// The shard's own credit comes first; when it is spent, a batch is taken
// from the zone's free budget, or a single unit when little is left.
func (l *memLocker) reserve(s *shard) bool {
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
func (l *memLocker) unreserve(s *shard) {
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
func (l *memLocker) reclaim() {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		l.free.Add(s.credit)
		s.credit = 0
		s.mu.Unlock()
	}
}

// Acquire implements Locker.
func (l *memLocker) Acquire(ctx context.Context, req lockstore.Request) (lockstore.Lease, error) {
	return l.acquireInto(ctx, req, nil)
}

// errConflictInto is what acquireInto returns for a conflict it wrote
// into its caller's ConflictError.
var errConflictInto = errors.New("lock conflict, written to the caller's ConflictError")

// acquireInto is Acquire for a caller that keeps a ConflictError of its
// own (the handler, on its stack): a request refused at once for a
// conflict fills into and gets errConflictInto, so that a 423 allocates
// no error. A nil into makes it Acquire; a conflict after a wait is
// returned as Acquire returns it.
func (l *memLocker) acquireInto(ctx context.Context, req lockstore.Request, into *lockstore.ConflictError) (lockstore.Lease, error) {
	if req.Kind != lockstore.Shared && req.Kind != lockstore.Exclusive {
		return nil, fmt.Errorf("acquire %q: invalid lock kind %v", req.Key, req.Kind)
	}
	if !l.hierarchy {
		return l.acquire(ctx, req, nil, into)
	}
	if err := lockstore.CheckDepth(req.Key); err != nil {
		// Not quoting the key, which may be many kilobytes.
		return nil, fmt.Errorf("acquire: %w", err)
	}
	// Here, not in Acquire's frame, so that a table without hierarchy
	// does not clear it on every call.
	var buf [lineageInline]anc
	return l.acquire(ctx, req, l.lineage(req.Key, buf[:0]), into)
}

// acquire is acquireInto for a request whose key has lineage lin (nil
// without hierarchy).
func (l *memLocker) acquire(ctx context.Context, req lockstore.Request, lin []anc, into *lockstore.ConflictError) (lockstore.Lease, error) {
	h := l.hashOf(req.Key)
	m := l.mask(h, lin)
	s := &l.shards[shardIndex(h)]
	// Most operations need the key's shard alone: then its mutex is
	// taken directly, not through the walk over the set.
	single := m&(m-1) == 0
	for reclaimed := false; ; reclaimed = true {
		if single {
			s.mu.Lock()
		} else {
			l.lock(m)
		}
		if !l.hierarchy {
			if ls := l.acquireInline(s, req.Key, h, req.Kind); ls != nil {
				s.mu.Unlock()
				return ls, nil
			}
		}
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
			var err error = errConflictInto
			if into != nil {
				l.conflictInto(into, n, b)
			} else {
				err = l.conflict(n, b)
			}
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
			return nil, lockstore.ErrFull
		}
		if free {
			l.grant(n, req.Kind, lin)
			ls := l.newLease(s, n, false)
			if single {
				s.mu.Unlock()
			} else {
				l.unlock(m)
			}
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

// acquireInline grants kind on key, of hash h, as an inline hold of its
// shard s when the key is free and an inline entry is, in a table without
// hierarchy; the caller holds s. Otherwise it returns nil, and the key,
// if it was held inline, is a node now, with its waiters' queue, for the
// general path to go on with.
func (l *memLocker) acquireInline(s *shard, key string, h uint64, kind lockstore.Kind) *memLease {
	var slot *inlineHold
	for i := range s.inline {
		e := &s.inline[i]
		if e.num == 0 {
			if slot == nil {
				slot = e
			}
			continue
		}
		if e.hash == h && e.key == key {
			l.spill(s, e)
			return nil
		}
	}
	if slot == nil || s.nodes.count > 0 && s.nodes.get(h, key) != nil {
		return nil
	}
	if !l.reserve(s) {
		return nil // the general path refuses, once it has reclaimed credit
	}
	ls, num := l.newTicket(s, false)
	if kind == lockstore.Shared {
		num |= inlineShared
	}
	*slot = inlineHold{hash: h, key: key, since: clock.read(), num: num}
	return ls
}

// spill moves the inline hold e of shard s, whose mutex the caller holds,
// into a node and the live leases: a second request on its key needs the
// node's count of holders or its queue.
func (l *memLocker) spill(s *shard, e *inlineHold) {
	n := l.getNode(e.key, e.hash)
	n.since = e.since
	if e.num&inlineShared != 0 {
		n.shared = 1
	} else {
		n.excl = true
	}
	s.live.insert(e.num&^inlineShared, n)
	e.num = 0
}

// release gives back a lock of kind on n, of lineage lin; the caller holds
// n's shard set.
func (l *memLocker) release(n *node, kind lockstore.Kind, lin []anc) {
	if kind == lockstore.Exclusive {
		n.excl = false
	} else {
		n.shared--
	}
	s := l.shardOf(n)
	if !n.held() {
		// A lock taken while the clock was starting has a since from
		// the system clock, which may be a little ahead of the coarse
		// one.
		s.observeHold(time.Duration(max(0, clock.read()-n.since)))
	}
	l.unreserve(s)
	if n.waits != nil {
		l.wake(n, lin)
	}
	for i, a := range lin {
		an := l.lookup(a)
		if kind == lockstore.Exclusive {
			an.belowExcl--
		} else {
			an.belowShared--
		}
		l.wake(an, lin[:i])
	}
	if n.waits != nil {
		l.advance(n, lin)
	}
	l.maybeFree(n)
	for _, a := range lin {
		if an := l.lookup(a); an != nil {
			l.maybeFree(an)
		}
	}
}

var (
	_ lockstore.Locker = (*memLocker)(nil)
	_ lockstore.Lease  = (*memLease)(nil)
)
