package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/redistest"
	"github.com/caddy-lock/caddy-lock/internal/testsupport"
	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// The waiting and goroutine-counting helpers shared with the handler's
// tests. (Those that take locks and make explicit ones are called from
// testsupport by name.)
var (
	waitFor        = testsupport.WaitFor
	labelled       = testsupport.Labelled
	labelledStacks = testsupport.LabelledStacks
)

const testGoroutineLabel = testsupport.GoroutineLabel

// waitParked waits until a goroutine labelled value sleeps in the function
// of this package named fn (see testsupport.WaitParked).
func waitParked(t *testing.T, value, fn string) {
	testsupport.WaitParked(t, value, "github.com/caddy-lock/caddy-lock/stores/redis."+fn)
}

type testRedis = redistest.Server

func startRedis(t testing.TB, args ...string) *testRedis { return redistest.Start(t, args...) }

// redisClient is a plain client of the test's Redis, to look at and
// disturb what the lock store keeps there.
func redisClient(t *testing.T, srv *testRedis) redis.UniversalClient {
	t.Helper()
	c, err := NewClient(Config{Addresses: []string{srv.Addr}, Timeout: caddy.Duration(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type redisOpts struct {
	hierarchy            bool
	maxLocks, maxWaiters int
	lease, timeout       time.Duration
	prefix               string
}

// newRedisLocker returns a locker on zone with its own client, as one
// Caddy node would have; both are closed when the test ends.
func newRedisLocker(t testing.TB, srv *testRedis, zone string, o redisOpts) *Locker {
	t.Helper()
	if o.lease == 0 {
		o.lease = 15 * time.Second
	}
	if o.timeout == 0 {
		o.timeout = 300 * time.Millisecond
	}
	cfg := Config{
		Addresses: []string{srv.Addr},
		KeyPrefix: o.prefix,
		Lease:     caddy.Duration(o.lease),
		Timeout:   caddy.Duration(o.timeout),
	}
	client, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	l, err := NewLocker(client, zone, cfg, o.hierarchy, o.maxLocks, o.maxWaiters)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func redisAcquire(t *testing.T, l lockstore.Locker, key string, kind lockstore.Kind) *Lease {
	t.Helper()
	return testsupport.Acquire(t, l, key, kind).(*Lease)
}

func redisStats(t *testing.T, l *Locker) Stats {
	t.Helper()
	s, err := l.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// passHooks passes dials and pipelines through: the test hooks embed it
// and have a ProcessHook of their own.
type passHooks struct{}

func (passHooks) DialHook(next redis.DialHook) redis.DialHook { return next }

func (passHooks) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// newRedisLockStore returns the explicit lock store of zone with its own
// client, as one Caddy node would have it.
func newRedisLockStore(t *testing.T, srv *testRedis, zone string) *LockStore {
	t.Helper()
	cfg := Config{Addresses: []string{srv.Addr}, Timeout: caddy.Duration(300 * time.Millisecond)}
	client, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	s, err := NewLockStore(client, zone, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func heldLocks(t *testing.T, l *Locker) map[string]lockstore.HeldLock {
	t.Helper()
	hs, err := l.HeldLocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]lockstore.HeldLock, len(hs))
	for _, h := range hs {
		if _, dup := out[h.Key]; dup {
			t.Fatalf("%s listed twice in %v", h.Key, hs)
		}
		out[h.Key] = h
	}
	return out
}
