package caddylock

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMemLockStoreContract(t *testing.T) {
	testLockStoreContract(t, func(t *testing.T) LockStore {
		s := NewMemLockStore(0)
		t.Cleanup(s.Close)
		return s
	})
}

// testLockStoreContract checks the rules of the LockStore interface; every
// implementation runs it. newStore returns an empty store.
func testLockStoreContract(t *testing.T, newStore func(t *testing.T) LockStore) {
	ctx := context.Background()
	lock := func(root string, scope Kind, depth Depth) ExplicitLock {
		return ExplicitLock{
			Token:   NewLockToken(),
			Root:    root,
			Href:    root,
			Scope:   scope,
			Depth:   depth,
			Owner:   []byte(`<href xmlns="DAV:">mailto:a@example.com</href>`),
			Creator: "alice",
			Timeout: time.Hour,
		}
	}
	mustCreate := func(t *testing.T, s LockStore, l ExplicitLock) ExplicitLock {
		t.Helper()
		got, err := s.Create(ctx, l)
		if err != nil {
			t.Fatalf("Create %s %s depth %s: %v", l.Scope, l.Root, l.Depth, err)
		}
		return got
	}
	roots := func(ls []ExplicitLock) []string {
		var out []string
		for _, l := range ls {
			out = append(out, l.Root)
		}
		return out
	}

	t.Run("CreateGetRemove", func(t *testing.T) {
		s := newStore(t)
		want := lock("/a/b", Exclusive, DepthZero)
		before := time.Now()
		got := mustCreate(t, s, want)
		if got.Created.Before(before.Add(-time.Second)) || got.Created.After(time.Now().Add(time.Second)) {
			t.Fatalf("Created = %v, want about now", got.Created)
		}
		if d := got.Expires.Sub(got.Created); d != time.Hour {
			t.Fatalf("Expires - Created = %v, want 1h", d)
		}
		g, err := s.Get(ctx, want.Token)
		if err != nil {
			t.Fatal(err)
		}
		if g.Root != "/a/b" || g.Href != "/a/b" || g.Scope != Exclusive || g.Depth != DepthZero ||
			string(g.Owner) != string(want.Owner) || g.Creator != "alice" || g.Timeout != time.Hour {
			t.Fatalf("Get = %+v, want the fields given to Create", g)
		}
		if !g.Expires.Equal(got.Expires) {
			t.Fatalf("Get Expires %v, Create returned %v", g.Expires, got.Expires)
		}
		r, err := s.Remove(ctx, want.Token)
		if err != nil || r.Token != want.Token {
			t.Fatalf("Remove = %+v, %v", r, err)
		}
		if _, err := s.Get(ctx, want.Token); !errors.Is(err, ErrNoSuchLock) {
			t.Fatalf("Get after Remove: %v, want ErrNoSuchLock", err)
		}
		if _, err := s.Remove(ctx, want.Token); !errors.Is(err, ErrNoSuchLock) {
			t.Fatalf("second Remove: %v, want ErrNoSuchLock", err)
		}
		if _, err := s.Refresh(ctx, want.Token, time.Minute); !errors.Is(err, ErrNoSuchLock) {
			t.Fatalf("Refresh after Remove: %v, want ErrNoSuchLock", err)
		}
		if ls, err := s.List(ctx); err != nil || len(ls) != 0 {
			t.Fatalf("List after Remove = %v, %v; want none", roots(ls), err)
		}
	})

	t.Run("Conflicts", func(t *testing.T) {
		cases := []struct {
			name     string
			held     ExplicitLock
			new      ExplicitLock
			conflict bool
		}{
			{"exclusive same root", lock("/a", Exclusive, DepthZero), lock("/a", Exclusive, DepthZero), true},
			{"shared after exclusive", lock("/a", Exclusive, DepthZero), lock("/a", Shared, DepthZero), true},
			{"exclusive after shared", lock("/a", Shared, DepthZero), lock("/a", Exclusive, DepthZero), true},
			{"shared with shared", lock("/a", Shared, DepthInfinity), lock("/a", Shared, DepthInfinity), false},
			{"infinite parent covers child", lock("/a", Exclusive, DepthInfinity), lock("/a/b/c", Shared, DepthZero), true},
			{"depth-0 parent does not cover child", lock("/a", Exclusive, DepthZero), lock("/a/b", Exclusive, DepthZero), false},
			{"new infinite lock over held child", lock("/a/b", Shared, DepthZero), lock("/a", Exclusive, DepthInfinity), true},
			{"new depth-0 lock over held child", lock("/a/b", Exclusive, DepthZero), lock("/a", Exclusive, DepthZero), false},
			{"siblings", lock("/a/b", Exclusive, DepthInfinity), lock("/a/c", Exclusive, DepthInfinity), false},
			{"prefix is not a parent", lock("/a", Exclusive, DepthInfinity), lock("/ab", Exclusive, DepthInfinity), false},
			{"root lock covers all", lock("/", Exclusive, DepthInfinity), lock("/x/y", Exclusive, DepthZero), true},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				s := newStore(t)
				held := mustCreate(t, s, c.held)
				_, err := s.Create(ctx, c.new)
				var ce *LockConflictError
				if !c.conflict {
					if err != nil {
						t.Fatalf("Create: %v, want no conflict", err)
					}
					return
				}
				if !errors.As(err, &ce) {
					t.Fatalf("Create: %v, want *LockConflictError", err)
				}
				if len(ce.Conflicts) != 1 || ce.Conflicts[0].Token != held.Token || ce.Conflicts[0].Root != held.Root {
					t.Fatalf("conflicts = %+v, want the held lock", ce.Conflicts)
				}
				if _, err := s.Get(ctx, c.new.Token); !errors.Is(err, ErrNoSuchLock) {
					t.Fatalf("refused lock was added: %v", err)
				}
			})
		}
	})

	t.Run("Affecting", func(t *testing.T) {
		s := newStore(t)
		for _, l := range []ExplicitLock{
			lock("/", Shared, DepthZero),
			lock("/a", Shared, DepthInfinity),
			lock("/a", Shared, DepthZero),
			lock("/a/b", Shared, DepthZero),
			lock("/a/b/c", Shared, DepthInfinity),
			lock("/a/b/c/d", Shared, DepthZero),
			lock("/a/bb", Shared, DepthZero),
			lock("/z", Shared, DepthInfinity),
		} {
			mustCreate(t, s, l)
		}
		cases := []struct {
			key   string
			below bool
			want  []string
		}{
			{"/a/b", false, []string{"/a", "/a/b"}},
			{"/a/b", true, []string{"/a", "/a/b", "/a/b/c", "/a/b/c/d"}},
			{"/a", false, []string{"/a", "/a"}},
			{"/a/b/c/d/e", false, []string{"/a", "/a/b/c"}},
			{"/", false, []string{"/"}},
			{"/", true, []string{"/", "/a", "/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/bb", "/z"}},
			{"/q", true, nil},
			{"/z/1", true, []string{"/z"}},
		}
		for _, c := range cases {
			got, err := s.Affecting(ctx, c.key, c.below)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(roots(got), c.want) {
				t.Errorf("Affecting(%q, %v) = %v, want %v", c.key, c.below, roots(got), c.want)
			}
			if !slices.IsSortedFunc(got, func(a, b ExplicitLock) int {
				if a.Root != b.Root {
					return strings.Compare(a.Root, b.Root)
				}
				return strings.Compare(a.Token, b.Token)
			}) {
				t.Errorf("Affecting(%q, %v) not ordered by root then token", c.key, c.below)
			}
		}
		all, err := s.List(ctx)
		if err != nil || len(all) != 8 {
			t.Fatalf("List = %d locks, %v; want 8", len(all), err)
		}
	})

	t.Run("RemoveUnder", func(t *testing.T) {
		s := newStore(t)
		keep := []ExplicitLock{lock("/a", Shared, DepthInfinity), lock("/ab", Exclusive, DepthZero), lock("/c", Exclusive, DepthZero)}
		gone := []ExplicitLock{lock("/a/b", Shared, DepthZero), lock("/a/b/c", Shared, DepthZero), lock("/a/b/c/d", Shared, DepthInfinity)}
		for _, l := range append(slices.Clone(keep), gone...) {
			mustCreate(t, s, l)
		}
		n, err := s.RemoveUnder(ctx, "/a/b")
		if err != nil || n != 3 {
			t.Fatalf("RemoveUnder = %d, %v; want 3", n, err)
		}
		for _, l := range gone {
			if _, err := s.Get(ctx, l.Token); !errors.Is(err, ErrNoSuchLock) {
				t.Fatalf("lock on %s survived RemoveUnder: %v", l.Root, err)
			}
		}
		ls, _ := s.List(ctx)
		if !slices.Equal(roots(ls), []string{"/a", "/ab", "/c"}) {
			t.Fatalf("left = %v", roots(ls))
		}
		// Below-queries no longer see the removed subtree.
		if got, _ := s.Affecting(ctx, "/a", true); !slices.Equal(roots(got), []string{"/a"}) {
			t.Fatalf("Affecting after RemoveUnder = %v", roots(got))
		}
		// A new exclusive infinite lock on /a/b is now possible once
		// the shared /a lock is gone.
		if _, err := s.Remove(ctx, keep[0].Token); err != nil {
			t.Fatal(err)
		}
		mustCreate(t, s, lock("/a/b", Exclusive, DepthInfinity))
		if n, err := s.RemoveUnder(ctx, "/nothing"); err != nil || n != 0 {
			t.Fatalf("RemoveUnder of an unlocked path = %d, %v", n, err)
		}
	})

	t.Run("Refresh", func(t *testing.T) {
		s := newStore(t)
		l := lock("/r", Exclusive, DepthZero)
		l.Timeout = 150 * time.Millisecond
		created := mustCreate(t, s, l)
		r, err := s.Refresh(ctx, l.Token, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if r.Timeout != time.Hour || !r.Expires.After(created.Expires.Add(50*time.Minute)) {
			t.Fatalf("refreshed lock: timeout %v expires %v (created expiry %v)", r.Timeout, r.Expires, created.Expires)
		}
		if !r.Created.Equal(created.Created) {
			t.Fatalf("Refresh changed Created")
		}
		// Past the original timeout the lock is still there.
		time.Sleep(300 * time.Millisecond)
		if _, err := s.Get(ctx, l.Token); err != nil {
			t.Fatalf("refreshed lock expired at its old timeout: %v", err)
		}
	})

	t.Run("Expiry", func(t *testing.T) {
		s := newStore(t)
		short := lock("/e", Exclusive, DepthInfinity)
		short.Timeout = 100 * time.Millisecond
		long := lock("/f", Exclusive, DepthZero)
		mustCreate(t, s, short)
		mustCreate(t, s, long)
		waitFor(t, 5*time.Second, "the short lock to expire", func() bool {
			_, err := s.Get(ctx, short.Token)
			return errors.Is(err, ErrNoSuchLock)
		})
		for _, q := range []string{"/e", "/e/x"} {
			if got, _ := s.Affecting(ctx, q, true); len(got) != 0 {
				t.Fatalf("expired lock still affects %s: %v", q, roots(got))
			}
		}
		ls, _ := s.List(ctx)
		if !slices.Equal(roots(ls), []string{"/f"}) {
			t.Fatalf("List = %v, want only /f", roots(ls))
		}
		if _, err := s.Refresh(ctx, short.Token, time.Hour); !errors.Is(err, ErrNoSuchLock) {
			t.Fatalf("Refresh of an expired lock: %v", err)
		}
		// Its root can be locked again.
		mustCreate(t, s, lock("/e/child", Exclusive, DepthZero))
	})

	t.Run("ContextEnded", func(t *testing.T) {
		s := newStore(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		l := lock("/c", Exclusive, DepthZero)
		if _, err := s.Create(cctx, l); !errors.Is(err, context.Canceled) {
			t.Fatalf("Create with an ended context: %v", err)
		}
		if _, err := s.Affecting(cctx, "/c", true); !errors.Is(err, context.Canceled) {
			t.Fatalf("Affecting with an ended context: %v", err)
		}
		if _, err := s.Get(ctx, l.Token); !errors.Is(err, ErrNoSuchLock) {
			t.Fatalf("lock created with an ended context: %v", err)
		}
	})

	t.Run("ConcurrentExclusive", func(t *testing.T) {
		// Many goroutines race for an exclusive lock on nested roots:
		// at any time the store grants at most one of them.
		s := newStore(t)
		paths := []string{"/p", "/p/q", "/p/q/r"}
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			granted = map[string]int{}
		)
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 50 {
					l := lock(paths[(i+j)%3], Exclusive, DepthInfinity)
					if _, err := s.Create(ctx, l); err != nil {
						var ce *LockConflictError
						if !errors.As(err, &ce) {
							t.Errorf("Create: %v", err)
						}
						continue
					}
					mu.Lock()
					granted["any"]++
					if granted["any"] > 1 {
						t.Errorf("two exclusive locks on nested roots granted at once")
					}
					mu.Unlock()
					runtime.Gosched()
					mu.Lock()
					granted["any"]--
					mu.Unlock()
					if _, err := s.Remove(ctx, l.Token); err != nil {
						t.Errorf("Remove: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		if ls, _ := s.List(ctx); len(ls) != 0 {
			t.Fatalf("locks left: %v", roots(ls))
		}
	})
	// A shared lock of depth infinity conflicts with an exclusive lock
	// below its root however many shared locks come before it there.
	t.Run("SharedInfiniteOverManyShared", func(t *testing.T) {
		s := newStore(t)
		for i := range 70 {
			mustCreate(t, s, lock(fmt.Sprintf("/a/s%02d", i), Shared, DepthZero))
		}
		excl := mustCreate(t, s, lock("/a/z", Exclusive, DepthZero))
		_, err := s.Create(ctx, lock("/a", Shared, DepthInfinity))
		var ce *LockConflictError
		if !errors.As(err, &ce) || !slices.ContainsFunc(ce.Conflicts, func(l ExplicitLock) bool { return l.Token == excl.Token }) {
			t.Fatalf("shared depth-infinity lock over an exclusive lock below: %v, want a conflict with /a/z", err)
		}
	})

	// A lock that conflicts is refused as a conflict (423) even when
	// the zone is full: it could not be granted with room either, and
	// the in-flight table answers the same way.
	t.Run("ConflictInFullZone", func(t *testing.T) {
		s := newStore(t)
		s.(interface{ SetMax(int) }).SetMax(1)
		held := mustCreate(t, s, lock("/a", Exclusive, DepthInfinity))
		_, err := s.Create(ctx, lock("/a/b", Shared, DepthZero))
		var ce *LockConflictError
		if !errors.As(err, &ce) || len(ce.Conflicts) != 1 || ce.Conflicts[0].Token != held.Token {
			t.Fatalf("conflicting Create in a full zone: %v, want a conflict with the lock on /a", err)
		}
		if _, err := s.Create(ctx, lock("/b", Exclusive, DepthZero)); !errors.Is(err, ErrFull) {
			t.Fatalf("Create of a free root in a full zone: %v, want ErrFull", err)
		}
	})
}

func TestMemLockStoreExpiresWithoutCalls(t *testing.T) {
	// The timer drops expired locks even when nobody calls the store,
	// and Close stops it.
	s := NewMemLockStore(0)
	defer s.Close()
	for i := range 100 {
		_, err := s.Create(context.Background(), ExplicitLock{
			Token: NewLockToken(), Root: fmt.Sprintf("/t/%d", i), Scope: Exclusive,
			Timeout: time.Duration(50+i) * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the timer to drop every lock", func() bool { return s.Len() == 0 })
	s.mu.Lock()
	nodes := len(s.tree)
	s.mu.Unlock()
	if nodes != 0 {
		t.Fatalf("%d tree nodes left after every lock expired", nodes)
	}
}

func TestMemLockStoreFull(t *testing.T) {
	s := NewMemLockStore(2)
	defer s.Close()
	ctx := context.Background()
	var tokens []string
	for i := range 2 {
		l, err := s.Create(ctx, ExplicitLock{Token: NewLockToken(), Root: fmt.Sprintf("/%d", i), Scope: Exclusive, Timeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, l.Token)
	}
	_, err := s.Create(ctx, ExplicitLock{Token: NewLockToken(), Root: "/x", Scope: Exclusive, Timeout: time.Hour})
	if !errors.Is(err, ErrFull) {
		t.Fatalf("Create past the limit: %v, want ErrFull", err)
	}
	// Nothing was evicted.
	for _, tok := range tokens {
		if _, err := s.Get(ctx, tok); err != nil {
			t.Fatalf("a held lock was evicted: %v", err)
		}
	}
}
