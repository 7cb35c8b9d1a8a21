package redisstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// Each node lists the locks that any node of the zone holds, with their
// kind, holders, grant time and waiters; a dead node's expired lease is
// left out before anything purges it; a released lock is gone.
func TestRedisHeldLocks(t *testing.T) {
	srv := startRedis(t)
	o := redisOpts{lease: 700 * time.Millisecond, timeout: 300 * time.Millisecond}
	a, b := newRedisLocker(t, srv, t.Name(), o), newRedisLocker(t, srv, t.Name(), o)
	dead := newRedisLocker(t, srv, t.Name(), o)

	before := time.Now()
	redisAcquire(t, dead, "/dead", lockstore.Exclusive)
	x := redisAcquire(t, a, "/x", lockstore.Exclusive)
	s1 := redisAcquire(t, a, "/s", lockstore.Shared)
	s2 := redisAcquire(t, b, "/s", lockstore.Shared)
	after := time.Now()
	if h, ok := heldLocks(t, b)["/dead"]; !ok || h.Kind != lockstore.Exclusive || h.Holders != 1 {
		t.Fatalf("/dead listed as %+v (%v) while its lease runs", h, ok)
	}
	dead.Close() // stops renewing; the lease stays in Redis until purged
	// Only a grant purges expired leases, and none runs meanwhile.
	waitFor(t, 3*time.Second, "the dead node's lease to run out", func() bool { _, ok := heldLocks(t, b)["/dead"]; return !ok })
	if n := redisStats(t, a).Held; n != 4 {
		t.Fatalf("Redis has %d holders, want 4 with the dead one not yet purged", n)
	}
	// A waiter from node b queues on /x.
	waited := make(chan error, 1)
	go func() {
		ls, err := b.Acquire(context.Background(), lockstore.Request{Key: "/x", Kind: lockstore.Shared, Wait: 10 * time.Second})
		if err == nil {
			ls.Release()
		}
		waited <- err
	}()
	waitFor(t, 2*time.Second, "the waiter to queue", func() bool { return redisStats(t, a).Waiting == 1 })

	for _, l := range []*Locker{a, b} {
		got := heldLocks(t, l)
		if len(got) != 2 {
			t.Fatalf("listing %v, want /x and /s", got)
		}
		if h := got["/x"]; h.Kind != lockstore.Exclusive || h.Holders != 1 || h.Waiting != 1 {
			t.Errorf("/x listed as %+v, want exclusive, 1 holder, 1 waiting", h)
		}
		if h := got["/s"]; h.Kind != lockstore.Shared || h.Holders != 2 || h.Waiting != 0 {
			t.Errorf("/s listed as %+v, want shared, 2 holders", h)
		}
		for _, h := range got {
			// The grant time is Redis's clock, the same host's here.
			if h.Since.Before(before.Add(-time.Second)) || h.Since.After(after.Add(time.Second)) {
				t.Errorf("%s held since %s, granted between %s and %s", h.Key, h.Since, before, after)
			}
		}
	}

	x.Release()
	if err := <-waited; err != nil {
		t.Fatalf("the waiter: %v", err)
	}
	s1.Release()
	s2.Release()
	if got := heldLocks(t, a); len(got) != 0 {
		t.Fatalf("listing after every release: %v", got)
	}
}

// A zone larger than one ZSCAN step is listed whole, each key once.
func TestRedisHeldLocksPages(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	const n = 3*listPage + 7
	for i := range n {
		ls := redisAcquire(t, l, fmt.Sprintf("/p/%d", i), lockstore.Exclusive)
		t.Cleanup(ls.Release)
	}
	got := heldLocks(t, l)
	if len(got) != n {
		t.Fatalf("listed %d locks, want %d", len(got), n)
	}
	for i := range n {
		if h, ok := got[fmt.Sprintf("/p/%d", i)]; !ok || h.Holders != 1 {
			t.Fatalf("/p/%d listed as %+v (%v)", i, h, ok)
		}
	}
}

// With Redis down the listing fails within its timeout, as unavailable.
func TestRedisHeldLocksUnavailable(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{timeout: 200 * time.Millisecond})
	redisAcquire(t, l, "/a", lockstore.Exclusive).Release()
	srv.Stop()
	start := time.Now()
	_, err := l.HeldLocks(context.Background())
	if !errors.Is(err, lockstore.ErrStoreUnavailable) {
		t.Fatalf("listing with Redis down: %v, want ErrStoreUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("listing with Redis down took %s with a 200ms timeout", d)
	}
}
