package caddylock

import (
	"strconv"
	"testing"
	"unsafe"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// Every shard of a lock table sits in a 128-byte pair of cache lines of
// its own: a shard that straddles pairs shares a line with its neighbour,
// and two CPUs working on neighbouring shards then move that line between
// them on every operation.
func TestShardsOwnTheirCacheLines(t *testing.T) {
	if s := unsafe.Sizeof(shard{}); s != 128 {
		t.Fatalf("a shard is %d bytes, want 128", s)
	}
	for range 16 { // allocations of the size class at several addresses
		l := newMemLocker(false, 0, 0)
		for i := range l.shards {
			if a := uintptr(unsafe.Pointer(&l.shards[i])); a%128 != 0 {
				t.Fatalf("shard %d at %#x, not on a 128-byte boundary (memLocker is %d bytes)", i, a, unsafe.Sizeof(*l))
			}
		}
	}
}

// A node and a region of leases are each one size class the runtime
// aligns to their size, so that neither shares a cache line with another
// shard's: an operation on a shard that the other CPU used last moves
// every line it touches.
func TestNodesAndRegionsOwnTheirLines(t *testing.T) {
	if s := unsafe.Sizeof(node{}); s != 64 {
		t.Fatalf("a node is %d bytes, want 64", s)
	}
	if s := unsafe.Sizeof(leaseRegion{}); s != 128 {
		t.Fatalf("a region of leases is %d bytes, want 128", s)
	}
	l := newMemLocker(false, 0, 0)
	for i := range 256 {
		// A second holder moves the key out of its shard's inline
		// entries into a node.
		key := "/k" + strconv.Itoa(i)
		ls := mustAcquire(t, l, key, lockstore.Shared).(*memLease)
		mustAcquire(t, l, key, lockstore.Shared)
		r := ls.region()
		if a := uintptr(unsafe.Pointer(r)); a%128 != 0 {
			t.Fatalf("region at %#x, not on a 128-byte boundary", a)
		}
		if _, n := r.s.live.findNum(r.base + uint64(*ls&ticketIndex)); n == nil {
			t.Fatalf("lease %d not live", i)
		} else if a := uintptr(unsafe.Pointer(n)); a%64 != 0 {
			t.Fatalf("node at %#x, not on a 64-byte boundary", a)
		}
	}
}
