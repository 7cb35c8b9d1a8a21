package redisstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/redis/go-redis/v9"
)

// Waiters from two nodes are granted in the order they queued. (One
// table's order is the contract suite's FIFO.)
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

// max_locks is the zone's budget, not a node's: the locks and waiters of
// two nodes fill it for both. (One table's rules are the contract suite's
// MaxLocks.)
func TestRedisMaxLocks(t *testing.T) {
	srv := startRedis(t)
	l1 := newRedisLocker(t, srv, t.Name(), redisOpts{maxLocks: 3})
	l2 := newRedisLocker(t, srv, t.Name(), redisOpts{maxLocks: 3})
	a := redisAcquire(t, l1, "/1", lockstore.Exclusive)
	b := redisAcquire(t, l2, "/2", lockstore.Exclusive)
	c := redisAcquire(t, l1, "/3", lockstore.Shared)
	for _, l := range []*Locker{l1, l2} {
		if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "/4", Kind: lockstore.Exclusive}); !errors.Is(err, lockstore.ErrFull) {
			t.Fatalf("want ErrFull, got %v", err)
		}
		// Full for a free key, and for shared locks on a key already
		// held shared.
		if _, err := l.Acquire(context.Background(), lockstore.Request{Key: "/3", Kind: lockstore.Shared}); !errors.Is(err, lockstore.ErrFull) {
			t.Fatalf("want ErrFull, got %v", err)
		}
	}
	b.Release()
	// A waiter on one node takes a place on the other's count too.
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

// A waiter that leaves the queue (its context ends) hands its place to
// the one queued behind it from another node, at once. (One table's rule
// is the contract suite's ContextEndsWhileQueued.)
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
	second := make(chan lockstore.Lease, 1)
	go func() {
		ls, err := l2.Acquire(context.Background(), lockstore.Request{Key: "/c", Kind: lockstore.Exclusive, Wait: 10 * time.Second})
		if err != nil {
			t.Error(err)
		}
		second <- ls
	}()
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
