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

	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/redis/go-redis/v9"
)

func TestRedisStoreCreateGet(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	want := xlock("/docs/a.txt", lockstore.Exclusive, lockstore.DepthInfinity)
	want.Href = "/docs/a%2Etxt"
	want.Creator = "alice"
	before := time.Now()
	got := mustCreate(t, s, want)
	if got.Token != want.Token || got.Root != want.Root || got.Href != want.Href || got.Scope != lockstore.Exclusive ||
		got.Depth != lockstore.DepthInfinity || string(got.Owner) != string(want.Owner) || got.Creator != "alice" || got.Timeout != time.Minute {
		t.Fatalf("created %+v\nfrom %+v", got, want)
	}
	// Times come from the Redis server's clock, here the same machine's.
	if d := got.Created.Sub(before); d < -time.Second || d > 5*time.Second {
		t.Fatalf("created at %s, test started at %s", got.Created, before)
	}
	if got.Expires.Sub(got.Created) != time.Minute {
		t.Fatalf("expires %s after creation, want 1m", got.Expires.Sub(got.Created))
	}
	again, err := s.Get(context.Background(), want.Token)
	if err != nil || !again.Created.Equal(got.Created) || again.Root != got.Root || string(again.Owner) != string(got.Owner) {
		t.Fatalf("get: %+v %v", again, err)
	}
	if _, err := s.Get(context.Background(), testToken()); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("get of an unknown token: %v", err)
	}
	for _, bad := range []lockstore.ExplicitLock{
		{Token: "t", Root: "/a", Scope: lockstore.Exclusive, Depth: lockstore.DepthOne, Timeout: time.Second},
		{Token: "t", Root: "/a", Scope: 0, Depth: lockstore.DepthZero, Timeout: time.Second},
		{Token: "", Root: "/a", Scope: lockstore.Shared, Depth: lockstore.DepthZero, Timeout: time.Second},
		{Token: "t", Root: "/a", Scope: lockstore.Shared, Depth: lockstore.DepthZero},
	} {
		if _, err := s.Create(context.Background(), bad); err == nil {
			t.Errorf("created %+v", bad)
		}
	}
}

func TestRedisStoreConflicts(t *testing.T) {
	srv := startRedis(t)
	type spec struct {
		root  string
		scope lockstore.Kind
		depth lockstore.Depth
	}
	X, S, Z, I := lockstore.Exclusive, lockstore.Shared, lockstore.DepthZero, lockstore.DepthInfinity
	for i, tc := range []struct {
		held, want spec
		conflict   bool
	}{
		{spec{"/a", X, Z}, spec{"/a", X, Z}, true},
		{spec{"/a", S, Z}, spec{"/a", S, Z}, false},
		{spec{"/a", S, Z}, spec{"/a", X, Z}, true},
		{spec{"/a", X, Z}, spec{"/a", S, I}, true},
		{spec{"/a", X, I}, spec{"/a/b", X, Z}, true},   // an infinite ancestor covers the root
		{spec{"/a", X, I}, spec{"/a/b/c", S, Z}, true}, // at any depth
		{spec{"/a", X, Z}, spec{"/a/b", X, Z}, false},  // a depth-0 ancestor does not
		{spec{"/a/b", X, Z}, spec{"/a", X, I}, true},   // an infinite lock covers what is below
		{spec{"/a/b/c", S, Z}, spec{"/a", X, I}, true},
		{spec{"/a/b", X, Z}, spec{"/a", X, Z}, false},
		{spec{"/a", S, I}, spec{"/a/b", S, I}, false}, // shared with shared
		{spec{"/a", S, I}, spec{"/a/b", X, Z}, true},
		{spec{"/", X, I}, spec{"/x", X, Z}, true},
		{spec{"/x", X, Z}, spec{"/", S, I}, true},
		{spec{"/ab", X, I}, spec{"/a", X, I}, false}, // a name prefix is not a path prefix
		{spec{"/a", X, I}, spec{"/ab", X, I}, false},
		{spec{"report", X, Z}, spec{"report", X, Z}, true}, // keys that are not paths
	} {
		name := fmt.Sprintf("%d %v", i, tc)
		s := newRedisLockStore(t, srv, fmt.Sprintf("conflicts%d", i))
		held := mustCreate(t, s, xlock(tc.held.root, tc.held.scope, tc.held.depth))
		l := xlock(tc.want.root, tc.want.scope, tc.want.depth)
		_, err := s.Create(context.Background(), l)
		var ce *lockstore.LockConflictError
		switch {
		case tc.conflict && !errors.As(err, &ce):
			t.Errorf("%s: want a conflict, got %v", name, err)
		case tc.conflict && (len(ce.Conflicts) != 1 || ce.Conflicts[0].Token != held.Token):
			t.Errorf("%s: conflicts %+v, want the held lock", name, ce.Conflicts)
		case tc.conflict:
			if _, err := s.Get(context.Background(), l.Token); !errors.Is(err, lockstore.ErrNoSuchLock) {
				t.Errorf("%s: a refused lock was added: %v", name, err)
			}
		case err != nil:
			t.Errorf("%s: want no conflict, got %v", name, err)
		}
	}
}

// Several conflicting locks are all reported, ordered by Root then Token.
func TestRedisStoreConflictList(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	var want []string
	for _, r := range []string{"/d/z", "/d/b", "/d/b", "/d"} {
		want = append(want, mustCreate(t, s, xlock(r, lockstore.Shared, lockstore.DepthZero)).Root)
	}
	mustCreate(t, s, xlock("/e", lockstore.Exclusive, lockstore.DepthZero)) // not in the way
	_, err := s.Create(context.Background(), xlock("/d", lockstore.Exclusive, lockstore.DepthInfinity))
	var ce *lockstore.LockConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("want a conflict, got %v", err)
	}
	slices.Sort(want)
	if got := roots(ce.Conflicts); !slices.Equal(got, want) {
		t.Fatalf("conflicts on %v, want %v", got, want)
	}
	if !slices.IsSortedFunc(ce.Conflicts, func(a, b lockstore.ExplicitLock) int {
		return strings.Compare(a.Root+"\x00"+a.Token, b.Root+"\x00"+b.Token)
	}) {
		t.Fatal("conflicts are not ordered by Root, then Token")
	}
}

func TestRedisStoreRefreshRemove(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	l := mustCreate(t, s, xlock("/r", lockstore.Exclusive, lockstore.DepthZero))
	r, err := s.Refresh(ctx, l.Token, time.Hour)
	if err != nil || r.Timeout != time.Hour || !r.Expires.After(l.Expires) || !r.Created.Equal(l.Created) {
		t.Fatalf("refresh: %+v %v", r, err)
	}
	if g, _ := s.Get(ctx, l.Token); !g.Expires.Equal(r.Expires) {
		t.Fatalf("get after refresh: expires %s, want %s", g.Expires, r.Expires)
	}
	if _, err := s.Refresh(ctx, testToken(), time.Hour); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("refresh of an unknown token: %v", err)
	}
	gone, err := s.Remove(ctx, l.Token)
	if err != nil || gone.Token != l.Token || gone.Root != "/r" {
		t.Fatalf("remove: %+v %v", gone, err)
	}
	if _, err := s.Remove(ctx, l.Token); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := s.Get(ctx, l.Token); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("get after remove: %v", err)
	}
	if _, err := s.Refresh(ctx, l.Token, time.Hour); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("refresh after remove: %v", err)
	}
	mustCreate(t, s, xlock("/r", lockstore.Exclusive, lockstore.DepthZero)) // the root is free again
}

func TestRedisStoreAffectingRemoveUnderList(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	for _, sp := range []struct {
		root  string
		depth lockstore.Depth
	}{{"/", lockstore.DepthZero}, {"/a", lockstore.DepthInfinity}, {"/a/b", lockstore.DepthZero}, {"/a/b", lockstore.DepthZero}, {"/a/b/c", lockstore.DepthZero}, {"/a/bc", lockstore.DepthZero}, {"/x", lockstore.DepthInfinity}, {"/a/b/d", lockstore.DepthInfinity}} {
		mustCreate(t, s, xlock(sp.root, lockstore.Shared, sp.depth))
	}
	check := func(key string, below bool, want ...string) {
		t.Helper()
		got, err := s.Affecting(ctx, key, below)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(roots(got), want) {
			t.Fatalf("affecting %s below=%v: %v, want %v", key, below, roots(got), want)
		}
		if !slices.IsSortedFunc(got, func(a, b lockstore.ExplicitLock) int {
			return strings.Compare(a.Root+"\x00"+a.Token, b.Root+"\x00"+b.Token)
		}) {
			t.Fatal("not ordered by Root, then Token")
		}
	}
	check("/a/b", false, "/a", "/a/b", "/a/b")
	check("/a/b", true, "/a", "/a/b", "/a/b", "/a/b/c", "/a/b/d")
	check("/a/b/d/e", false, "/a", "/a/b/d") // depth-0 /a/b does not cover it
	check("/a/bc", false, "/a", "/a/bc")
	check("/y", true)
	check("/", false, "/")
	check("/", true, "/", "/a", "/a/b", "/a/b", "/a/b/c", "/a/b/d", "/a/bc", "/x")

	all, err := s.List(ctx)
	if err != nil || !slices.Equal(roots(all), []string{"/", "/a", "/a/b", "/a/b", "/a/b/c", "/a/b/d", "/a/bc", "/x"}) {
		t.Fatalf("list: %v %v", roots(all), err)
	}
	if all[2].Token > all[3].Token {
		t.Fatal("list: same root not ordered by token")
	}
	n, err := s.RemoveUnder(ctx, "/a/b")
	if err != nil || n != 4 {
		t.Fatalf("remove under /a/b: %d %v, want 4", n, err)
	}
	if all, _ = s.List(ctx); !slices.Equal(roots(all), []string{"/", "/a", "/a/bc", "/x"}) {
		t.Fatalf("after remove under: %v", roots(all))
	}
	if n, err = s.RemoveUnder(ctx, "/a/b"); err != nil || n != 0 {
		t.Fatalf("second remove under: %d %v", n, err)
	}
	if n, err = s.RemoveUnder(ctx, "/"); err != nil || n != 4 {
		t.Fatalf("remove under /: %d %v, want 4", n, err)
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
		mustCreate(t, s, xlock(fmt.Sprintf("/big/%04d", i), lockstore.Exclusive, lockstore.DepthZero))
	}
	mustCreate(t, s, xlock("/other", lockstore.Exclusive, lockstore.DepthZero))
	all, err := s.List(ctx)
	if err != nil || len(all) != n+1 {
		t.Fatalf("list: %d locks, %v; want %d", len(all), err, n+1)
	}
	for i := range n {
		if all[i].Root != fmt.Sprintf("/big/%04d", i) {
			t.Fatalf("list[%d] = %s", i, all[i].Root)
		}
	}
	_, err = s.Create(ctx, xlock("/big", lockstore.Exclusive, lockstore.DepthInfinity))
	var ce *lockstore.LockConflictError
	if !errors.As(err, &ce) || len(ce.Conflicts) == 0 {
		t.Fatalf("an infinite lock over %d locks: %v", n, err)
	}
	removed, err := s.RemoveUnder(ctx, "/big")
	if err != nil || removed != n {
		t.Fatalf("remove under: %d %v, want %d", removed, err, n)
	}
	if all, _ = s.List(ctx); !slices.Equal(roots(all), []string{"/other"}) {
		t.Fatalf("after remove under: %d locks", len(all))
	}
}

func TestRedisStoreExpiry(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	short := xlock("/e", lockstore.Exclusive, lockstore.DepthInfinity)
	short.Timeout = 150 * time.Millisecond
	l := mustCreate(t, s, short)
	keep := mustCreate(t, s, xlock("/k", lockstore.Exclusive, lockstore.DepthZero))
	if _, err := s.Create(ctx, xlock("/e/x", lockstore.Exclusive, lockstore.DepthZero)); err == nil {
		t.Fatal("created under a live exclusive lock")
	}
	waitFor(t, 3*time.Second, "the lock to expire", func() bool {
		_, err := s.Get(ctx, l.Token)
		return errors.Is(err, lockstore.ErrNoSuchLock)
	})
	if got, _ := s.Affecting(ctx, "/e/x", true); len(got) != 0 {
		t.Fatalf("affecting after expiry: %v", roots(got))
	}
	if all, _ := s.List(ctx); len(all) != 1 || all[0].Token != keep.Token {
		t.Fatalf("list after expiry: %v", roots(all))
	}
	if _, err := s.Refresh(ctx, l.Token, time.Minute); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("refresh after expiry: %v", err)
	}
	mustCreate(t, s, xlock("/e/x", lockstore.Exclusive, lockstore.DepthZero))
	// The expired entry is purged from the index, not only ignored.
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
	l := xlock("/i", lockstore.Exclusive, lockstore.DepthZero)
	first := mustCreate(t, s, l)
	time.Sleep(5 * time.Millisecond)
	second := mustCreate(t, s, l) // the same token again: a retry
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
	l := mustCreate(t, a, xlock("/doc", lockstore.Exclusive, lockstore.DepthZero))
	if _, err := b.Create(ctx, xlock("/doc", lockstore.Shared, lockstore.DepthZero)); !errors.As(err, new(*lockstore.LockConflictError)) {
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
	mustCreate(t, a, xlock("/doc2", lockstore.Exclusive, lockstore.DepthZero))
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

func TestRedisStoreUnavailable(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	ctx := context.Background()
	l := mustCreate(t, s, xlock("/u", lockstore.Exclusive, lockstore.DepthZero))
	srv.Stop()
	start := time.Now()
	for name, call := range map[string]func() error{
		"create": func() error {
			_, err := s.Create(ctx, xlock("/v", lockstore.Exclusive, lockstore.DepthZero))
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
	ended, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(ended, l.Token); !errors.Is(err, context.Canceled) {
		t.Errorf("get with an ended context: %v", err)
	}
}

// Past the zone's limit, Create fails with ErrFull and evicts nothing;
// expired locks do not count.
func TestRedisStoreFull(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	s.SetMax(2)
	ctx := context.Background()
	short := xlock("/short", lockstore.Exclusive, lockstore.DepthZero)
	short.Timeout = 100 * time.Millisecond
	mustCreate(t, s, short)
	kept := mustCreate(t, s, xlock("/kept", lockstore.Exclusive, lockstore.DepthZero))
	if _, err := s.Create(ctx, xlock("/x", lockstore.Exclusive, lockstore.DepthZero)); !errors.Is(err, lockstore.ErrFull) {
		t.Fatalf("past the limit: %v, want ErrFull", err)
	}
	if _, err := s.Get(ctx, kept.Token); err != nil {
		t.Fatalf("a held lock was evicted: %v", err)
	}
	waitFor(t, 3*time.Second, "room after the short lock expires", func() bool {
		_, err := s.Create(ctx, xlock("/x", lockstore.Exclusive, lockstore.DepthZero))
		return err == nil
	})
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
	if _, err := s.Create(ctx, xlock("/warm", lockstore.Exclusive, lockstore.DepthZero)); err != nil {
		t.Fatal(err) // loads the script, so that the next create is one evalsha
	}
	h.armed.Store(true)
	l := xlock("/a", lockstore.Exclusive, lockstore.DepthInfinity)
	if _, err := s.Create(ctx, l); !errors.Is(err, lockstore.ErrStoreUnavailable) {
		t.Fatalf("create with its reply lost: %v, want ErrStoreUnavailable", err)
	}
	waitFor(t, 5*time.Second, "the lock of the lost reply to go", func() bool {
		_, err := s.Get(ctx, l.Token)
		return errors.Is(err, lockstore.ErrNoSuchLock)
	})
	if _, err := s.Create(ctx, xlock("/a", lockstore.Exclusive, lockstore.DepthInfinity)); err != nil {
		t.Fatalf("a new lock on the path: %v", err)
	}
}
