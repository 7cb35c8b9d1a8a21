package caddylock

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

type redisOpts struct {
	hierarchy            bool
	maxLocks, maxWaiters int
	lease, timeout       time.Duration
	prefix               string
}

// newRedisLocker returns a locker on zone with its own client, as one
// Caddy node would have; both are closed when the test ends.
func newRedisLocker(t testing.TB, srv *testRedis, zone string, o redisOpts) *RedisLocker {
	t.Helper()
	if o.lease == 0 {
		o.lease = 15 * time.Second
	}
	if o.timeout == 0 {
		o.timeout = 300 * time.Millisecond
	}
	cfg := RedisConfig{
		Addresses: []string{srv.Addr},
		KeyPrefix: o.prefix,
		Lease:     caddy.Duration(o.lease),
		Timeout:   caddy.Duration(o.timeout),
	}
	client, err := NewRedisClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	l, err := NewRedisLocker(client, zone, cfg, o.hierarchy, o.maxLocks, o.maxWaiters)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func redisAcquire(t *testing.T, l lockstore.Locker, key string, kind lockstore.Kind) *RedisLease {
	t.Helper()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: kind})
	if err != nil {
		t.Fatalf("acquire %s %s: %v", kind, key, err)
	}
	return ls.(*RedisLease)
}

func redisConflict(t *testing.T, l lockstore.Locker, key string, kind lockstore.Kind) *lockstore.ConflictError {
	t.Helper()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: kind})
	var ce *lockstore.ConflictError
	if !errors.As(err, &ce) {
		if ls != nil {
			ls.Release()
		}
		t.Fatalf("acquire %s %s: want conflict, got %v", kind, key, err)
	}
	return ce
}

func redisStats(t *testing.T, l *RedisLocker) RedisStats {
	t.Helper()
	s, err := l.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRedisExclusiveConflict(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	a := redisAcquire(t, l, "/a", lockstore.Exclusive)
	time.Sleep(20 * time.Millisecond)
	ce := redisConflict(t, l, "/a", lockstore.Exclusive)
	if ce.Key != "/a" || ce.Kind != lockstore.Exclusive || ce.Below || ce.HeldFor < 10*time.Millisecond || ce.RetryAfter < time.Second {
		t.Fatalf("conflict = %+v", ce)
	}
	if ce := redisConflict(t, l, "/a", lockstore.Shared); ce.Kind != lockstore.Exclusive {
		t.Fatalf("conflict = %+v", ce)
	}
	// Other keys are independent.
	redisAcquire(t, l, "/b", lockstore.Exclusive).Release()
	a.Release()
	redisAcquire(t, l, "/a", lockstore.Exclusive).Release()
}

func TestRedisShared(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	s1 := redisAcquire(t, l, "/s", lockstore.Shared)
	s2 := redisAcquire(t, l, "/s", lockstore.Shared)
	if ce := redisConflict(t, l, "/s", lockstore.Exclusive); ce.Kind != lockstore.Shared || ce.Key != "/s" {
		t.Fatalf("conflict = %+v", ce)
	}
	s1.Release()
	redisConflict(t, l, "/s", lockstore.Exclusive)
	s2.Release()
	x := redisAcquire(t, l, "/s", lockstore.Exclusive)
	if ce := redisConflict(t, l, "/s", lockstore.Shared); ce.Kind != lockstore.Exclusive {
		t.Fatalf("conflict = %+v", ce)
	}
	x.Release()
	if s := redisStats(t, l); s.Held != 0 || s.Waiting != 0 || s.Local != 0 {
		t.Fatalf("stats after release = %+v", s)
	}
}

func TestRedisHierarchy(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{hierarchy: true})

	// Ancestor held blocks descendants.
	a := redisAcquire(t, l, "/a", lockstore.Exclusive)
	if ce := redisConflict(t, l, "/a/b/c", lockstore.Shared); ce.Key != "/a" || ce.Kind != lockstore.Exclusive || ce.Below {
		t.Fatalf("conflict = %+v", ce)
	}
	redisAcquire(t, l, "/ab", lockstore.Exclusive).Release() // not below /a
	redisAcquire(t, l, "/b/a", lockstore.Exclusive).Release()
	redisConflict(t, l, "/", lockstore.Shared)
	a.Release()

	// Descendant held blocks ancestors, reported as Below on the key.
	c := redisAcquire(t, l, "/a/b/c", lockstore.Exclusive)
	for _, k := range []string{"/a/b", "/a", "/"} {
		if ce := redisConflict(t, l, k, lockstore.Shared); ce.Key != k || !ce.Below || ce.Kind != lockstore.Exclusive {
			t.Fatalf("%s: conflict = %+v", k, ce)
		}
	}
	redisAcquire(t, l, "/a/b/d", lockstore.Exclusive).Release() // sibling
	redisAcquire(t, l, "/a/bc", lockstore.Exclusive).Release()
	c.Release()

	// Shared locks nest; an exclusive one does not fit under or over them.
	s := redisAcquire(t, l, "/a", lockstore.Shared)
	s2 := redisAcquire(t, l, "/a/b", lockstore.Shared)
	redisConflict(t, l, "/a/b/c", lockstore.Exclusive)
	if ce := redisConflict(t, l, "/", lockstore.Exclusive); !ce.Below || ce.Kind != lockstore.Shared {
		t.Fatalf("conflict = %+v", ce)
	}
	s.Release()
	s2.Release()
	redisAcquire(t, l, "/", lockstore.Exclusive).Release()

	// Keys that are not rooted at "/" have no hierarchy.
	x := redisAcquire(t, l, "x", lockstore.Exclusive)
	redisAcquire(t, l, "x/y", lockstore.Exclusive).Release()
	x.Release()
}

func TestRedisNoHierarchy(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	a := redisAcquire(t, l, "/a", lockstore.Exclusive)
	b := redisAcquire(t, l, "/a/b", lockstore.Exclusive)
	r := redisAcquire(t, l, "/", lockstore.Exclusive)
	a.Release()
	b.Release()
	r.Release()
}

func TestRedisDoubleRelease(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	a := redisAcquire(t, l, "/k", lockstore.Exclusive)
	a.Release()
	a.Release()
	b := redisAcquire(t, l, "/k", lockstore.Exclusive)
	a.Release() // must not free b's lock
	redisConflict(t, l, "/k", lockstore.Exclusive)
	b.Release()
	if s := redisStats(t, l); s.Held != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

// Two nodes hammer a few keys; an in-test counter checks that exclusive
// holders never overlap with any other holder of the same key.
func TestRedisTwoNodesExclusion(t *testing.T) {
	srv := startRedis(t)
	nodes := []*RedisLocker{
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

// waitFor polls cond until it holds or d has passed.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRedisFIFOAcrossNodes(t *testing.T) {
	srv := startRedis(t)
	l1 := newRedisLocker(t, srv, t.Name(), redisOpts{})
	l2 := newRedisLocker(t, srv, t.Name(), redisOpts{})
	hold := redisAcquire(t, l1, "/f", lockstore.Exclusive)

	const n = 6
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range n {
		l := l1
		if i%2 == 1 {
			l = l2
		}
		kind := lockstore.Exclusive
		if i == 2 || i == 3 {
			kind = lockstore.Shared // consecutive shared waiters may run together
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/f", Kind: kind, Wait: 10 * time.Second})
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			ls.Release()
		}()
		waitFor(t, 2*time.Second, "waiter to queue", func() bool { return redisStats(t, l1).Waiting == int64(i+1) })
	}
	// A newcomer does not overtake the queue, even once the lock is free.
	hold.Release()
	wg.Wait()
	for i, v := range order {
		if i != v && !(i >= 2 && i <= 3 && v >= 2 && v <= 3) {
			t.Fatalf("grant order %v, want arrival order", order)
		}
	}
}

func TestRedisNoOvertaking(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{hierarchy: true})
	parent := redisAcquire(t, l, "/p", lockstore.Exclusive)
	done := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/p/c", Kind: lockstore.Exclusive, Wait: 5 * time.Second})
		if err == nil {
			ls.Release()
		}
		done <- err
	}()
	waitFor(t, 2*time.Second, "waiter to queue", func() bool { return redisStats(t, l).Waiting == 1 })
	// The queue on /p/c is not empty: no newcomer gets /p/c, even shared.
	if ce := redisConflict(t, l, "/p/c", lockstore.Shared); ce.Key != "/p" {
		t.Fatalf("conflict = %+v", ce)
	}
	parent.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Where only the queue stands in the way: a reader arriving while a
	// writer waits behind another reader would be granted beside that
	// reader, and is refused instead.
	r1 := redisAcquire(t, l, "/q", lockstore.Shared)
	writer := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/q", Kind: lockstore.Exclusive, Wait: 5 * time.Second})
		if err == nil {
			ls.Release()
		}
		writer <- err
	}()
	waitFor(t, 2*time.Second, "the writer to queue", func() bool { return redisStats(t, l).Waiting == 1 })
	if ce := redisConflict(t, l, "/q", lockstore.Shared); ce.Key != "/q" {
		t.Fatalf("conflict = %+v", ce)
	}
	r1.Release()
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
}

// Through Caddy with the Redis store: a reader (shared GET) that arrives
// while a writer is queued behind another reader queues behind the
// writer; granted at once beside the first reader, it would keep the
// writer waiting for as long as readers keep coming. The backend sees
// them in arrival order.
func TestRedisHandlerReaderQueuesBehindWriter(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	url := startCaddy(t, redisSite(srv, "rqueue", "", "shared GET\n\twait 10s"), b)
	l := redisZoneLocker(t, "rqueue")
	queued := func(n int64) {
		t.Helper()
		waitFor(t, 5*time.Second, fmt.Sprintf("%d waiters in Redis", n), func() bool { return redisStats(t, l).Waiting == n })
	}
	r1 := holdWrite(t, b, http.MethodGet, url+"/doc", "r1")
	w := make(chan result, 1)
	go func() { w <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold": "w"}) }()
	queued(1)
	r2 := make(chan result, 1)
	go func() { r2 <- do(http.DefaultClient, http.MethodGet, url+"/doc", map[string]string{"X-Hold": "r2"}) }()
	// Granted beside r1, r2 would reach the backend and never queue.
	queued(2)
	b.open("r1")
	b.waitStarted(t, "w")
	b.open("w")
	b.waitStarted(t, "r2")
	b.open("r2")
	for name, c := range map[string]<-chan result{"r1": r1, "w": w, "r2": r2} {
		if r := <-c; r.status != http.StatusOK {
			t.Fatalf("%s: %d %v %s", name, r.status, r.err, r.body)
		}
	}
}

func TestRedisWaitTimeout(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	hold := redisAcquire(t, l, "/w", lockstore.Exclusive)
	defer hold.Release()
	start := time.Now()
	_, err := l.Acquire(context.Background(), lockstore.Request{Key: "/w", Kind: lockstore.Exclusive, Wait: 300 * time.Millisecond})
	var ce *lockstore.ConflictError
	if !errors.As(err, &ce) || ce.Key != "/w" {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Fatalf("returned after %s", d)
	}
	if s := redisStats(t, l); s.Waiting != 0 {
		t.Fatalf("waiter left behind: %+v", s)
	}
}

func TestRedisCancelWhileWaiting(t *testing.T) {
	srv := startRedis(t)
	l1 := newRedisLocker(t, srv, t.Name(), redisOpts{})
	l2 := newRedisLocker(t, srv, t.Name(), redisOpts{})
	hold := redisAcquire(t, l1, "/c", lockstore.Exclusive)

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := l1.Acquire(ctx, lockstore.Request{Key: "/c", Kind: lockstore.Exclusive, Wait: 10 * time.Second})
		first <- err
	}()
	waitFor(t, 2*time.Second, "first waiter", func() bool { return redisStats(t, l1).Waiting == 1 })
	second := acquireAsync(t, l2, "/c", lockstore.Exclusive, 10*time.Second)
	waitFor(t, 2*time.Second, "second waiter", func() bool { return redisStats(t, l1).Waiting == 2 })

	start := time.Now()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first waiter: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("canceled waiter took %s to leave", d)
	}
	waitFor(t, time.Second, "first waiter to leave the queue", func() bool { return redisStats(t, l1).Waiting == 1 })
	hold.Release()
	select {
	case ls := <-second:
		if ls == nil {
			t.Fatal("second waiter failed")
		}
		ls.Release()
	case <-time.After(3 * time.Second):
		t.Fatal("second waiter not granted after the first left")
	}
}

// A release on another node wakes a waiter through the subscription, not
// the fallback poll (disabled here by a long interval).
func TestRedisWakeByNotification(t *testing.T) {
	srv := startRedis(t)
	l1 := newRedisLocker(t, srv, t.Name(), redisOpts{hierarchy: true})
	l2 := newRedisLocker(t, srv, t.Name(), redisOpts{hierarchy: true})
	l2.poll = time.Minute
	for _, tc := range []struct{ held, want string }{{"/n", "/n"}, {"/n", "/n/x"}, {"/n/x/y", "/n"}} {
		hold := redisAcquire(t, l1, tc.held, lockstore.Exclusive)
		got := make(chan time.Time, 1)
		go func() {
			ls, err := l2.Acquire(context.Background(), lockstore.Request{Key: tc.want, Kind: lockstore.Exclusive, Wait: 10 * time.Second})
			if err != nil {
				t.Error(err)
				got <- time.Time{}
				return
			}
			at := time.Now()
			ls.Release()
			got <- at
		}()
		waitFor(t, 2*time.Second, "waiter", func() bool { return redisStats(t, l1).Waiting == 1 })
		released := time.Now()
		hold.Release()
		select {
		case at := <-got:
			if d := at.Sub(released); d > 400*time.Millisecond || at.IsZero() {
				t.Fatalf("%+v: granted %s after release", tc, d)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%+v: waiter not woken", tc)
		}
	}
}

func TestRedisMaxWaiters(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{maxWaiters: 2})
	hold := redisAcquire(t, l, "/m", lockstore.Exclusive)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = l.Acquire(ctx, lockstore.Request{Key: "/m", Kind: lockstore.Exclusive, Wait: 10 * time.Second})
		}()
	}
	waitFor(t, 2*time.Second, "waiters", func() bool { return redisStats(t, l).Waiting == 2 })
	start := time.Now()
	_, err := l.Acquire(context.Background(), lockstore.Request{Key: "/m", Kind: lockstore.Exclusive, Wait: 10 * time.Second})
	var ce *lockstore.ConflictError
	if !errors.As(err, &ce) || time.Since(start) > time.Second {
		t.Fatalf("third waiter: %v after %s", err, time.Since(start))
	}
	// Other keys have their own queue.
	hold2 := redisAcquire(t, l, "/m2", lockstore.Exclusive)
	go func() {
		_, _ = l.Acquire(ctx, lockstore.Request{Key: "/m2", Kind: lockstore.Exclusive, Wait: 10 * time.Second})
	}()
	waitFor(t, 2*time.Second, "waiter on /m2", func() bool { return redisStats(t, l).Waiting == 3 })
	cancel()
	wg.Wait()
	hold.Release()
	hold2.Release()
}

func TestRedisMaxLocks(t *testing.T) {
	srv := startRedis(t)
	l1 := newRedisLocker(t, srv, t.Name(), redisOpts{maxLocks: 3})
	l2 := newRedisLocker(t, srv, t.Name(), redisOpts{maxLocks: 3})
	a := redisAcquire(t, l1, "/1", lockstore.Exclusive)
	b := redisAcquire(t, l2, "/2", lockstore.Exclusive)
	c := redisAcquire(t, l1, "/3", lockstore.Shared)
	for _, l := range []*RedisLocker{l1, l2} {
		if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "/4", Kind: lockstore.Exclusive}); !errors.Is(err, lockstore.ErrFull) {
			t.Fatalf("want ErrFull, got %v", err)
		}
		// Full for a free key, and for shared locks on a key already
		// held shared.
		if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "/3", Kind: lockstore.Shared}); !errors.Is(err, lockstore.ErrFull) {
			t.Fatalf("want ErrFull, got %v", err)
		}
	}
	// Nothing was evicted.
	if s := redisStats(t, l1); s.Held != 3 {
		t.Fatalf("stats = %+v", s)
	}
	b.Release()
	for _, k := range []string{"/1", "/3"} {
		redisConflict(t, l2, k, lockstore.Exclusive)
	}
	// A waiter takes a place too.
	go func() {
		ls, err := l2.Acquire(context.Background(), lockstore.Request{Key: "/1", Kind: lockstore.Exclusive, Wait: 5 * time.Second})
		if err == nil {
			ls.Release()
		}
	}()
	waitFor(t, 2*time.Second, "waiter", func() bool { return redisStats(t, l1).Waiting == 1 })
	if _, err := l1.Acquire(context.Background(), lockstore.Request{Key: "/5", Kind: lockstore.Exclusive}); !errors.Is(err, lockstore.ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
	a.Release()
	c.Release()
	waitFor(t, 2*time.Second, "empty table", func() bool { s := redisStats(t, l1); return s.Held == 0 && s.Waiting == 0 })
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
	redisConflict(t, l2, "/r", lockstore.Shared)
	redisConflict(t, l2, "/r2", lockstore.Exclusive)
	for _, ls := range []*RedisLease{a, b} {
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
	var held []*RedisLease
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
	if c := redisConflict(t, l, "/next", lockstore.Exclusive); c.RetryAfter != 2*time.Second {
		t.Fatalf("RetryAfter = %v after one hold of 1.5s, want 2s", c.RetryAfter)
	}
}

func TestRedisQueuedLease(t *testing.T) {
	l := newRedisLocker(t, startRedis(t), t.Name(), redisOpts{})
	assertQueuedLease(t, l, func() {
		waitFor(t, 5*time.Second, "the waiter to queue", func() bool { return redisStats(t, l).Waiting == 1 })
	})
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

// Fencing numbers strictly increase within one primary even when the
// server clock is behind the last number issued: a clock stepped back
// (an NTP correction, a primary whose clock ran ahead before it handed
// over), stood for here by a zone counter a day ahead of the clock. A
// grant that took the clock alone would hand the backend a number below
// one it has already accepted. Through Caddy, as the backend sees it.
func TestRedisFencingAboveTheClock(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	url := startCaddy(t, redisSite(srv, "rfenceclock", "", "fence_header X-Lock-Fence"), b)
	fence := func() int64 {
		t.Helper()
		r := mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
		f, err := strconv.ParseInt(r.header.Get("X-Got-Fence"), 10, 64)
		if err != nil {
			t.Fatalf("the backend got fence %q: %v", r.header.Get("X-Got-Fence"), err)
		}
		return f
	}
	first := fence()
	ahead := first + int64(24*time.Hour/time.Microsecond)
	c := redisClient(t, srv)
	meta := "{" + DefaultRedisKeyPrefix + ":rfenceclock}:meta"
	if err := c.HSet(context.Background(), meta, "fence", strconv.FormatInt(ahead, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	last := ahead
	for range 3 {
		f := fence()
		if f <= last {
			t.Fatalf("fence %d after %d: a grant went below the zone's last number", f, last)
		}
		last = f
	}
}

// go-redis may send a script again after a lost reply: a second run with
// the same tokens must neither grant twice nor fail.
func TestRedisScriptIdempotent(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	ctx := context.Background()
	tok := newToken(lockstore.Exclusive)
	args := l.acquireArgs(lockstore.Request{Key: "/i", Kind: lockstore.Exclusive}, tok, "")
	r1, err := l.runAcquire(ctx, args)
	if err != nil || !r1.granted {
		t.Fatalf("first run: %+v, %v", r1, err)
	}
	r2, err := l.runAcquire(ctx, args)
	if err != nil || !r2.granted || r2.fence != r1.fence {
		t.Fatalf("second run: %+v, %v (first fence %d)", r2, err, r1.fence)
	}
	if s := redisStats(t, l); s.Held != 1 {
		t.Fatalf("stats = %+v", s)
	}
	// A queued waiter keeps one place when its attempt is repeated.
	wtok := newToken(lockstore.Exclusive)
	wargs := l.acquireArgs(lockstore.Request{Key: "/i", Kind: lockstore.Exclusive}, newToken(lockstore.Exclusive), wtok)
	for range 2 {
		r, err := l.runAcquire(ctx, wargs)
		if err != nil || r.granted || !r.queued {
			t.Fatalf("waiter run: %+v, %v", r, err)
		}
	}
	if s := redisStats(t, l); s.Waiting != 1 {
		t.Fatalf("stats = %+v", s)
	}
	l.leave("/i", wtok)
	l.leave("/i", wtok)
	keys := l.holderKeys()
	for i, want := range []int64{1, 0} {
		n, err := releaseScript.Run(ctx, l.client, keys, "/i\x00"+tok, "/i", l.channel).Int64()
		if err != nil || n != want {
			t.Fatalf("release run %d: %d, %v", i, n, err)
		}
	}
	if s := redisStats(t, l); s.Held != 0 || s.Waiting != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func commandCalls(t *testing.T, c redis.UniversalClient) map[string]int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, m := range regexp.MustCompile(`cmdstat_(\w+):calls=(\d+)`).FindAllStringSubmatch(info, -1) {
		calls[m[1]], _ = strconv.Atoi(m[2])
	}
	return calls
}

// An uncontended acquire and its release each cost one script call.
func TestRedisOneRoundTrip(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Minute})
	redisAcquire(t, l, "/warm", lockstore.Exclusive).Release() // loads the scripts
	ctx := context.Background()
	if err := l.client.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	ls := redisAcquire(t, l, "/one", lockstore.Exclusive)
	calls := commandCalls(t, l.client)
	if calls["evalsha"] != 1 || calls["eval"] != 0 {
		t.Fatalf("acquire: command stats %v", calls)
	}
	ls.Release()
	calls = commandCalls(t, l.client)
	if calls["evalsha"] != 2 || calls["eval"] != 0 {
		t.Fatalf("release: command stats %v", calls)
	}
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

// testGoroutineLabel is the pprof label under which a test runs code
// whose goroutines it then counts: goroutines inherit their creator's
// labels, so these are the ones that code started, directly or not, and
// no others (not those of earlier tests still winding down).
const testGoroutineLabel = "caddylock_test"

// labelled runs fn with goroutine label value, which the goroutines it
// starts inherit.
func labelled(value string, fn func()) {
	pprof.Do(context.Background(), pprof.Labels(testGoroutineLabel, value), func(context.Context) { fn() })
}

// labelledStacks returns the stacks of the live goroutines labelled
// value (see labelled), one entry per group of identical stacks, and how
// many goroutines there are.
func labelledStacks(t testing.TB, value string) (stacks []string, n int) {
	t.Helper()
	var buf strings.Builder
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		t.Fatal(err)
	}
	mark := fmt.Sprintf("%q:%q", testGoroutineLabel, value)
	for _, group := range strings.Split(buf.String(), "\n\n") {
		if !strings.Contains(group, "# labels: {") || !strings.Contains(group, mark) {
			continue
		}
		k := -1
		for _, line := range strings.Split(group, "\n") {
			if count, _, ok := strings.Cut(line, " @ "); ok {
				k, _ = strconv.Atoi(count)
				break
			}
		}
		if k < 0 {
			t.Fatalf("goroutine profile group without a count: %q", group)
		}
		stacks = append(stacks, group)
		n += k
	}
	return stacks, n
}

// waitParked waits until a goroutine labelled value sits in time.Sleep in
// a function of this package whose name contains fn: a poll loop that
// has looked at its condition and found it not yet met.
func waitParked(t *testing.T, value, fn string) {
	t.Helper()
	what := "a goroutine of " + fn
	if fn == "" {
		what = "a goroutine of this package"
	}
	waitFor(t, 5*time.Second, what+" to poll and wait (it closed what it should wait for?)", func() bool {
		stacks, _ := labelledStacks(t, value)
		for _, s := range stacks {
			if strings.Contains(s, "time.Sleep") && strings.Contains(s, "github.com/caddy-lock/caddy-lock."+fn) {
				return true
			}
		}
		return false
	})
}

// Every goroutine a locker starts (its subscription, waiters, renewals,
// the client's pool) is gone after Close. Counted by label: only the
// goroutines started by this test's code.
func TestRedisNoGoroutineLeak(t *testing.T) {
	srv := startRedis(t)
	label := t.Name()
	labelled(label, func() {
		cfg := RedisConfig{Addresses: []string{srv.Addr}, Lease: caddy.Duration(time.Second)}
		client, err := NewRedisClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		l, err := NewRedisLocker(client, t.Name(), cfg, true, 0, 0)
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

// Two hierarchical nodes on nested keys: an in-test table of holders,
// entered after a grant and left before the release, must never see two
// conflicting holders.
func TestRedisTwoNodesHierarchy(t *testing.T) {
	srv := startRedis(t)
	o := redisOpts{hierarchy: true, timeout: 2 * time.Second, lease: 10 * time.Second}
	nodes := []*RedisLocker{newRedisLocker(t, srv, t.Name(), o), newRedisLocker(t, srv, t.Name(), o)}
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
	if _, err := NewRedisClient(RedisConfig{}); err == nil {
		t.Error("client without addresses")
	}
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	for _, tc := range []struct {
		zone string
		cfg  RedisConfig
	}{
		{"a}b", RedisConfig{}},
		{"z", RedisConfig{KeyPrefix: "{p"}},
		{"z", RedisConfig{Lease: caddy.Duration(time.Second), Timeout: caddy.Duration(time.Second)}},
	} {
		if l, err := NewRedisLocker(client, tc.zone, tc.cfg, false, 0, 0); err == nil {
			l.Close()
			t.Errorf("%q %+v: no error", tc.zone, tc.cfg)
		}
	}
	l, err := NewRedisLocker(client, "z", RedisConfig{}, false, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.lease != DefaultRedisLease || l.timeout != DefaultRedisTimeout || l.kExp != "{caddy-lock:z}:exp" {
		t.Errorf("defaults: lease %s timeout %s key %s", l.lease, l.timeout, l.kExp)
	}
	if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "a\x00b", Kind: lockstore.Exclusive}); err == nil {
		t.Error("key with NUL accepted")
	}
	if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "/a", Kind: 7}); err == nil {
		t.Error("bad kind accepted")
	}
}

// A full table still reports a conflict as a conflict (423, not 503) when
// the request would not queue, in Redis as in memory; a request that
// would queue is refused as full, since its waiter needs a place.
func TestFullTableReportsConflict(t *testing.T) {
	srv := startRedis(t)
	for name, l := range map[string]lockstore.Locker{
		"memory": NewMemLocker(false, 2, 0),
		"redis":  newRedisLocker(t, srv, t.Name(), redisOpts{maxLocks: 2}),
	} {
		t.Run(name, func(t *testing.T) {
			a := mustAcquire(t, l, "/a", lockstore.Exclusive)
			b := mustAcquire(t, l, "/b", lockstore.Shared)
			if ce := mustConflict(t, l, "/a", lockstore.Shared); ce.Key != "/a" || ce.Kind != lockstore.Exclusive {
				t.Fatalf("conflict = %+v", ce)
			}
			mustConflict(t, l, "/b", lockstore.Exclusive)
			for _, req := range []lockstore.Request{
				{Key: "/c", Kind: lockstore.Exclusive},
				{Key: "/b", Kind: lockstore.Shared},
				{Key: "/a", Kind: lockstore.Exclusive, Wait: time.Second},
			} {
				if ls, err := l.Acquire(context.Background(), req); !errors.Is(err, lockstore.ErrFull) {
					if ls != nil {
						ls.Release()
					}
					t.Fatalf("%+v: %v, want ErrFull", req, err)
				}
			}
			a.Release()
			b.Release()
		})
	}
}

// passHooks passes dials and pipelines through: the test hooks embed it
// and have a ProcessHook of their own.
type passHooks struct{}

func (passHooks) DialHook(next redis.DialHook) redis.DialHook { return next }

func (passHooks) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// lateAcquire is a go-redis hook that makes the next acquire script call
// arrive late: the caller gets no answer (as when its reply is lost), and
// the very same call reaches Redis only after the first leave script of
// the abandoned attempt has run (and found nothing to do), as a command
// held up on the network would.
type lateAcquire struct {
	passHooks
	armed   atomic.Bool
	late    atomic.Pointer[[]any]
	raw     redis.UniversalClient
	arrived chan error
}

func (h *lateAcquire) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if cmd.Name() != "evalsha" || len(args) < 2 {
			return next(ctx, cmd)
		}
		switch args[1] {
		case acquireScript.Hash():
			if h.armed.CompareAndSwap(true, false) {
				a := append([]any(nil), args...)
				h.late.Store(&a)
				return errors.New("reply lost")
			}
		case leaveScript.Hash():
			err := next(ctx, cmd)
			if err != nil {
				return err
			}
			if a := h.late.Swap(nil); a != nil {
				h.arrived <- h.raw.Do(context.Background(), (*a)...).Err()
			}
			return nil
		}
		return next(ctx, cmd)
	}
}

// An abandoned acquire whose call reaches Redis after the abandon's first
// clean-up leaves no waiter queued: a stale head would keep a free key's
// queue from moving until its entry expired.
func TestRedisAbandonLateWaiter(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: 2 * time.Second, timeout: 200 * time.Millisecond})
	// Long enough that only the abandon can take the entry out.
	l.waiterTTL = time.Minute
	other := newRedisLocker(t, srv, t.Name(), redisOpts{})
	hold := redisAcquire(t, other, "/late", lockstore.Exclusive)
	hook := &lateAcquire{raw: redisClient(t, srv), arrived: make(chan error, 1)}
	// Loaded, so that the leave is the one EVALSHA the hook waits for.
	if err := leaveScript.Load(context.Background(), hook.raw).Err(); err != nil {
		t.Fatal(err)
	}
	l.client.AddHook(hook)
	hook.armed.Store(true)
	_, err := l.Acquire(context.Background(), lockstore.Request{Key: "/late", Kind: lockstore.Exclusive, Wait: 10 * time.Second})
	if !errors.Is(err, lockstore.ErrStoreUnavailable) {
		t.Fatalf("acquire: %v, want ErrStoreUnavailable", err)
	}
	select {
	case err := <-hook.arrived:
		if err != nil {
			t.Fatalf("late acquire call: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the abandoned attempt did not leave the queue")
	}
	waitFor(t, 5*time.Second, "the late waiter to be taken out", func() bool { return redisStats(t, l).Waiting == 0 })
	hold.Release()
	redisAcquire(t, other, "/late", lockstore.Exclusive).Release()
}

// lockOutcome describes the result of an acquire for comparing stores.
// The kind of a conflict below the key is left out: with several locks
// below, the memory store reports the strongest and Redis the first.
func lockOutcome(err error) string {
	var ce *lockstore.ConflictError
	switch {
	case err == nil:
		return "granted"
	case errors.As(err, &ce) && ce.Below:
		return "conflict below " + ce.Key
	case errors.As(err, &ce):
		return "conflict " + ce.Kind.String() + " on " + ce.Key
	case errors.Is(err, lockstore.ErrFull):
		return "full"
	}
	return "error: " + err.Error()
}

// Random sequences of acquires and releases, run on both stores side by
// side with small limits, have the same outcomes step by step.
func TestRedisMatchesMemory(t *testing.T) {
	srv := startRedis(t)
	keys := []string{"/", "/a", "/a/b", "/a/b/c", "/a/c", "/b", "/ab", "/a/bc", "//x", "a", "/a/b/c/d"}
	for _, hier := range []bool{false, true} {
		for seed := range 40 {
			rng := mrand.New(mrand.NewPCG(uint64(seed), 1))
			maxLocks := 3 + rng.IntN(5)
			mem := NewMemLocker(hier, maxLocks, 0)
			rl := newRedisLocker(t, srv, fmt.Sprintf("%s-%v-%d", t.Name(), hier, seed), redisOpts{hierarchy: hier, maxLocks: maxLocks})
			var held [][2]lockstore.Lease
			var steps []string
			for range 60 {
				if len(held) > 0 && rng.IntN(3) == 0 {
					i := rng.IntN(len(held))
					held[i][0].Release()
					held[i][1].Release()
					held = append(held[:i], held[i+1:]...)
					steps = append(steps, fmt.Sprintf("release #%d", i))
					continue
				}
				req := lockstore.Request{Key: keys[rng.IntN(len(keys))], Kind: lockstore.Shared}
				if rng.IntN(2) == 0 {
					req.Kind = lockstore.Exclusive
				}
				ml, merr := mem.Acquire(context.Background(), req)
				rl2, rerr := rl.Acquire(context.Background(), req)
				mo, ro := lockOutcome(merr), lockOutcome(rerr)
				steps = append(steps, fmt.Sprintf("%s %s: %s", req.Kind, req.Key, mo))
				if mo != ro {
					t.Fatalf("hierarchy %v, max_locks %d: Redis answered %q, memory:\n%s", hier, maxLocks, ro, strings.Join(steps, "\n"))
				}
				if merr == nil {
					held = append(held, [2]lockstore.Lease{ml, rl2})
				}
			}
			for _, ls := range held {
				ls[0].Release()
				ls[1].Release()
			}
		}
	}
}

// netInput is the number of bytes srv has received from all its clients.
func netInput(t *testing.T, c redis.UniversalClient) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`total_net_input_bytes:(\d+)`).FindStringSubmatch(info)
	if m == nil {
		t.Fatalf("no total_net_input_bytes in INFO stats:\n%s", info)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// deepRedisKey is a "/"-rooted key of depth segments of seg bytes each.
func deepRedisKey(depth, seg int) string {
	return strings.Repeat("/"+strings.Repeat("s", seg-1), depth)
}

// bytesPerAcquire is what Redis receives for one uncontended acquire of
// key (scripts loaded), as INFO counts it, less what the INFO call costs.
func bytesPerAcquire(t *testing.T, l *RedisLocker, key string) (int64, *RedisLease) {
	t.Helper()
	before := netInput(t, l.client)
	idle := netInput(t, l.client) - before // one INFO call
	before = netInput(t, l.client)
	ls := redisAcquire(t, l, key, lockstore.Exclusive)
	return netInput(t, l.client) - before - idle, ls
}

// A deep key reaches Redis once per attempt, not with each of its
// ancestors in full: a key of 250 segments within the key limit costs
// about its own length, where sending the ancestors cost ~125 times that.
func TestRedisDeepKeySentOnce(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{hierarchy: true, lease: time.Minute})
	redisAcquire(t, l, "/warm", lockstore.Exclusive).Release() // loads the scripts
	key := deepRedisKey(250, 16)                               // 4000 bytes
	n, ls := bytesPerAcquire(t, l, key)
	t.Logf("acquire of a %d-byte key of 250 segments: %d bytes to Redis", len(key), n)
	if max := int64(len(key) + 1024); n > max {
		t.Fatalf("acquiring a %d-byte key sent %d bytes to Redis, want at most %d", len(key), n, max)
	}
	if ls.Key() != key {
		t.Fatalf("a key within the limit was locked as %q", ls.Key())
	}
	// The script still finds the conflicts on ancestors and below.
	redisConflict(t, l, key[:len(key)/2], lockstore.Exclusive)
	redisConflict(t, l, key+"/below", lockstore.Shared)
	ls.Release()
}

// A key longer than RedisMaxKeyBytes is locked as its longest ancestor
// within the limit: the bytes Redis gets (and the work of the script)
// stay bounded, and two such keys under that ancestor conflict, which is
// safe, while a write beside it passes.
func TestRedisLongKeyCut(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{hierarchy: true, lease: time.Minute})
	redisAcquire(t, l, "/warm", lockstore.Exclusive).Release()
	key := deepRedisKey(200, 75) // 15 000 bytes, as a path within Caddy's default header limit
	n, ls := bytesPerAcquire(t, l, key)
	t.Logf("acquire of a %d-byte key of 200 segments: %d bytes to Redis", len(key), n)
	if max := int64(RedisMaxKeyBytes + 1024); n > max {
		t.Fatalf("acquiring a %d-byte key sent %d bytes to Redis, want at most %d", len(key), n, max)
	}
	want := key[:strings.LastIndexByte(key[:RedisMaxKeyBytes+1], '/')]
	if ls.Key() != want {
		t.Fatalf("a %d-byte key was locked as %d bytes, want its %d-byte ancestor", len(key), len(ls.Key()), len(want))
	}
	other := want + deepRedisKey(100, 100)
	if ce := redisConflict(t, l, other, lockstore.Shared); ce.Key != want {
		t.Fatalf("another key cut to the same ancestor conflicts on %d bytes, want %d", len(ce.Key), len(want))
	}
	redisConflict(t, l, want, lockstore.Shared)
	redisAcquire(t, l, "/beside"+deepRedisKey(3, 75), lockstore.Exclusive).Release()
	ls.Release()
	redisAcquire(t, l, other, lockstore.Exclusive).Release()
}

func TestCutKey(t *testing.T) {
	for _, c := range []struct {
		key  string
		max  int
		want string
		cut  bool
	}{
		{"/a/b/c", 10, "/a/b/c", false},
		{"/a/b/c", 5, "/a/b", true},
		{"/a/b/c", 4, "/a/b", true},
		{"/a/b/c", 3, "/a", true},
		{"/abcdef", 3, "/", true},
		{"/a/", 2, "/a", true},
		{"abcdef", 3, "abcdef", false},
	} {
		got, cut := cutKey(c.key, c.max)
		if got != c.want || cut != c.cut {
			t.Errorf("cutKey(%q, %d) = %q, %v; want %q, %v", c.key, c.max, got, cut, c.want, c.cut)
		}
		if cut && !lockstore.Below(c.key, got) {
			t.Errorf("cutKey(%q, %d) = %q is not an ancestor", c.key, c.max, got)
		}
	}
}

// The explicit lock store, too, derives ancestors in its scripts: a deep
// key costs a write's check and a LOCK about its own length, not the sum
// of its ancestors'; and the ancestors are still found.
func TestRedisStoreDeepKeySentOnce(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	c := redisClient(t, srv)
	ctx := context.Background()
	key := deepRedisKey(250, 16) // 4000 bytes
	top := mustCreate(t, s, xlock(key[:16], lockstore.Exclusive, lockstore.DepthInfinity))
	if _, err := s.Affecting(ctx, "/warm", true); err != nil { // loads the script
		t.Fatal(err)
	}
	before := netInput(t, c)
	idle := netInput(t, c) - before
	before = netInput(t, c)
	ls, err := s.Affecting(ctx, key, true)
	n := netInput(t, c) - before - idle
	t.Logf("explicit locks affecting a %d-byte key of 250 segments: %d bytes to Redis", len(key), n)
	if err != nil || len(ls) != 1 || ls[0].Token != top.Token {
		t.Fatalf("affecting %d-byte key: %v, %v; want the lock on its ancestor", len(key), roots(ls), err)
	}
	// The key and the bounds of the range below it.
	if max := int64(3*len(key) + 1024); n > max {
		t.Fatalf("checking a %d-byte key sent %d bytes to Redis, want at most %d", len(key), n, max)
	}
	l := xlock(key, lockstore.Shared, lockstore.DepthZero)
	l.Token = "deep-token"
	if _, err := s.Create(ctx, l); !errors.As(err, new(*lockstore.LockConflictError)) {
		t.Fatalf("LOCK below an exclusive infinite lock: %v, want a conflict", err)
	}
}
