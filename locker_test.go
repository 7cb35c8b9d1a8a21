package caddylock

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddy-lock/caddy-lock/lockstore/storetest"
)

func assertEmpty(t *testing.T, l *memLocker) {
	t.Helper()
	held, waiting, nodes := l.Stats()
	if r := reserved(l); held != 0 || waiting != 0 || nodes != 0 || r != 0 {
		t.Fatalf("table not empty: held=%d waiting=%d nodes=%d reserved=%d", held, waiting, nodes, r)
	}
}

// reserved is the max_locks budget in use: what neither the zone's free
// budget nor the shards' credit holds.
func reserved(l *memLocker) int64 {
	l.lock(^uint64(0))
	defer l.unlock(^uint64(0))
	r := l.maxLocks.Load() - l.free.Load()
	for i := range l.shards {
		r -= l.shards[i].credit
	}
	return r
}

// waitForQueue polls until key has n waiters; waiters queue asynchronously.
func waitForQueue(t *testing.T, l *memLocker, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, waiting, _ := l.Stats()
		if waiting == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiters = %d, want %d", waiting, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestConflictHeldFor checks that the hold time reported, which starts from
// the coarse clock, is never short of the real one.
func TestConflictHeldFor(t *testing.T) {
	for _, hierarchy := range []bool{false, true} {
		l := newMemLocker(hierarchy, 0, 0)
		start := time.Now()
		h := mustAcquire(t, l, "/a/b", lockstore.Exclusive)
		time.Sleep(30 * time.Millisecond)
		c := mustConflict(t, l, "/a/b", lockstore.Exclusive)
		if min := time.Since(start) - time.Millisecond; c.HeldFor < 30*time.Millisecond || c.HeldFor > min+time.Second {
			t.Fatalf("HeldFor = %v after holding for about %v", c.HeldFor, min)
		}
		if hierarchy {
			below := mustConflict(t, l, "/a", lockstore.Exclusive)
			if !below.Below || below.HeldFor < 30*time.Millisecond {
				t.Fatalf("conflict below = %+v", below)
			}
		}
		h.Release()
		assertEmpty(t, l)
	}
}

// keysInDistinctShards returns n keys of l that fall in n different shards.
func keysInDistinctShards(l *memLocker, n int) []string {
	var keys []string
	seen := map[uint]bool{}
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("/k%d", i)
		if sh := shardIndex(l.hashOf(k)); !seen[sh] {
			seen[sh] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// Retry-After is estimated from the hold times seen in the whole zone,
// not just in the shard of the key in conflict.
func TestConflictRetryAfterFollowsHoldTimes(t *testing.T) {
	l := newMemLocker(false, 0, 0)
	keys := keysInDistinctShards(l, 2)
	// Teach the shard of another key that locks are held for 2.5s.
	other := &l.shards[shardIndex(l.hashOf(keys[1]))]
	other.mu.Lock()
	other.observeHold(2500 * time.Millisecond)
	other.mu.Unlock()
	h := mustAcquire(t, l, keys[0], lockstore.Exclusive)
	c := mustConflict(t, l, keys[0], lockstore.Exclusive)
	if c.RetryAfter != 3*time.Second {
		t.Fatalf("RetryAfter = %v, want 3s (2.5s rounded up)", c.RetryAfter)
	}
	h.Release()
	mustAcquire(t, l, keys[0], lockstore.Exclusive).Release()
	if est := l.holdEstimate(); est >= 2500*time.Millisecond {
		t.Fatalf("average hold %v did not move towards the short holds just seen", est)
	}
}

// A shard's average starts at its first observed hold, and a conflict
// in a shard that has seen no release yet is estimated from the others:
// after three holds of about 300ms in three shards, a conflict in a
// fourth estimates about 300ms, not 0 (nor an eighth of 300ms). The
// bounds are wide: only the coarse clock's ticks and scheduling move it.
func TestHoldEstimateZoneWide(t *testing.T) {
	l := newMemLocker(false, 0, 0)
	keys := keysInDistinctShards(l, 4)
	var leases []lockstore.Lease
	for _, k := range keys[:3] {
		leases = append(leases, mustAcquire(t, l, k, lockstore.Exclusive))
	}
	time.Sleep(300 * time.Millisecond)
	for _, ls := range leases {
		ls.Release()
	}
	h := mustAcquire(t, l, keys[3], lockstore.Exclusive)
	defer h.Release()
	c := mustConflict(t, l, keys[3], lockstore.Exclusive)
	if est := l.holdEstimate(); est < 200*time.Millisecond || est > 2*time.Second {
		t.Fatalf("zone's hold estimate = %v after three holds of 300ms, want about 300ms", est)
	}
	if c.RetryAfter != time.Second {
		t.Fatalf("RetryAfter = %v, want 1s (300ms rounded up)", c.RetryAfter)
	}
}

// TestLockerMemoryHierarchy is TestMemoryPerHeldLock for a hierarchical
// table, where every lock also has a node for its parent: what a held
// lock costs, and that the heap goes back once they are released.
func TestLockerMemoryHierarchy(t *testing.T) {
	const n = 50000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("/docs/%d/report.odt", i)
	}
	l := newMemLocker(true, 0, 0)
	leases := make([]lockstore.Lease, n)
	base := heapInUse()
	for i, k := range keys {
		leases[i] = mustAcquire(t, l, k, lockstore.Exclusive)
	}
	// Two nodes per lock: the key's and its parent's.
	if perLock := (heapInUse() - base) / n; perLock > 2*256 {
		t.Errorf("%d bytes per held lock, want at most %d", perLock, 2*256)
	}
	for _, ls := range leases {
		ls.Release()
	}
	clear(leases)
	assertEmpty(t, l)
	// What a zone keeps for reuse, a couple of nodes and a block of
	// leases per shard, is about 20 KB; the rest is headroom for the
	// runtime's own noise.
	if left := heapInUse() - base; left > 64<<10 {
		t.Errorf("%d bytes left on the heap after releasing every lock", left)
	}
	runtime.KeepAlive(l)
	runtime.KeepAlive(leases)
}

func TestShardSize(t *testing.T) {
	if size := unsafe.Sizeof(shard{}); size != 128 {
		t.Fatalf("shard is %d bytes, want 128", size)
	}
}

// TestLockerMaxLocksAcrossShards checks max_locks above the size where
// shards take budget in batches: every unit can still be used by any
// shard, and no more.
func TestLockerMaxLocksAcrossShards(t *testing.T) {
	const limit = 3 * tightFree
	l := newMemLocker(false, limit, 0)
	fill := func(prefix string, n int) []lockstore.Lease {
		t.Helper()
		leases := make([]lockstore.Lease, n)
		for i := range leases {
			leases[i] = mustAcquire(t, l, fmt.Sprintf("/%s/%d", prefix, i), lockstore.Exclusive)
		}
		return leases
	}
	full := func() {
		t.Helper()
		if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "/one/more", Kind: lockstore.Exclusive}); !errors.Is(err, lockstore.ErrFull) {
			t.Fatalf("past max_locks: %v, want ErrFull", err)
		}
	}
	leases := fill("a", limit)
	full()
	mustConflict(t, l, "/a/7", lockstore.Exclusive) // the lock in the way comes first
	leases[5].Release()
	leases[5] = mustAcquire(t, l, "/b/5", lockstore.Exclusive)
	full()
	for _, ls := range leases {
		ls.Release()
	}
	assertEmpty(t, l)

	// Concurrent acquirers on distinct keys never get more than the
	// limit between them, and get all of it.
	var granted atomic.Int64
	var wg sync.WaitGroup
	held := make([][]lockstore.Lease, 8)
	for g := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				ls, err := l.Acquire(context.Background(), lockstore.Request{Key: fmt.Sprintf("/g%d/%d", g, i), Kind: lockstore.Exclusive})
				if errors.Is(err, lockstore.ErrFull) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				granted.Add(1)
				held[g] = append(held[g], ls)
			}
		}()
	}
	wg.Wait()
	if granted.Load() != limit {
		t.Fatalf("granted %d locks concurrently, want max_locks = %d", granted.Load(), limit)
	}
	for _, ls := range held {
		for _, x := range ls {
			x.Release()
		}
	}
	assertEmpty(t, l)

	// A lower limit applies to new locks at once, even to shards that
	// took credit under the old one; a higher one frees room at once.
	for i := range tightFree {
		mustAcquire(t, l, fmt.Sprintf("/credit/%d", i), lockstore.Exclusive).Release()
	}
	l.SetLimits(1000, 0)
	if credit := max(l.maxLocks.Load()-l.free.Load()-reserved(l), 0); credit > 0 {
		t.Fatalf("%d units of credit taken under the old limit are still usable", credit)
	}
	leases = fill("c", 1000)
	full()
	l.SetLimits(2000, 0)
	leases = append(leases, fill("d", 1000)...)
	full()
	for _, ls := range leases {
		ls.Release()
	}
	assertEmpty(t, l)
}

// Both lock tables read max_locks and max_waiters <= 0 as the same
// defaults, and take positive values as given (the Redis table's half is
// in stores/redis).
func TestLimitsDefaults(t *testing.T) {
	ml := newMemLocker(false, 0, -1)
	for _, tbl := range []struct {
		name   string
		set    func(maxLocks, maxWaiters int)
		limits func() (int64, int64)
	}{
		{"memory", ml.SetLimits, func() (int64, int64) { return ml.maxLocks.Load(), ml.maxWaiters.Load() }},
	} {
		if locks, waiters := tbl.limits(); locks != lockstore.DefaultMaxLocks || waiters != lockstore.DefaultMaxWaiters {
			t.Errorf("%s table created with 0, -1: limits %d, %d; want the defaults", tbl.name, locks, waiters)
		}
		tbl.set(7, 3)
		if locks, waiters := tbl.limits(); locks != 7 || waiters != 3 {
			t.Errorf("%s table after SetLimits(7, 3): limits %d, %d", tbl.name, locks, waiters)
		}
		tbl.set(-5, 0)
		if locks, waiters := tbl.limits(); locks != lockstore.DefaultMaxLocks || waiters != lockstore.DefaultMaxWaiters {
			t.Errorf("%s table after SetLimits(-5, 0): limits %d, %d; want the defaults", tbl.name, locks, waiters)
		}
	}
}

// A key's lineage is its ancestors as ancestors() visits them, root first
// and each once, with the hashes that maphash.String gives them: the
// incremental maphash.Hash must agree with it on every prefix, also those
// that end exactly at, or span, its 128-byte buffer.
func TestLineageHashes(t *testing.T) {
	l := newMemLocker(true, 0, 0)
	for _, key := range []string{
		"/", "", "x/y", "/a", "/a/b/c", "/a/", "/a//b", "//x",
		"/" + strings.Repeat("y", 127) + "/z",                                    // a prefix of exactly 128 bytes
		strings.Repeat("/"+strings.Repeat("s", 63), 9),                           // prefixes at every multiple of 64
		"/" + strings.Repeat("w", 300) + "/b/" + strings.Repeat("v", 200) + "/c", // segments longer than the buffer
	} {
		var want []anc
		lockstore.Ancestors(key, func(a string) bool {
			want = append(want, anc{key: a, hash: maphash.String(l.seed, a)})
			return true
		})
		slices.Reverse(want)
		want = slices.Compact(want) // "//x" visits "/" twice
		if got := l.lineage(key, nil); !slices.Equal(got, want) {
			t.Errorf("lineage(%.40q…) = %v, want %v", key, got, want)
		}
	}
}

// deepKey is a path of n one-letter segments, "/a/a/…/a".
func deepKey(n int) string { return strings.Repeat("/a", n) }

// The memory table keeps the Locker contract. Its cleanup also checks
// what the contract cannot see: that every node and every unit of the
// max_locks budget went back once the scenario released its locks.
func TestMemLockerContract(t *testing.T) {
	storetest.Locker(t, func(t *testing.T, hierarchy bool, maxLocks, maxWaiters int) lockstore.Locker {
		l := newMemLocker(hierarchy, maxLocks, maxWaiters)
		t.Cleanup(func() {
			if !t.Failed() {
				assertEmpty(t, l)
			}
		})
		return l
	})
}

// With hierarchy, a release wakes the waiters on the keys above the one
// it frees: a DELETE of /a queued behind a write to /a/b goes through
// as soon as that write is done, not when its wait runs out (it would
// then get 423, never having reached the backend). Through Caddy, with
// wait long enough that only a wake-up gets the DELETE to the backend.
func TestReleaseWakesWaitersAbove(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone wakeabove\n hierarchy\n wait 30s\n}\nreverse_proxy {backend}", b)
	below := holdWrite(t, b, http.MethodPut, url+"/a/b", "below")
	above := make(chan result, 1)
	go func() {
		above <- do(http.DefaultClient, http.MethodDelete, url+"/a", map[string]string{"X-Hold": "above"})
	}()
	l := zoneTable(t, "wakeabove")
	waitForQueue(t, l, 1)
	b.open("below")
	if r := <-below; r.status != http.StatusOK {
		t.Fatalf("the write below: %d %v", r.status, r.err)
	}
	// waitStarted gives up after 10s, well before the 30s wait ends: the
	// DELETE reaches the backend only if the release woke it.
	b.waitStarted(t, "above")
	b.open("above")
	if r := <-above; r.status != http.StatusOK {
		t.Fatalf("the DELETE queued above: %d %v %s", r.status, r.err, r.body)
	}
	waitEmpty(t, l)
}
