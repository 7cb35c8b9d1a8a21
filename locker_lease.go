package caddylock

// Leases of the memory lock table: what a granted request holds, and its
// release, which wakes the queue.

import (
	"time"
	"unsafe"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// memLease is a granted lock, handed out as a pointer to one ticket of a
// leaseRegion. A grant costs no allocation of its own, and so no garbage:
// a lease that pointed at its node, allocated per grant (even eight at a
// time), made the garbage collector run every few hundred thousand
// grants, with write barriers on while it did; it took a quarter of the
// table's time.
//
// What the lease holds is in its shard, under the lease's number, not in
// the ticket: in an inline entry (shard.inline) or the table of live
// leases (shard.live). Release takes it out of there, so a second Release
// finds nothing and does nothing. A number is
// never used twice in a shard, nor a ticket's address while a lease
// refers to it (a region is never reused; the garbage collector frees it
// once no lease points into it), so a stale lease can never release a
// later holder's lock.
//
// The ticket itself holds its index in the region, from which the lease
// finds its region (and so its shard and number), and whether the grant
// waited. The index is written when the region is made, the queued mark
// before the lease is handed out, and nothing after that, so reading it
// needs no lock. The kind is the node's: a node held by an
// exclusive lease is held by no other.
type memLease uint8

const (
	ticketIndex  memLease = 1<<7 - 1 // index in the region
	ticketQueued memLease = 1 << 7   // granted after waiting in the queue
)

// regionTickets is the number of tickets of a leaseRegion: as many as
// make it 128 bytes, a size the runtime aligns to 128, so that a region
// shares no pair of cache lines with another shard's region, which the
// other CPU may be writing (at 144 bytes, neighbouring regions shared
// lines). A grant allocates little more than its one-byte ticket, none of
// which the garbage collector scans (only the region's first two words
// are pointers). A lease held for long keeps its region alive: 128 bytes
// at most, and less when the region's other leases are held as well.
const regionTickets = 128 - 24

// leaseRegion is the tickets a shard hands out, in order.
type leaseRegion struct {
	l *memLocker
	s *shard
	// base is the number of t[0]; t[i] is lease number base+i.
	base uint64
	t    [regionTickets]memLease
}

// newLease hands out a lease on n, which has just been granted; the
// caller holds n's shard s.
func (l *memLocker) newLease(s *shard, n *node, queued bool) *memLease {
	ls, num := l.newTicket(s, queued)
	s.live.insert(num, n)
	return ls
}

// newTicket hands out the next ticket of shard s, whose mutex the caller
// holds, and its lease number. A region's tickets are written when it is
// made, so that a grant that did not wait writes nothing to the region:
// its lines are read by releases on either CPU and written by neither.
func (l *memLocker) newTicket(s *shard, queued bool) (*memLease, uint64) {
	r := s.region
	if r == nil || int(s.nextTicket) == regionTickets {
		// Numbers start at 1: 0 marks a free inline entry.
		base := uint64(1)
		if r != nil {
			base = r.base + uint64(regionTickets)
		}
		r = &leaseRegion{l: l, s: s, base: base}
		for i := range r.t {
			r.t[i] = memLease(i)
		}
		s.region, s.nextTicket = r, 0
	}
	i := s.nextTicket
	s.nextTicket++
	ls := &r.t[i]
	if queued {
		*ls |= ticketQueued
	}
	return ls, r.base + uint64(i)
}

// region is the region ls belongs to: its ticket is region.t[index], so the
// region begins index tickets and the header before it, in the same
// allocation.
func (ls *memLease) region() *leaseRegion {
	back := unsafe.Offsetof(leaseRegion{}.t) + uintptr(*ls&ticketIndex)*unsafe.Sizeof(*ls)
	return (*leaseRegion)(unsafe.Add(unsafe.Pointer(ls), -int(back)))
}

// leaseKind is the kind of the lock held by a live lease on n; the caller
// holds n's shard.
func leaseKind(n *node) lockstore.Kind {
	if n.excl {
		return lockstore.Exclusive
	}
	return lockstore.Shared
}

// Queued implements Lease.
func (ls *memLease) Queued() bool { return *ls&ticketQueued != 0 }

// ExplicitLocksInZone implements Lease: the in-memory table cannot tell,
// and asking the zone's explicit store in memory costs no round trip.
func (ls *memLease) ExplicitLocksInZone() bool { return true }

func (ls *memLease) Release() {
	r := ls.region()
	s := r.s
	num := r.base + uint64(*ls&ticketIndex)
	s.mu.Lock()
	for i := range s.inline {
		if e := &s.inline[i]; e.num&^inlineShared == num {
			e.num = 0
			s.observeHold(time.Duration(max(0, clock.read()-e.since)))
			r.l.unreserve(s)
			s.mu.Unlock()
			return
		}
	}
	i, n := s.live.findNum(num)
	if n == nil {
		// Released already.
		s.mu.Unlock()
		return
	}
	l := r.l
	if !l.hierarchy {
		s.live.removeAt(i)
		l.release(n, leaseKind(n), nil)
		s.mu.Unlock()
		return
	}
	releaseHierarchy(l, s, n, num, i)
}

// releaseHierarchy is Release in table l, with hierarchy, of the lease
// numbered num on n, in slot i of the live leases of n's shard s; the
// caller holds s. It is apart so that Release without hierarchy does
// not clear the lineage buffer.
func releaseHierarchy(l *memLocker, s *shard, n *node, num, i uint64) {
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
		var still *node
		if i, still = s.live.findNum(num); still == nil {
			l.unlock(m)
			return
		}
	}
	s.live.removeAt(i)
	l.release(n, leaseKind(n), lin)
	l.unlock(m)
}
