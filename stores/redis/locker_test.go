package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/testsupport"
	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// Two nodes hammer a few keys; an in-test counter checks that exclusive
// holders never overlap with any other holder of the same key.
func TestRedisTwoNodesExclusion(t *testing.T) {
	srv := startRedis(t)
	nodes := []*Locker{
		// A generous timeout: this test loads a 2-core machine under -race.
		newRedisLocker(t, srv, t.Name(), redisOpts{timeout: 2 * time.Second, lease: 10 * time.Second}),
		newRedisLocker(t, srv, t.Name(), redisOpts{timeout: 2 * time.Second, lease: 10 * time.Second}),
	}
	const keys, perNode, rounds = 5, 50, 20
	var excl, shared [keys]atomic.Int32
	var grants, conflicts atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	for n, l := range nodes {
		for g := range perNode {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range rounds {
					k := (g + r) % keys
					kind := lockstore.Exclusive
					if (g+r)%3 == 0 {
						kind = lockstore.Shared
					}
					req := lockstore.Request{Key: "/k" + strconv.Itoa(k), Kind: kind}
					if g%2 == 0 {
						req.Wait = 5 * time.Second
					}
					ls, err := l.Acquire(context.Background(), req)
					var ce *lockstore.ConflictError
					if errors.As(err, &ce) {
						conflicts.Add(1)
						continue
					}
					if err != nil {
						fail(fmt.Errorf("node %d: %w", n, err))
						return
					}
					grants.Add(1)
					if kind == lockstore.Exclusive {
						if excl[k].Add(1) != 1 || shared[k].Load() != 0 {
							fail(fmt.Errorf("exclusive lock on key %d granted twice", k))
						}
						time.Sleep(time.Millisecond)
						excl[k].Add(-1)
					} else {
						shared[k].Add(1)
						if excl[k].Load() != 0 {
							fail(fmt.Errorf("shared lock on key %d granted under an exclusive one", k))
						}
						time.Sleep(time.Millisecond)
						shared[k].Add(-1)
					}
					ls.Release()
				}
			}()
		}
	}
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	t.Logf("%d grants, %d conflicts", grants.Load(), conflicts.Load())
	if grants.Load() < perNode*rounds {
		t.Fatalf("only %d grants", grants.Load())
	}
	if s := redisStats(t, nodes[0]); s.Held != 0 || s.Waiting != 0 {
		t.Fatalf("stats after the storm = %+v", s)
	}
}

// Two hierarchical nodes on nested keys: an in-test table of holders,
// entered after a grant and left before the release, must never see two
// conflicting holders.
func TestRedisTwoNodesHierarchy(t *testing.T) {
	srv := startRedis(t)
	o := redisOpts{hierarchy: true, timeout: 2 * time.Second, lease: 10 * time.Second}
	nodes := []*Locker{newRedisLocker(t, srv, t.Name(), o), newRedisLocker(t, srv, t.Name(), o)}
	keys := []string{"/", "/h", "/h/a", "/h/b", "/h/a/x", "/h/ax"}
	related := func(a, b string) bool { return a == b || lockstore.Below(b, a) || lockstore.Below(a, b) }
	var mu sync.Mutex
	holders := map[string]map[lockstore.Kind]int{}
	var grants atomic.Int64
	var wg sync.WaitGroup
	for _, l := range nodes {
		for g := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range 15 {
					key := keys[(g*7+r)%len(keys)]
					kind := lockstore.Kind(1 + (g+r)%2)
					req := lockstore.Request{Key: key, Kind: kind}
					if r%2 == 0 {
						req.Wait = 5 * time.Second
					}
					ls, err := l.Acquire(context.Background(), req)
					var ce *lockstore.ConflictError
					if errors.As(err, &ce) {
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					grants.Add(1)
					mu.Lock()
					for k, h := range holders {
						if related(k, key) && (h[lockstore.Exclusive] > 0 || (kind == lockstore.Exclusive && h[lockstore.Shared] > 0)) {
							t.Errorf("%s %s granted while %s is held %v", kind, key, k, h)
						}
					}
					if holders[key] == nil {
						holders[key] = map[lockstore.Kind]int{}
					}
					holders[key][kind]++
					mu.Unlock()
					time.Sleep(time.Millisecond)
					mu.Lock()
					holders[key][kind]--
					mu.Unlock()
					ls.Release()
				}
			}()
		}
	}
	wg.Wait()
	t.Logf("%d grants", grants.Load())
	if grants.Load() < 100 {
		t.Fatalf("only %d grants", grants.Load())
	}
	if s := redisStats(t, nodes[0]); s.Held != 0 || s.Waiting != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestRedisConfigErrors(t *testing.T) {
	if _, err := NewClient(Config{}); err == nil {
		t.Error("client without addresses")
	}
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	for _, tc := range []struct {
		zone string
		cfg  Config
	}{
		{"a}b", Config{}},
		{"z", Config{KeyPrefix: "{p"}},
		{"z", Config{Lease: caddy.Duration(time.Second), Timeout: caddy.Duration(time.Second)}},
	} {
		if l, err := NewLocker(client, tc.zone, tc.cfg, false, 0, 0); err == nil {
			l.Close()
			t.Errorf("%q %+v: no error", tc.zone, tc.cfg)
		}
	}
	l, err := NewLocker(client, "z", Config{}, false, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.lease != DefaultLease || l.timeout != DefaultTimeout || l.kExp != "{caddy-lock:z}:exp" {
		t.Errorf("defaults: lease %s timeout %s key %s", l.lease, l.timeout, l.kExp)
	}
	if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "a\x00b", Kind: lockstore.Exclusive}); err == nil {
		t.Error("key with NUL accepted")
	}
	if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "/a", Kind: 7}); err == nil {
		t.Error("bad kind accepted")
	}
}

// A node that stops renewing (it died) loses its locks after one lease.
func TestRedisLeaseExpiry(t *testing.T) {
	srv := startRedis(t)
	const lease = time.Second
	dead := newRedisLocker(t, srv, t.Name(), redisOpts{lease: lease})
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: lease})
	ls := redisAcquire(t, dead, "/e", lockstore.Exclusive)
	dead.Close() // stops renewals without releasing
	select {
	case <-ls.Lost():
	default:
		t.Fatal("Close did not mark the lease lost")
	}
	start := time.Now()
	got, err := l.Acquire(context.Background(), lockstore.Request{Key: "/e", Kind: lockstore.Exclusive, Wait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	if d < lease/2 || d > lease+time.Second {
		t.Fatalf("granted after %s, want about %s", d, lease)
	}
	got.Release()
}

// Renewals keep a lock alive for several lease periods.
func TestRedisRenewal(t *testing.T) {
	srv := startRedis(t)
	l1 := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Second})
	l2 := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Second})
	a := redisAcquire(t, l1, "/r", lockstore.Exclusive)
	b := redisAcquire(t, l1, "/r2", lockstore.Shared)
	time.Sleep(3500 * time.Millisecond)
	testsupport.Conflict(t, l2, "/r", lockstore.Shared)
	testsupport.Conflict(t, l2, "/r2", lockstore.Exclusive)
	for _, ls := range []*Lease{a, b} {
		select {
		case <-ls.Lost():
			t.Fatal("lease lost although renewed")
		default:
		}
	}
	a.Release()
	b.Release()
	redisAcquire(t, l2, "/r", lockstore.Exclusive).Release()
}

// All of a locker's leases are renewed in one script call per tick, not
// one per lease: six held locks cost Redis a call every lease/3.
func TestRedisRenewalBatched(t *testing.T) {
	srv := startRedis(t)
	const lease = 600 * time.Millisecond
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: lease, timeout: 100 * time.Millisecond})
	var held []*Lease
	for i := range 6 {
		held = append(held, redisAcquire(t, l, "/b"+strconv.Itoa(i), lockstore.Exclusive))
	}
	if err := l.client.ConfigResetStat(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(3 * lease)
	calls := commandCalls(t, l.client)["evalsha"]
	ticks := int(time.Since(start)/(lease/3)) + 1
	if calls < 3 || calls > ticks {
		t.Fatalf("%d script calls in %d renewal ticks for %d leases; want one a tick", calls, ticks, len(held))
	}
	for _, ls := range held {
		select {
		case <-ls.Lost():
			t.Fatal("lease lost although renewed")
		default:
		}
		ls.Release()
	}
}

// The Retry-After estimate starts from the first hold observed, not an
// eighth of the way from zero: one 1.5s hold makes the next conflict say
// 2s, where it used to say 1s for the first several.
func TestRedisRetryAfterFromFirstHold(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	ls := redisAcquire(t, l, "/slow", lockstore.Exclusive)
	time.Sleep(1500 * time.Millisecond)
	ls.Release()
	h := redisAcquire(t, l, "/next", lockstore.Exclusive)
	defer h.Release()
	if c := testsupport.Conflict(t, l, "/next", lockstore.Exclusive); c.RetryAfter != 2*time.Second {
		t.Fatalf("RetryAfter = %v after one hold of 1.5s, want 2s", c.RetryAfter)
	}
}

func TestRedisLost(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Second})
	ls := redisAcquire(t, l, "/lost", lockstore.Exclusive)
	keep := redisAcquire(t, l, "/kept", lockstore.Exclusive)
	// Somebody removes the holder from Redis (as a failover might).
	if err := l.client.ZRem(context.Background(), l.kExp, ls.member).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ls.Lost():
	case <-time.After(2 * time.Second):
		t.Fatal("Lost not closed")
	}
	select {
	case <-keep.Lost():
		t.Fatal("unrelated lease lost")
	default:
	}
	ls.Release()
	keep.Release()
}

// With Redis gone right after a grant, the lease is marked lost before
// Redis could let it go (a full lease after the grant was sent), not
// after: in between, another instance may already hold the lock.
func TestRedisLostBeforeExpiry(t *testing.T) {
	srv := startRedis(t)
	const lease = 3 * time.Second
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: lease, timeout: 300 * time.Millisecond})
	sent := time.Now()
	ls := redisAcquire(t, l, "/doc", lockstore.Exclusive)
	srv.Stop()
	select {
	case <-ls.Lost():
		if d := time.Since(sent); d >= lease {
			t.Fatalf("lease marked lost %s after the grant; Redis may let it go after %s", d, lease)
		}
	case <-time.After(2 * lease):
		t.Fatal("lease not marked lost while Redis was down")
	}
	ls.Release()
}

func TestRedisFencing(t *testing.T) {
	srv := startRedis(t)
	l1 := newRedisLocker(t, srv, t.Name(), redisOpts{})
	l2 := newRedisLocker(t, srv, t.Name(), redisOpts{})
	var last int64
	for i := range 10 {
		l := l1
		if i%2 == 1 {
			l = l2
		}
		ls := redisAcquire(t, l, "/f"+strconv.Itoa(i%3), lockstore.Exclusive)
		var f lockstore.Fenced = ls
		if f.Fence() <= last {
			t.Fatalf("fence %d after %d", f.Fence(), last)
		}
		last = f.Fence()
		ls.Release()
	}
}

func TestRedisUnavailable(t *testing.T) {
	srv := startRedis(t)
	const timeout = 300 * time.Millisecond
	l := newRedisLocker(t, srv, t.Name(), redisOpts{timeout: timeout, lease: time.Second})
	redisAcquire(t, l, "/u", lockstore.Exclusive).Release()
	held := redisAcquire(t, l, "/held", lockstore.Exclusive)
	// Start the subscription before the outage.
	if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "/held", Kind: lockstore.Exclusive, Wait: 10 * time.Millisecond}); err == nil {
		t.Fatal("granted twice")
	}

	srv.Stop()
	for _, wait := range []time.Duration{0, 5 * time.Second} {
		start := time.Now()
		_, err := l.Acquire(context.Background(), lockstore.Request{Key: "/u", Kind: lockstore.Exclusive, Wait: wait})
		if !errors.Is(err, lockstore.ErrStoreUnavailable) {
			t.Fatalf("wait %s: want ErrStoreUnavailable, got %v", wait, err)
		}
		if d := time.Since(start); d > 4*timeout {
			t.Fatalf("wait %s: took %s with timeout %s", wait, d, timeout)
		}
	}
	// Without renewals for a whole lease, the lease counts as lost.
	select {
	case <-held.Lost():
	case <-time.After(3 * time.Second):
		t.Fatal("lease not marked lost while Redis was down")
	}
	start := time.Now()
	held.Release() // bounded by the timeout too
	if d := time.Since(start); d > 4*timeout {
		t.Fatalf("release took %s", d)
	}

	srv.Start()
	waitFor(t, 5*time.Second, "locking to work again", func() bool {
		ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/u", Kind: lockstore.Exclusive})
		if err != nil {
			return false
		}
		ls.Release()
		return true
	})

	// Waiters are woken by notifications again: the subscription came
	// back by itself.
	l.poll = time.Minute
	l2 := newRedisLocker(t, srv, t.Name(), redisOpts{timeout: timeout, lease: time.Second})
	hold := redisAcquire(t, l2, "/n", lockstore.Exclusive)
	waitFor(t, 5*time.Second, "a notification to arrive", func() bool {
		got := make(chan time.Time, 1)
		go func() {
			ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/n", Kind: lockstore.Exclusive, Wait: 2 * time.Second})
			at := time.Now()
			if err == nil {
				ls.Release()
			}
			got <- at
		}()
		waitFor(t, 2*time.Second, "waiter", func() bool { return redisStats(t, l2).Waiting == 1 })
		released := time.Now()
		hold.Release()
		d := (<-got).Sub(released)
		hold = redisAcquire(t, l2, "/n", lockstore.Exclusive)
		return d < 300*time.Millisecond
	})
	hold.Release()
}

// Every goroutine a locker starts (its subscription, waiters, renewals,
// the client's pool) is gone after Close. Counted by label: only the
// goroutines started by this test's code.
func TestRedisNoGoroutineLeak(t *testing.T) {
	srv := startRedis(t)
	label := t.Name()
	labelled(label, func() {
		cfg := Config{Addresses: []string{srv.Addr}, Lease: caddy.Duration(time.Second)}
		client, err := NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		l, err := NewLocker(client, t.Name(), cfg, true, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		hold := redisAcquire(t, l, "/g", lockstore.Exclusive)
		// A waiter starts the subscription; let it time out.
		_, _ = l.Acquire(context.Background(), lockstore.Request{Key: "/g/x", Kind: lockstore.Shared, Wait: 300 * time.Millisecond})
		// A waiter whose client leaves while it is queued.
		ctx, cancel := context.WithCancel(context.Background())
		left := make(chan error, 1)
		go func() {
			_, err := l.Acquire(ctx, lockstore.Request{Key: "/g", Kind: lockstore.Shared, Wait: 5 * time.Second})
			left <- err
		}()
		waitFor(t, 5*time.Second, "the waiter to queue", func() bool { return redisStats(t, l).Waiting == 1 })
		cancel()
		if err := <-left; !errors.Is(err, context.Canceled) {
			t.Fatalf("the waiter whose client left: %v, want Canceled", err)
		}
		if _, n := labelledStacks(t, label); n == 0 {
			t.Fatal("no goroutine of the locker carries the test's label: the count below would prove nothing")
		}
		hold.Release()
		redisAcquire(t, l, "/g", lockstore.Exclusive) // left held: Close must cope
		l.Close()
	})
	var stacks []string
	deadline := time.Now().Add(5 * time.Second)
	for n := -1; n != 0; _, n = labelledStacks(t, label) {
		if time.Now().After(deadline) {
			stacks, _ = labelledStacks(t, label)
			t.Fatalf("goroutines started by the locker and still running after Close:\n%s", strings.Join(stacks, "\n\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The Redis table reads max_locks and max_waiters <= 0 as the defaults
// that the memory table uses (lockstore.Limits), and takes positive
// values as given.
func TestLimitsDefaults(t *testing.T) {
	client, err := NewClient(Config{Addresses: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	rl, err := NewLocker(client, t.Name(), Config{}, false, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	limits := func() (int64, int64) { return rl.maxLocks.Load(), rl.maxWaiters.Load() }
	if locks, waiters := limits(); locks != lockstore.DefaultMaxLocks || waiters != lockstore.DefaultMaxWaiters {
		t.Errorf("redis table created with 0, -1: limits %d, %d; want the defaults", locks, waiters)
	}
	rl.SetLimits(7, 3)
	if locks, waiters := limits(); locks != 7 || waiters != 3 {
		t.Errorf("redis table after SetLimits(7, 3): limits %d, %d", locks, waiters)
	}
	rl.SetLimits(-5, 0)
	if locks, waiters := limits(); locks != lockstore.DefaultMaxLocks || waiters != lockstore.DefaultMaxWaiters {
		t.Errorf("redis table after SetLimits(-5, 0): limits %d, %d; want the defaults", locks, waiters)
	}
}
