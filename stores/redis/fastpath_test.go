package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// A shared grant repeated with the same token (go-redis sending it again
// after a lost reply) returns the first grant, even though a shared
// holder does not stand in its own way: the fast path must not grant it
// afresh with a new fence.
func TestRedisSharedGrantRepeated(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	ctx := context.Background()
	args := l.acquireArgs(lockstore.Request{Key: "/s", Kind: lockstore.Shared}, newToken(lockstore.Shared), "")
	var fences []int64
	for run := range 2 {
		r, err := l.runAcquire(ctx, args)
		if err != nil || !r.granted {
			t.Fatalf("run %d: %+v, %v", run, r, err)
		}
		fences = append(fences, r.fence)
	}
	if fences[0] != fences[1] {
		t.Fatalf("fences %v: the repeated grant was granted afresh", fences)
	}
	if s := redisStats(t, l); s.Held != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

// A free key is granted without the purge of expired entries, and a
// release that nobody waits for publishes nothing; with a waiter queued,
// the release tells it.
func TestRedisUncontendedWriteCost(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Minute})
	redisAcquire(t, l, "/warm", lockstore.Exclusive).Release() // loads the scripts
	if err := l.client.ConfigResetStat(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	redisAcquire(t, l, "/free", lockstore.Exclusive).Release()
	calls := commandCalls(t, l.client)
	if calls["zrangebyscore"] != 0 || calls["publish"] != 0 {
		t.Fatalf("an uncontended write ran %v", calls)
	}

	held := redisAcquire(t, l, "/taken", lockstore.Exclusive)
	got := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/taken", Kind: lockstore.Exclusive, Wait: 10 * time.Second})
		if err == nil {
			ls.Release()
		}
		got <- err
	}()
	waitFor(t, 5*time.Second, "the waiter to queue", func() bool { return redisStats(t, l).Waiting == 1 })
	held.Release()
	if calls := commandCalls(t, l.client); calls["publish"] == 0 {
		t.Fatalf("the release of a key waited for published nothing: %v", calls)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}
