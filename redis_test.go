package caddylock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/testsupport"
	"github.com/caddy-lock/caddy-lock/lockstore"
	redisstore "github.com/caddy-lock/caddy-lock/stores/redis"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// The helpers shared with the Redis store's tests: waiting, counting
// goroutines, taking locks and making explicit ones.
var (
	waitFor        = testsupport.WaitFor
	labelled       = testsupport.Labelled
	labelledStacks = testsupport.LabelledStacks
	mustAcquire    = testsupport.Acquire
	mustConflict   = testsupport.Conflict
	xlock          = testsupport.XLock
	mustCreate     = testsupport.MustCreate
	roots          = testsupport.Roots
)

// waitParked waits until a goroutine labelled value sleeps in a function
// of this module whose name (after the module path) starts with fn, such
// as ".(*Handler).ServeHTTP"; "" means any.
func waitParked(t *testing.T, value, fn string) {
	testsupport.WaitParked(t, value, "github.com/caddy-lock/caddy-lock"+fn)
}

type redisOpts struct {
	hierarchy            bool
	maxLocks, maxWaiters int
	lease, timeout       time.Duration
	prefix               string
}

// newRedisLocker returns a locker on zone with its own client, as one
// Caddy node would have; both are closed when the test ends.
func newRedisLocker(t testing.TB, srv *testRedis, zone string, o redisOpts) *redisstore.Locker {
	t.Helper()
	if o.lease == 0 {
		o.lease = 15 * time.Second
	}
	if o.timeout == 0 {
		o.timeout = 300 * time.Millisecond
	}
	cfg := redisstore.Config{
		Addresses: []string{srv.Addr},
		KeyPrefix: o.prefix,
		Lease:     caddy.Duration(o.lease),
		Timeout:   caddy.Duration(o.timeout),
	}
	client, err := redisstore.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	l, err := redisstore.NewLocker(client, zone, cfg, o.hierarchy, o.maxLocks, o.maxWaiters)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func redisAcquire(t *testing.T, l lockstore.Locker, key string, kind lockstore.Kind) *redisstore.Lease {
	t.Helper()
	return mustAcquire(t, l, key, kind).(*redisstore.Lease)
}

// newRedisLockStore returns the explicit lock store of zone with its own
// client, as one Caddy node would have it.
func newRedisLockStore(t *testing.T, srv *testRedis, zone string) *redisstore.LockStore {
	t.Helper()
	cfg := redisstore.Config{Addresses: []string{srv.Addr}, Timeout: caddy.Duration(300 * time.Millisecond)}
	client, err := redisstore.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	s, err := redisstore.NewLockStore(client, zone, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
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
	meta := "{" + redisstore.DefaultKeyPrefix + ":rfenceclock}:meta"
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
			mem := newMemLocker(hier, maxLocks, 0)
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

// A zone with store redis keeps its explicit locks in Redis: a lock made
// through the zone of a running Caddy is seen by another node's store.
func TestRedisStoreZoneTables(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	startCaddy(t, redisSite(srv, "rzone", "", ""), b)
	var z *zone
	zones.Range(func(k, v any) bool {
		if strings.HasPrefix(k.(string), "rzone\x00") {
			z = v.(*zone)
		}
		return true
	})
	if z == nil || z.explicit == nil {
		t.Fatalf("zone rzone: %+v", z)
	}
	if _, ok := z.locker.(*redisstore.Locker); !ok {
		t.Fatalf("zone rzone's locker is a %T", z.locker)
	}
	l := mustCreate(t, z.explicit, xlock("/doc", lockstore.Exclusive, lockstore.DepthInfinity))
	other := newRedisLockStore(t, srv, "rzone")
	if got, err := other.Affecting(context.Background(), "/doc/page", false); err != nil || len(got) != 1 || got[0].Token != l.Token {
		t.Fatalf("the other node sees %v, %v", roots(got), err)
	}
}

// The two stores give the same answers to the same random operations on
// keys that are prefixes of one another, the root included, in zones
// small enough to fill up.
func TestLockStoresAgree(t *testing.T) {
	srv := startRedis(t)
	ctx := context.Background()
	keys := []string{"/", "/a", "/ab", "/a/b", "/a/bc", "/a/b/c", "/ab/c", "/b"}
	// describe renders a result without the parts a store is free to
	// word or time differently (error texts, timestamps).
	describe := func(ls []lockstore.ExplicitLock, err error) string {
		var ce *lockstore.LockConflictError
		switch {
		case errors.As(err, &ce):
			ls, err = ce.Conflicts, errors.New("conflict")
		case errors.Is(err, lockstore.ErrFull):
			err = lockstore.ErrFull
		}
		s := fmt.Sprint(err)
		for _, l := range ls {
			s += fmt.Sprintf(" %s:%s:%s:%s", l.Root, l.Token, l.Scope, l.Depth)
		}
		return s
	}
	one := func(l lockstore.ExplicitLock, err error) string {
		if err != nil {
			return describe(nil, err)
		}
		return describe([]lockstore.ExplicitLock{l}, nil)
	}
	for seed := range uint64(60) {
		rng := rand.New(rand.NewPCG(seed, 1))
		limit := 3 + int(seed%8)
		mem := newMemLockStore(limit)
		t.Cleanup(mem.Close)
		rs := newRedisLockStore(t, srv, fmt.Sprintf("agree-%d", seed))
		rs.SetMax(limit)
		var tokens []string
		for step := range 200 {
			var op, a, b string
			switch rng.IntN(4) {
			case 0, 1:
				scope, depth := lockstore.Shared, lockstore.DepthZero
				if rng.IntN(2) == 0 {
					scope = lockstore.Exclusive
				}
				if rng.IntN(2) == 0 {
					depth = lockstore.DepthInfinity
				}
				l := xlock(keys[rng.IntN(len(keys))], scope, depth)
				l.Timeout = time.Hour
				op = fmt.Sprintf("Create %s %s depth %s", l.Root, scope, depth)
				a, b = one(mem.Create(ctx, l)), one(rs.Create(ctx, l))
				tokens = append(tokens, l.Token)
			case 2:
				key, below := keys[rng.IntN(len(keys))], rng.IntN(2) == 0
				op = fmt.Sprintf("Affecting %s below %v", key, below)
				a, b = describe(mem.Affecting(ctx, key, below)), describe(rs.Affecting(ctx, key, below))
			case 3:
				if len(tokens) > 0 && rng.IntN(2) == 0 {
					tok := tokens[rng.IntN(len(tokens))]
					op = "Remove " + tok
					a, b = one(mem.Remove(ctx, tok)), one(rs.Remove(ctx, tok))
					break
				}
				key := keys[rng.IntN(len(keys))]
				op = "RemoveUnder " + key
				n1, err1 := mem.RemoveUnder(ctx, key)
				n2, err2 := rs.RemoveUnder(ctx, key)
				a, b = fmt.Sprint(n1, err1), fmt.Sprint(n2, err2)
			}
			la, lb := describe(mem.List(ctx)), describe(rs.List(ctx))
			if a != b || la != lb {
				t.Fatalf("seed %d, step %d, %s:\nmemory: %s\nredis:  %s\nthen listing\nmemory: %s\nredis:  %s", seed, step, op, a, b, la, lb)
			}
		}
	}
}

// redisZoneBase starts the names of the Redis keys of zone (with the
// default key prefix), as the store names them (see stores/redis).
func redisZoneBase(zone string) string { return "{" + redisstore.DefaultKeyPrefix + ":" + zone + "}:" }

// redisClientOf is a plain client of the Redis that a store block (such as
// inEachStore gives) names in its address line.
func redisClientOf(t *testing.T, store string) redis.UniversalClient {
	t.Helper()
	f := strings.Fields(store)
	i := slices.Index(f, "address")
	if i < 0 || i+1 >= len(f) {
		t.Fatalf("no address in store block %q", store)
	}
	return redisClient(t, &testRedis{Addr: f[i+1]})
}

func redisStats(t *testing.T, l *redisstore.Locker) redisstore.Stats {
	t.Helper()
	s, err := l.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}
