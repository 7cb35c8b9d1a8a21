package caddylock

// Leases of the memory lock table: what a granted request holds, and its
// release, which wakes the queue.

import "github.com/caddy-lock/caddy-lock/lockstore"

// memLease is a granted lock. Leases are handed out from blocks of
// leaseBlock (see shard.leases): a lease still referenced after its
// release keeps at most leaseBlock*16 bytes alive.
type memLease struct {
	n    *node
	kind lockstore.Kind
	// done is set by the first Release. It is guarded by n.shard's
	// mutex; until it is set, n is held by this lease and is not
	// recycled.
	done   bool
	queued bool // granted after waiting in the queue
}

const leaseBlock = 8

// newLease hands out a lease of kind on n; the caller holds n's shard.
func newLease(n *node, kind lockstore.Kind) *memLease {
	s := n.shard
	if s.leases == nil || s.nextLease == leaseBlock {
		s.leases, s.nextLease = new([leaseBlock]memLease), 0
	}
	ls := &s.leases[s.nextLease]
	s.nextLease++
	ls.n, ls.kind = n, kind
	return ls
}

// Queued implements Lease.
func (ls *memLease) Queued() bool { return ls.queued }

// ExplicitLocksInZone implements Lease: the in-memory table cannot tell,
// and asking the zone's explicit store in memory costs no round trip.
func (ls *memLease) ExplicitLocksInZone() bool { return true }

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
