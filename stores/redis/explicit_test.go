package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/testsupport"
	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/redis/go-redis/v9"
)

// The Redis store refuses a lock of depth 1 and one of no kind, which
// the contract suite leaves to each store (the handler never asks for
// one); the rest of creating and reading a lock is the suite's
// CreateGetRemove and InvalidLocks.
func TestRedisStoreCreateGet(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	for _, bad := range []lockstore.ExplicitLock{
		{Token: "t", Root: "/a", Scope: lockstore.Exclusive, Depth: lockstore.DepthOne, Timeout: time.Second},
		{Token: "t", Root: "/a", Scope: 0, Depth: lockstore.DepthZero, Timeout: time.Second},
	} {
		if _, err := s.Create(context.Background(), bad); err == nil {
			t.Errorf("created %+v", bad)
		}
	}
}

// More locks than one script call removes or one ZSCAN page returns.
func TestRedisStoreManyLocks(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	const n = 1200
	s.SetBudget(0, n+1) // one anonymous owner holds them all
	for i := range n {
		testsupport.MustCreate(t, s, testsupport.XLock(fmt.Sprintf("/big/%04d", i), lockstore.Exclusive, lockstore.DepthZero))
	}
	testsupport.MustCreate(t, s, testsupport.XLock("/other", lockstore.Exclusive, lockstore.DepthZero))
	all, err := s.List(ctx)
	if err != nil || len(all) != n+1 {
		t.Fatalf("list: %d locks, %v; want %d", len(all), err, n+1)
	}
	for i := range n {
		if all[i].Root != fmt.Sprintf("/big/%04d", i) {
			t.Fatalf("list[%d] = %s", i, all[i].Root)
		}
	}
	_, err = s.Create(ctx, testsupport.XLock("/big", lockstore.Exclusive, lockstore.DepthInfinity))
	var ce *lockstore.LockConflictError
	if !errors.As(err, &ce) || len(ce.Conflicts) == 0 {
		t.Fatalf("an infinite lock over %d locks: %v", n, err)
	}
	removed, err := s.RemoveUnder(ctx, "/big")
	if err != nil || removed != n {
		t.Fatalf("remove under: %d %v, want %d", removed, err, n)
	}
	if all, _ = s.List(ctx); !slices.Equal(testsupport.Roots(all), []string{"/other"}) {
		t.Fatalf("after remove under: %d locks", len(all))
	}
}

// An expired lock is purged from the index, not only left out of the
// answers (which the contract suite's Expiry checks).
func TestRedisStoreExpiry(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	short := testsupport.XLock("/e", lockstore.Exclusive, lockstore.DepthInfinity)
	short.Timeout = 150 * time.Millisecond
	l := testsupport.MustCreate(t, s, short)
	testsupport.MustCreate(t, s, testsupport.XLock("/k", lockstore.Exclusive, lockstore.DepthZero))
	waitFor(t, 3*time.Second, "the lock to expire", func() bool {
		_, err := s.Get(ctx, l.Token)
		return errors.Is(err, lockstore.ErrNoSuchLock)
	})
	testsupport.MustCreate(t, s, testsupport.XLock("/e/x", lockstore.Exclusive, lockstore.DepthZero))
	c := redisClient(t, srv)
	if n, _ := c.ZCard(ctx, s.kExp).Result(); n != 2 {
		t.Fatalf("%d index entries, want 2", n)
	}
}

// Scripts retried after a lost reply (go-redis retries) change nothing
// and answer the same.
func TestRedisStoreScriptsIdempotent(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	l := testsupport.XLock("/i", lockstore.Exclusive, lockstore.DepthZero)
	first := testsupport.MustCreate(t, s, l)
	time.Sleep(5 * time.Millisecond)
	second := testsupport.MustCreate(t, s, l) // the same token again: a retry
	if !second.Created.Equal(first.Created) || !second.Expires.Equal(first.Expires) {
		t.Fatalf("retried create changed the lock: %+v / %+v", first, second)
	}
	if all, _ := s.List(ctx); len(all) != 1 {
		t.Fatalf("%d locks after a retried create", len(all))
	}
	keys := []string{s.kIdx, s.kExp, s.hashKey(l.Token), s.base + "xgone:" + l.Token}
	for i := range 2 {
		v, err := s.call(ctx, "remove", xRemoveScript, keys, "nonce-1", 10000)
		if got, derr := decodeLock(l.Token, v); err != nil || derr != nil || got.Root != "/i" {
			t.Fatalf("remove run %d: %+v %v %v", i, got, err, derr)
		}
	}
	v, err := s.call(ctx, "remove", xRemoveScript, keys, "nonce-2", 10000)
	if _, derr := decodeLock(l.Token, v); err != nil || !errors.Is(derr, lockstore.ErrNoSuchLock) {
		t.Fatalf("another call's remove: %v %v", err, derr)
	}
	if _, err := s.Get(ctx, l.Token); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("the tombstone is visible: %v", err)
	}
}

// Two nodes (two clients) see one set of locks, and every key lives under
// the zone's hash tag.
func TestRedisStoreTwoNodes(t *testing.T) {
	srv := startRedis(t)
	a, b := newRedisLockStore(t, srv, "shared"), newRedisLockStore(t, srv, "shared")
	ctx := context.Background()
	l := testsupport.MustCreate(t, a, testsupport.XLock("/doc", lockstore.Exclusive, lockstore.DepthZero))
	if _, err := b.Create(ctx, testsupport.XLock("/doc", lockstore.Shared, lockstore.DepthZero)); !errors.As(err, new(*lockstore.LockConflictError)) {
		t.Fatalf("second node: %v", err)
	}
	if g, err := b.Get(ctx, l.Token); err != nil || g.Root != "/doc" {
		t.Fatalf("second node get: %+v %v", g, err)
	}
	if _, err := b.Remove(ctx, l.Token); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(ctx, l.Token); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("first node after removal by the second: %v", err)
	}
	testsupport.MustCreate(t, a, testsupport.XLock("/doc2", lockstore.Exclusive, lockstore.DepthZero))
	keys, err := redisClient(t, srv).Keys(ctx, "*").Result() // a test may use KEYS
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "{"+DefaultKeyPrefix+":shared}:") {
			t.Errorf("key %q is outside the zone's hash tag", k)
		}
	}
}

// With Redis down every call fails as unavailable, within its timeout.
// (A call with an ended context is the contract suite's ContextEnded.)
func TestRedisStoreUnavailable(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	l := testsupport.MustCreate(t, s, testsupport.XLock("/u", lockstore.Exclusive, lockstore.DepthZero))
	srv.Stop()
	start := time.Now()
	for name, call := range map[string]func() error{
		"create": func() error {
			_, err := s.Create(ctx, testsupport.XLock("/v", lockstore.Exclusive, lockstore.DepthZero))
			return err
		},
		"refresh":      func() error { _, err := s.Refresh(ctx, l.Token, time.Minute); return err },
		"get":          func() error { _, err := s.Get(ctx, l.Token); return err },
		"remove":       func() error { _, err := s.Remove(ctx, l.Token); return err },
		"affecting":    func() error { _, err := s.Affecting(ctx, "/u", true); return err },
		"remove under": func() error { _, err := s.RemoveUnder(ctx, "/u"); return err },
		"list":         func() error { _, err := s.List(ctx); return err },
	} {
		if err := call(); !errors.Is(err, lockstore.ErrStoreUnavailable) {
			t.Errorf("%s with Redis down: %v", name, err)
		}
	}
	if d := time.Since(start); d > 7*2*300*time.Millisecond {
		t.Errorf("seven calls took %s with a 300ms timeout", d)
	}
}

// lostReply is a go-redis hook that lets the next call of one script run
// in Redis and then loses its reply, as a timeout on the way back does.
type lostReply struct {
	passHooks
	script string
	armed  atomic.Bool
}

func (h *lostReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		err := next(ctx, cmd)
		if cmd.Name() == "evalsha" && len(args) > 1 && args[1] == h.script && h.armed.CompareAndSwap(true, false) {
			return errors.New("reply lost")
		}
		return err
	}
}

// A create whose reply is lost (the lock was made, the caller got an
// error and no token) is taken back, rather than standing until its
// timeout with nobody able to unlock it.
func TestRedisCreateReplyLost(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	h := &lostReply{script: xCreateScript.Hash()}
	s.client.AddHook(h)
	if _, err := s.Create(ctx, testsupport.XLock("/warm", lockstore.Exclusive, lockstore.DepthZero)); err != nil {
		t.Fatal(err) // loads the script, so that the next create is one evalsha
	}
	h.armed.Store(true)
	l := testsupport.XLock("/a", lockstore.Exclusive, lockstore.DepthInfinity)
	if _, err := s.Create(ctx, l); !errors.Is(err, lockstore.ErrStoreUnavailable) {
		t.Fatalf("create with its reply lost: %v, want ErrStoreUnavailable", err)
	}
	waitFor(t, 5*time.Second, "the lock of the lost reply to go", func() bool {
		_, err := s.Get(ctx, l.Token)
		return errors.Is(err, lockstore.ErrNoSuchLock)
	})
	if _, err := s.Create(ctx, testsupport.XLock("/a", lockstore.Exclusive, lockstore.DepthInfinity)); err != nil {
		t.Fatalf("a new lock on the path: %v", err)
	}
}
