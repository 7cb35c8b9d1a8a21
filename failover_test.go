package caddylock

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/redis/go-redis/v9"
)

// sentinelMaster asks the Sentinel which address it names as the master;
// "" when it cannot tell.
func sentinelMaster(sc *redis.SentinelClient, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a, err := sc.GetMasterAddrByName(ctx, name).Result()
	if err != nil || len(a) != 2 {
		return ""
	}
	return net.JoinHostPort(a[0], a[1])
}

// settledGoroutines waits up to 2s for the goroutine count to drop to at
// most limit and returns the last count seen.
func settledGoroutines(limit int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100 && n > limit; i++ {
		time.Sleep(20 * time.Millisecond)
		http.DefaultClient.CloseIdleConnections()
		n = runtime.NumGoroutine()
	}
	return n
}

// startReplicated starts a master and a replica of it, and returns once
// the replica is in sync.
func startReplicated(t *testing.T) (master, replica *testRedis) {
	t.Helper()
	// No delay before a full sync (5s by default, waiting for more replicas).
	master = startRedis(t, "--repl-diskless-sync-delay", "0")
	host, port, err := net.SplitHostPort(master.Addr)
	if err != nil {
		t.Fatal(err)
	}
	replica = startRedis(t, "--replicaof", host, port)
	rc := redisClient(t, replica)
	waitFor(t, 10*time.Second, "the replica to sync", func() bool {
		info, err := rc.Info(context.Background(), "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	return master, replica
}

// A Sentinel failover under a running Caddy, which is neither reloaded
// nor restarted: while the master is gone no write passes (fail_closed
// answers 503), and once the Sentinel has promoted the replica, locking
// resumes there.
func TestRedisHandlerSentinelFailover(t *testing.T) {
	ctx := context.Background()
	master, replica := startReplicated(t)
	// Started after the sync, the Sentinel learns of the replica from its
	// first INFO of the master.
	sentinel := startSentinel(t, master, "mymaster", "down-after-milliseconds", "500", "failover-timeout", "3000")
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel.Addr})
	t.Cleanup(func() { sc.Close() })
	waitFor(t, 10*time.Second, "the sentinel to know the replica", func() bool {
		rs, err := sc.Replicas(ctx, "mymaster").Result()
		if err != nil {
			return false
		}
		for _, r := range rs {
			if net.JoinHostPort(r["ip"], r["port"]) == replica.Addr && r["flags"] == "slave" &&
				r["master-link-status"] == "ok" {
				return true
			}
		}
		return false
	})
	if got := sentinelMaster(sc, "mymaster"); got != master.Addr {
		t.Fatalf("the sentinel names %q as master, want %q", got, master.Addr)
	}

	b := newBackend(t)
	url := startCaddy(t, redisSite(sentinel, "rfailover", "master_name mymaster", ""), b)
	mc, rc := redisClient(t, master), redisClient(t, replica)

	// Before: locking works, in the master.
	r := assertHeldIn(t, url, b, mc, "rfailover", "before")
	fenceBefore, err := strconv.ParseInt(r.header.Get("X-Fence"), 10, 64)
	if err != nil {
		t.Fatalf("fence %q: %v", r.header.Get("X-Fence"), err)
	}
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond) // for the server's side to close
	goroutinesBefore := runtime.NumGoroutine()
	// A write in flight across the failover.
	across := holdWrite(t, b, http.MethodPut, url+"/held", "across")
	// Everything the master granted has reached the replica, so the new
	// master continues the fencing counter rather than restarting it.
	if n, err := mc.Do(ctx, "WAIT", 1, 2000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT for the replica: %d %v", n, err)
	}

	// The master dies. Until the Sentinel has promoted the replica, every
	// write is refused: none reaches the backend without a lock.
	master.Stop()
	killed := time.Now()
	writesBefore, _, _ := b.counts()
	refused := 0
	for time.Since(killed) < 20*time.Second {
		start := time.Now()
		r := do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("a write took %s without a master (timeout 200ms)", d)
		}
		if r.status == http.StatusOK && sentinelMaster(sc, "mymaster") == replica.Addr {
			break // promoted meanwhile
		}
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" ||
			r.header.Get("X-Result") != "" && r.header.Get("X-Result") != resultUnavailable {
			t.Fatalf("write %d without a master: %d %v %s (%v)", refused+1, r.status, r.header, r.body, r.err)
		}
		refused++
		if sentinelMaster(sc, "mymaster") == replica.Addr {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	promoted := time.Since(killed)
	if got := sentinelMaster(sc, "mymaster"); got != replica.Addr {
		t.Fatalf("after %s the sentinel names %q as master, want the replica %q", promoted, got, replica.Addr)
	}
	if refused == 0 {
		t.Fatal("no write was refused between the master's death and the promotion")
	}
	if writes, _, _ := b.counts(); writes > writesBefore+1 {
		t.Fatalf("%d writes reached the backend without a master", writes-writesBefore)
	}

	// After: the same Caddy locks in the new master.
	var first result
	waitFor(t, 10*time.Second, "locking to resume on the new master", func() bool {
		first = do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
		if first.status != http.StatusOK && first.status != http.StatusServiceUnavailable {
			t.Fatalf("a write after the promotion: %d %s", first.status, first.body)
		}
		return first.header.Get("X-Result") == resultAcquired
	})
	t.Logf("master killed: %d writes refused with 503; promoted after %s; locking resumed after %s",
		refused, promoted.Round(10*time.Millisecond), time.Since(killed).Round(10*time.Millisecond))
	if f, err := strconv.ParseInt(first.header.Get("X-Fence"), 10, 64); err != nil || f <= fenceBefore {
		t.Fatalf("fence after the failover %q, before %d: want a greater one", first.header.Get("X-Fence"), fenceBefore)
	}
	// The write in flight across the failover finishes (it is not cut
	// short), and its lock does not outlive it: whether its lease was
	// renewed on the new master or ran out there, its path is free.
	b.open("across")
	if r := <-across; r.status != http.StatusOK {
		t.Fatalf("the write in flight across the failover: %d %s", r.status, r.body)
	}
	waitFor(t, 3*time.Second, "the path written across the failover to be free", func() bool {
		r := do(http.DefaultClient, http.MethodPut, url+"/held", nil)
		if r.status != http.StatusOK && r.status != http.StatusLocked {
			t.Fatalf("a write to the path written across the failover: %d %s", r.status, r.body)
		}
		return r.status == http.StatusOK
	})

	assertHeldIn(t, url, b, rc, "rfailover", "after")
	waitFor(t, 5*time.Second, "the new master to release the lock", func() bool {
		return heldInRedis(t, rc, "rfailover") == 0
	})
	if _, _, overlaps := b.counts(); overlaps != 0 {
		t.Fatalf("%d writes overlapped at the backend", overlaps)
	}

	// Nothing piled up while Redis failed: no goroutine per refused write
	// or per failed call.
	http.DefaultClient.CloseIdleConnections()
	if n := settledGoroutines(goroutinesBefore + 5); n > goroutinesBefore+5 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before the failover, %d after %d refused writes:\n%s",
			goroutinesBefore, n, refused, buf[:runtime.Stack(buf, true)])
	}
}

// A failover that loses a grant must not hand out its fencing number
// again: the replica promoted here never heard of the last grant of the
// old master, so it grants the same lock a second time, and the backend
// can tell the stale holder only by its lower fence.
func TestRedisFenceAfterLostGrant(t *testing.T) {
	ctx := context.Background()
	master, replica := startReplicated(t)
	rc, mc := redisClient(t, replica), redisClient(t, master)
	old := newRedisLocker(t, master, t.Name(), redisOpts{})
	for range 3 {
		redisAcquire(t, old, "/doc", lockstore.Exclusive).Release()
	}
	if n, err := mc.Do(ctx, "WAIT", 1, 2000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT for the replica: %d %v", n, err)
	}
	// The failover: the replica becomes a primary of its own, and the old
	// master's next grant never reaches it.
	if err := rc.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	lost := redisAcquire(t, old, "/doc", lockstore.Exclusive)
	defer lost.Release()
	promoted := newRedisLocker(t, replica, t.Name(), redisOpts{})
	again := redisAcquire(t, promoted, "/doc", lockstore.Exclusive) // granted twice: what no setting prevents
	defer again.Release()
	if again.Fence() <= lost.Fence() {
		t.Fatalf("fence %d from the promoted replica, %d from the lost grant: want a greater one", again.Fence(), lost.Fence())
	}
}
