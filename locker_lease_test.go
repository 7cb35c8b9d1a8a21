package caddylock

import (
	"context"
	"runtime"
	"testing"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// keysInShard returns n keys of l that fall in shard sh.
func keysInShard(l *memLocker, sh uint, n int) []string {
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := "/s/" + itoa(i)
		if shardIndex(l.hashOf(k)) == sh {
			keys = append(keys, k)
		}
	}
	return keys
}

func itoa(i int) string {
	var b [20]byte
	p := len(b)
	for {
		p--
		b[p] = byte('0' + i%10)
		if i /= 10; i == 0 {
			return string(b[p:])
		}
	}
}

// A grant allocates next to nothing: the garbage collector runs in
// proportion to what is allocated, and write barriers slow every pointer
// write while it does. Leases allocated per grant, even eight at a time
// (16 bytes a grant), made it run every few hundred thousand grants and
// took a quarter of the table's time.
func TestGrantAllocatesAlmostNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("counts the bytes of 100 000 grants; skipped with -short")
	}
	for _, hierarchy := range []bool{false, true} {
		l := newMemLocker(hierarchy, 0, 0)
		keys := make([]string, 4096)
		for i := range keys {
			keys[i] = "/docs/" + itoa(i) + ".odt"
		}
		ctx := context.Background()
		cycle := func(n int) {
			for i := range n {
				ls, err := l.Acquire(ctx, lockstore.Request{Key: keys[i%len(keys)], Kind: lockstore.Exclusive})
				if err != nil {
					t.Fatal(err)
				}
				ls.Release()
			}
		}
		cycle(len(keys)) // nodes, tables and first regions
		const grants = 100000
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		cycle(grants)
		runtime.ReadMemStats(&after)
		if perGrant := float64(after.TotalAlloc-before.TotalAlloc) / grants; perGrant > 4 {
			t.Errorf("hierarchy %v: a grant and its release allocate %.1f bytes, want at most 4", hierarchy, perGrant)
		}
		assertEmpty(t, l)
	}
}

// Leases are never reused: a lease released long ago, whose shard has
// since handed out more leases than a region holds, still releases
// nothing, not even a lock later granted on its own key, nor one whose
// lease sits where it sat in the shard's table of live leases.
func TestStaleLeaseAcrossRegions(t *testing.T) {
	for _, hierarchy := range []bool{false, true} {
		l := newMemLocker(hierarchy, 0, 0)
		keys := keysInShard(l, 5, 3)
		a := mustAcquire(t, l, keys[0], lockstore.Exclusive)
		a.Release()
		// Enough grants in the same shard to fill several regions, with
		// one lock held throughout so that the live leases' table is
		// never empty; so many that b's ticket has the index in its
		// region that a's had in the first, and c's that of held's.
		held := mustAcquire(t, l, keys[2], lockstore.Shared)
		for range 3*regionTickets - 2 {
			mustAcquire(t, l, keys[1], lockstore.Shared).Release()
		}
		b := mustAcquire(t, l, keys[0], lockstore.Exclusive)
		a.Release()
		mustConflict(t, l, keys[0], lockstore.Shared)
		c := mustAcquire(t, l, keys[2], lockstore.Shared)
		a.Release()
		held.Release()
		held.Release()
		mustConflict(t, l, keys[2], lockstore.Exclusive) // c still holds it
		b.Release()
		c.Release()
		assertEmpty(t, l)
	}
}

// A lease finds its region and shard from its own address, from every
// ticket of a region, and releases the lock it was granted.
func TestLeaseTicketsFindTheirRegion(t *testing.T) {
	l := newMemLocker(false, 0, 0)
	keys := keysInShard(l, 9, 2)
	sh := &l.shards[9]
	var first *leaseRegion
	// Two grants an iteration: the lease's, then the one that checks
	// the key is free again.
	for i := range regionTickets/2 + 2 {
		kind := lockstore.Shared
		if i%3 == 0 {
			kind = lockstore.Exclusive
		}
		key := keys[i%2]
		ls := mustAcquire(t, l, key, kind).(*memLease)
		r := ls.region()
		if r.s != sh {
			t.Fatalf("lease %d: region of shard %p, want %p", i, r.s, sh)
		}
		if first == nil {
			first = r
		}
		if want := 2*i >= regionTickets; (r != first) != want {
			t.Fatalf("lease %d: in a new region %v, want %v", i, r != first, want)
		}
		if ls.Queued() {
			t.Fatalf("lease %d: queued, want not", i)
		}
		if c := mustConflict(t, l, key, lockstore.Exclusive); c.Kind != kind {
			t.Fatalf("lease %d: %v lock held, want %v", i, c.Kind, kind)
		}
		ls.Release()
		mustAcquire(t, l, key, lockstore.Exclusive).Release()
	}
	assertEmpty(t, l)
}
