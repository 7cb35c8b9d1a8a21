package storetest

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

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// OpenLockStore returns an empty explicit lock store of a zone of its
// own, with the default limits; the function closes what it opened with
// t.Cleanup.
type OpenLockStore func(t *testing.T) lockstore.LockStore

// LockStore runs the contract of lockstore.LockStore on the stores that
// open returns, one subtest per rule.
func LockStore(t *testing.T, open OpenLockStore) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, OpenLockStore)
	}{
		{"CreateGetRemove", storeCreateGetRemove},
		{"InvalidLocks", storeInvalidLocks},
		{"Conflicts", storeConflicts},
		{"ConflictList", storeConflictList},
		{"SharedInfiniteOverManyShared", storeSharedInfiniteOverManyShared},
		{"Affecting", storeAffecting},
		{"List", storeList},
		{"RemoveUnder", storeRemoveUnder},
		{"Refresh", storeRefresh},
		{"Expiry", storeExpiry},
		{"ContextEnded", storeContextEnded},
		{"ConcurrentExclusive", storeConcurrentExclusive},
		{"MaxLocks", storeMaxLocks},
		{"ConflictInFullZone", storeConflictInFullZone},
		{"LocksPerOwner", storeLocksPerOwner},
		{"LockBytes", storeLockBytes},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open) })
	}
}

var ctx = context.Background()

// xlock is a lock to create, with a fresh token and an hour's timeout.
func xlock(root string, scope lockstore.Kind, depth lockstore.Depth) lockstore.ExplicitLock {
	return lockstore.ExplicitLock{
		Token:   newToken(),
		Root:    root,
		Href:    root,
		Scope:   scope,
		Depth:   depth,
		Owner:   []byte(`<D:href xmlns:D="DAV:">mailto:a@example.com</D:href>`),
		Creator: "alice",
		Timeout: time.Hour,
	}
}

func mustCreate(t *testing.T, s lockstore.LockStore, l lockstore.ExplicitLock) lockstore.ExplicitLock {
	t.Helper()
	got, err := s.Create(ctx, l)
	if err != nil {
		t.Fatalf("Create %s %s depth %s: %v", l.Scope, l.Root, l.Depth, err)
	}
	return got
}

func roots(ls []lockstore.ExplicitLock) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Root)
	}
	return out
}

// sorted reports whether ls is in the order of LockStore's lists: by
// Root, then Token.
func sorted(ls []lockstore.ExplicitLock) bool {
	return slices.IsSortedFunc(ls, func(a, b lockstore.ExplicitLock) int {
		if c := strings.Compare(a.Root, b.Root); c != 0 {
			return c
		}
		return strings.Compare(a.Token, b.Token)
	})
}

func mustList(t *testing.T, s lockstore.LockStore) []lockstore.ExplicitLock {
	t.Helper()
	ls, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !sorted(ls) {
		t.Fatalf("List = %v, not ordered by root then token", roots(ls))
	}
	return ls
}

// gone fails the test unless the store holds no lock with token.
func gone(t *testing.T, s lockstore.LockStore, token, what string) {
	t.Helper()
	if _, err := s.Get(ctx, token); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("Get of %s: %v, want ErrNoSuchLock", what, err)
	}
}

// limitOf returns the limit err names, "" when it is no
// *ExplicitLimitError; such an error must also be ErrFull.
func limitOf(t *testing.T, err error) (string, int64) {
	t.Helper()
	var lim *lockstore.ExplicitLimitError
	if !errors.As(err, &lim) {
		return "", 0
	}
	if !errors.Is(err, lockstore.ErrFull) {
		t.Fatalf("%v is not ErrFull", err)
	}
	return lim.Limit, lim.Max
}

// refused fails the test unless Create of l is refused for limit.
func refused(t *testing.T, s lockstore.LockStore, l lockstore.ExplicitLock, limit string, max int64) {
	t.Helper()
	_, err := s.Create(ctx, l)
	if got, m := limitOf(t, err); got != limit || m != max {
		t.Fatalf("Create %s by %q: %v, want refused for %s (%d)", l.Root, l.Creator, err, limit, max)
	}
	gone(t, s, l.Token, "a refused lock")
}

// createOnceRoom creates l, retrying while the store refuses it for a
// limit: for room that a lock's expiry is about to give back.
func createOnceRoom(t *testing.T, s lockstore.LockStore, l lockstore.ExplicitLock, what string) lockstore.ExplicitLock {
	t.Helper()
	var got lockstore.ExplicitLock
	waitFor(t, what, func() bool {
		var err error
		got, err = s.Create(ctx, l)
		if err == nil {
			return true
		}
		if limit, _ := limitOf(t, err); limit == "" {
			t.Fatalf("Create %s: %v", l.Root, err)
		}
		return false
	})
	return got
}

func storeCreateGetRemove(t *testing.T, open OpenLockStore) {
	s := open(t)
	want := xlock("/a/b", lockstore.Exclusive, lockstore.DepthInfinity)
	want.Href = "/a/%62"
	before := time.Now()
	got := mustCreate(t, s, want)
	// A store's clock may be another host's: a second of slack.
	if got.Created.Before(before.Add(-time.Second)) || got.Created.After(time.Now().Add(time.Second)) {
		t.Fatalf("Created = %v, want about now", got.Created)
	}
	if d := got.Expires.Sub(got.Created); d != time.Hour {
		t.Fatalf("Expires - Created = %v, want 1h", d)
	}
	same := func(what string, g lockstore.ExplicitLock) {
		t.Helper()
		if g.Token != want.Token || g.Root != "/a/b" || g.Href != "/a/%62" || g.Scope != lockstore.Exclusive ||
			g.Depth != lockstore.DepthInfinity || string(g.Owner) != string(want.Owner) || g.Creator != "alice" ||
			g.Timeout != time.Hour || !g.Created.Equal(got.Created) || !g.Expires.Equal(got.Expires) {
			t.Fatalf("%s = %+v, want %+v", what, g, got)
		}
	}
	same("Create", got)
	g, err := s.Get(ctx, want.Token)
	if err != nil {
		t.Fatal(err)
	}
	same("Get", g)
	gone(t, s, newToken(), "an unknown token")
	if _, err := s.Refresh(ctx, newToken(), time.Hour); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("Refresh of an unknown token: %v, want ErrNoSuchLock", err)
	}
	if _, err := s.Remove(ctx, newToken()); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("Remove of an unknown token: %v, want ErrNoSuchLock", err)
	}
	r, err := s.Remove(ctx, want.Token)
	if err != nil {
		t.Fatalf("Remove: %v", err)
	}
	same("Remove", r)
	gone(t, s, want.Token, "a removed lock")
	if _, err := s.Remove(ctx, want.Token); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("second Remove: %v, want ErrNoSuchLock", err)
	}
	if _, err := s.Refresh(ctx, want.Token, time.Minute); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("Refresh after Remove: %v, want ErrNoSuchLock", err)
	}
	if ls := mustList(t, s); len(ls) != 0 {
		t.Fatalf("List after Remove = %v; want none", roots(ls))
	}
	// The root is free again.
	mustCreate(t, s, xlock("/a/b", lockstore.Exclusive, lockstore.DepthInfinity))
}

// A lock without a token or a positive timeout is refused and not added.
// (Whether a store also refuses a depth other than 0 and infinity, or a
// kind other than shared and exclusive, is not part of the contract: the
// handler never asks for one.)
func storeInvalidLocks(t *testing.T, open OpenLockStore) {
	s := open(t)
	for i, bad := range []lockstore.ExplicitLock{
		{Token: "", Scope: lockstore.Shared, Depth: lockstore.DepthZero, Timeout: time.Second},
		{Token: newToken(), Scope: lockstore.Shared, Depth: lockstore.DepthZero},
		{Token: newToken(), Scope: lockstore.Shared, Depth: lockstore.DepthZero, Timeout: -time.Second},
	} {
		bad.Root = fmt.Sprintf("/bad%d", i)
		if _, err := s.Create(ctx, bad); err == nil {
			t.Errorf("created %+v", bad)
		}
	}
	if ls := mustList(t, s); len(ls) != 0 {
		t.Fatalf("invalid locks were added: %v", roots(ls))
	}
}

func storeConflicts(t *testing.T, open OpenLockStore) {
	X, S, Z, I := lockstore.Exclusive, lockstore.Shared, lockstore.DepthZero, lockstore.DepthInfinity
	for _, c := range []struct {
		name     string
		held     lockstore.ExplicitLock
		new      lockstore.ExplicitLock
		conflict bool
	}{
		{"exclusive same root", xlock("/a", X, Z), xlock("/a", X, Z), true},
		{"shared after exclusive", xlock("/a", X, Z), xlock("/a", S, Z), true},
		{"shared infinite after exclusive", xlock("/a", X, Z), xlock("/a", S, I), true},
		{"exclusive after shared", xlock("/a", S, Z), xlock("/a", X, Z), true},
		{"shared with shared", xlock("/a", S, I), xlock("/a", S, I), false},
		{"shared with shared below", xlock("/a", S, I), xlock("/a/b", S, I), false},
		{"infinite parent covers child", xlock("/a", X, I), xlock("/a/b", X, Z), true},
		{"infinite parent covers any depth", xlock("/a", X, I), xlock("/a/b/c", S, Z), true},
		{"shared infinite parent, exclusive child", xlock("/a", S, I), xlock("/a/b", X, Z), true},
		{"depth-0 parent does not cover child", xlock("/a", X, Z), xlock("/a/b", X, Z), false},
		{"new infinite lock over held child", xlock("/a/b", S, Z), xlock("/a", X, I), true},
		{"new infinite lock over held grandchild", xlock("/a/b/c", S, Z), xlock("/a", X, I), true},
		{"new depth-0 lock over held child", xlock("/a/b", X, Z), xlock("/a", X, Z), false},
		{"siblings", xlock("/a/b", X, I), xlock("/a/c", X, I), false},
		{"prefix is not a parent", xlock("/a", X, I), xlock("/ab", X, I), false},
		{"prefix is not a child", xlock("/ab", X, I), xlock("/a", X, I), false},
		{"root lock covers all", xlock("/", X, I), xlock("/x/y", X, Z), true},
		{"new root lock over all", xlock("/x", X, Z), xlock("/", S, I), true},
		{"keys that are not paths", xlock("report", X, Z), xlock("report", X, Z), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := open(t)
			held := mustCreate(t, s, c.held)
			_, err := s.Create(ctx, c.new)
			if !c.conflict {
				if err != nil {
					t.Fatalf("Create: %v, want no conflict", err)
				}
				return
			}
			var ce *lockstore.LockConflictError
			if !errors.As(err, &ce) {
				t.Fatalf("Create: %v, want *LockConflictError", err)
			}
			if len(ce.Conflicts) != 1 || ce.Conflicts[0].Token != held.Token || ce.Conflicts[0].Root != held.Root {
				t.Fatalf("conflicts = %+v, want the held lock", ce.Conflicts)
			}
			gone(t, s, c.new.Token, "a refused lock")
		})
	}
}

// Several conflicting locks are all reported, ordered by Root then Token.
func storeConflictList(t *testing.T, open OpenLockStore) {
	s := open(t)
	var want []string
	for _, r := range []string{"/d/z", "/d/b", "/d/b", "/d"} {
		want = append(want, mustCreate(t, s, xlock(r, lockstore.Shared, lockstore.DepthZero)).Root)
	}
	mustCreate(t, s, xlock("/e", lockstore.Exclusive, lockstore.DepthZero)) // not in the way
	_, err := s.Create(ctx, xlock("/d", lockstore.Exclusive, lockstore.DepthInfinity))
	var ce *lockstore.LockConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("Create: %v, want a conflict", err)
	}
	slices.Sort(want)
	if got := roots(ce.Conflicts); !slices.Equal(got, want) || !sorted(ce.Conflicts) {
		t.Fatalf("conflicts on %v, want %v ordered by root then token", got, want)
	}
}

// A shared lock of depth infinity conflicts with an exclusive lock below
// its root however many shared locks come before it there.
func storeSharedInfiniteOverManyShared(t *testing.T, open OpenLockStore) {
	s := open(t)
	for i := range 70 {
		mustCreate(t, s, xlock(fmt.Sprintf("/a/s%02d", i), lockstore.Shared, lockstore.DepthZero))
	}
	excl := mustCreate(t, s, xlock("/a/z", lockstore.Exclusive, lockstore.DepthZero))
	_, err := s.Create(ctx, xlock("/a", lockstore.Shared, lockstore.DepthInfinity))
	var ce *lockstore.LockConflictError
	if !errors.As(err, &ce) || !slices.ContainsFunc(ce.Conflicts, func(l lockstore.ExplicitLock) bool { return l.Token == excl.Token }) {
		t.Fatalf("shared depth-infinity lock over an exclusive lock below: %v, want a conflict with /a/z", err)
	}
}

func storeAffecting(t *testing.T, open OpenLockStore) {
	s := open(t)
	for _, l := range []lockstore.ExplicitLock{
		xlock("/", lockstore.Shared, lockstore.DepthZero),
		xlock("/a", lockstore.Shared, lockstore.DepthInfinity),
		xlock("/a", lockstore.Shared, lockstore.DepthZero),
		xlock("/a/b", lockstore.Shared, lockstore.DepthZero),
		xlock("/a/b/c", lockstore.Shared, lockstore.DepthInfinity),
		xlock("/a/b/c/d", lockstore.Shared, lockstore.DepthZero),
		xlock("/a/bb", lockstore.Shared, lockstore.DepthZero),
		xlock("/z", lockstore.Shared, lockstore.DepthInfinity),
	} {
		mustCreate(t, s, l)
	}
	for _, c := range []struct {
		key   string
		below bool
		want  []string
	}{
		{"/a/b", false, []string{"/a", "/a/b"}},
		{"/a/b", true, []string{"/a", "/a/b", "/a/b/c", "/a/b/c/d"}},
		{"/a", false, []string{"/a", "/a"}},
		{"/a/b/c/d/e", false, []string{"/a", "/a/b/c"}},
		{"/a/bb", false, []string{"/a", "/a/bb"}},
		{"/", false, []string{"/"}},
		{"/", true, []string{"/", "/a", "/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/bb", "/z"}},
		{"/q", true, nil},
		{"/z/1", true, []string{"/z"}},
	} {
		got, err := s.Affecting(ctx, c.key, c.below)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(roots(got), c.want) {
			t.Errorf("Affecting(%q, %v) = %v, want %v", c.key, c.below, roots(got), c.want)
		}
		if !sorted(got) {
			t.Errorf("Affecting(%q, %v) not ordered by root then token", c.key, c.below)
		}
	}
}

// List returns every lock, by root then token, also past one page of a
// store that lists in pages.
func storeList(t *testing.T, open OpenLockStore) {
	s := open(t)
	if ls := mustList(t, s); len(ls) != 0 {
		t.Fatalf("an empty store lists %v", roots(ls))
	}
	const n = 60
	s.SetLimits(0, 0, 2*n)
	for i := range n {
		mustCreate(t, s, xlock(fmt.Sprintf("/l/%03d", n-1-i), lockstore.Shared, lockstore.DepthZero))
		mustCreate(t, s, xlock(fmt.Sprintf("/l/%03d", n-1-i), lockstore.Shared, lockstore.DepthZero))
	}
	ls := mustList(t, s)
	if len(ls) != 2*n {
		t.Fatalf("List: %d locks, want %d", len(ls), 2*n)
	}
	for i := range n {
		if want := fmt.Sprintf("/l/%03d", i); ls[2*i].Root != want || ls[2*i+1].Root != want {
			t.Fatalf("List[%d] on %s, want %s", 2*i, ls[2*i].Root, want)
		}
	}
}

func storeRemoveUnder(t *testing.T, open OpenLockStore) {
	s := open(t)
	keep := []lockstore.ExplicitLock{xlock("/a", lockstore.Shared, lockstore.DepthInfinity), xlock("/ab", lockstore.Exclusive, lockstore.DepthZero), xlock("/c", lockstore.Exclusive, lockstore.DepthZero)}
	drop := []lockstore.ExplicitLock{xlock("/a/b", lockstore.Shared, lockstore.DepthZero), xlock("/a/b/c", lockstore.Shared, lockstore.DepthZero), xlock("/a/b/c/d", lockstore.Shared, lockstore.DepthInfinity)}
	for _, l := range append(slices.Clone(keep), drop...) {
		mustCreate(t, s, l)
	}
	n, err := s.RemoveUnder(ctx, "/a/b")
	if err != nil || n != 3 {
		t.Fatalf("RemoveUnder = %d, %v; want 3", n, err)
	}
	for _, l := range drop {
		gone(t, s, l.Token, "a lock removed under /a/b")
	}
	if ls := mustList(t, s); !slices.Equal(roots(ls), []string{"/a", "/ab", "/c"}) {
		t.Fatalf("left = %v", roots(ls))
	}
	// Below-queries no longer see the removed subtree.
	if got, _ := s.Affecting(ctx, "/a", true); !slices.Equal(roots(got), []string{"/a"}) {
		t.Fatalf("Affecting after RemoveUnder = %v", roots(got))
	}
	if n, err := s.RemoveUnder(ctx, "/a/b"); err != nil || n != 0 {
		t.Fatalf("second RemoveUnder = %d, %v; want 0", n, err)
	}
	// An exclusive infinite lock on /a/b is possible once the shared /a
	// lock is gone.
	if _, err := s.Remove(ctx, keep[0].Token); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, xlock("/a/b", lockstore.Exclusive, lockstore.DepthInfinity))
	if n, err := s.RemoveUnder(ctx, "/nothing"); err != nil || n != 0 {
		t.Fatalf("RemoveUnder of an unlocked path = %d, %v", n, err)
	}
	if n, err := s.RemoveUnder(ctx, "/"); err != nil || n != 3 {
		t.Fatalf("RemoveUnder(/) = %d, %v; want 3", n, err)
	}
	if ls := mustList(t, s); len(ls) != 0 {
		t.Fatalf("left after RemoveUnder(/) = %v", roots(ls))
	}
}

// Refresh restarts the timeout: the lock outlives its first one.
func storeRefresh(t *testing.T, open OpenLockStore) {
	s := open(t)
	l := xlock("/r", lockstore.Exclusive, lockstore.DepthZero)
	l.Timeout = 150 * time.Millisecond
	created := mustCreate(t, s, l)
	r, err := s.Refresh(ctx, l.Token, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if r.Timeout != time.Hour || !r.Expires.After(created.Expires.Add(50*time.Minute)) || !r.Created.Equal(created.Created) {
		t.Fatalf("refreshed lock: timeout %v, created %v, expires %v; created %v, expiry %v before", r.Timeout, r.Created, r.Expires, created.Created, created.Expires)
	}
	if g, err := s.Get(ctx, l.Token); err != nil || !g.Expires.Equal(r.Expires) || g.Timeout != time.Hour {
		t.Fatalf("Get after Refresh = %+v, %v; want expiry %v", g, err, r.Expires)
	}
	// A lock with the old timeout, created after it, expires; the
	// refreshed one is still there then.
	witness := xlock("/w", lockstore.Exclusive, lockstore.DepthZero)
	witness.Timeout = 150 * time.Millisecond
	mustCreate(t, s, witness)
	waitFor(t, "a lock of the old timeout to expire", func() bool {
		_, err := s.Get(ctx, witness.Token)
		return errors.Is(err, lockstore.ErrNoSuchLock)
	})
	if _, err := s.Get(ctx, l.Token); err != nil {
		t.Fatalf("the refreshed lock expired at its old timeout: %v", err)
	}
}

func storeExpiry(t *testing.T, open OpenLockStore) {
	s := open(t)
	short := xlock("/e", lockstore.Exclusive, lockstore.DepthInfinity)
	short.Timeout = 100 * time.Millisecond
	long := xlock("/f", lockstore.Exclusive, lockstore.DepthZero)
	mustCreate(t, s, short)
	mustCreate(t, s, long)
	waitFor(t, "the short lock to expire", func() bool {
		_, err := s.Get(ctx, short.Token)
		return errors.Is(err, lockstore.ErrNoSuchLock)
	})
	for _, q := range []string{"/e", "/e/x"} {
		if got, _ := s.Affecting(ctx, q, true); len(got) != 0 {
			t.Fatalf("an expired lock still affects %s: %v", q, roots(got))
		}
	}
	if ls := mustList(t, s); !slices.Equal(roots(ls), []string{"/f"}) {
		t.Fatalf("List = %v, want only /f", roots(ls))
	}
	if _, err := s.Refresh(ctx, short.Token, time.Hour); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("Refresh of an expired lock: %v, want ErrNoSuchLock", err)
	}
	if _, err := s.Remove(ctx, short.Token); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("Remove of an expired lock: %v, want ErrNoSuchLock", err)
	}
	// Its scope can be locked again.
	mustCreate(t, s, xlock("/e/child", lockstore.Exclusive, lockstore.DepthZero))
	mustCreate(t, s, xlock("/e", lockstore.Exclusive, lockstore.DepthZero))
}

func storeContextEnded(t *testing.T, open OpenLockStore) {
	s := open(t)
	held := mustCreate(t, s, xlock("/h", lockstore.Exclusive, lockstore.DepthZero))
	ended, cancel := context.WithCancel(ctx)
	cancel()
	l := xlock("/c", lockstore.Exclusive, lockstore.DepthZero)
	for name, call := range map[string]func() error{
		"Create":      func() error { _, err := s.Create(ended, l); return err },
		"Refresh":     func() error { _, err := s.Refresh(ended, held.Token, time.Minute); return err },
		"Get":         func() error { _, err := s.Get(ended, held.Token); return err },
		"Remove":      func() error { _, err := s.Remove(ended, held.Token); return err },
		"Affecting":   func() error { _, err := s.Affecting(ended, "/c", true); return err },
		"RemoveUnder": func() error { _, err := s.RemoveUnder(ended, "/h"); return err },
		"List":        func() error { _, err := s.List(ended); return err },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with an ended context: %v, want context.Canceled", name, err)
		}
	}
	gone(t, s, l.Token, "a lock created with an ended context")
	if _, err := s.Get(ctx, held.Token); err != nil {
		t.Fatalf("a lock removed with an ended context: %v", err)
	}
}

// Many goroutines race for exclusive locks on nested roots: at any time
// the store grants at most one of them.
func storeConcurrentExclusive(t *testing.T, open OpenLockStore) {
	s := open(t)
	s.SetLimits(0, 0, 1000)
	paths := []string{"/p", "/p/q", "/p/q/r"}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		holders int
		granted int
	)
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 40 {
				l := xlock(paths[(i+j)%3], lockstore.Exclusive, lockstore.DepthInfinity)
				if _, err := s.Create(ctx, l); err != nil {
					if !errors.As(err, new(*lockstore.LockConflictError)) {
						t.Errorf("Create: %v", err)
					}
					continue
				}
				mu.Lock()
				holders++
				granted++
				if holders > 1 {
					t.Errorf("two exclusive locks on nested roots granted at once")
				}
				mu.Unlock()
				runtime.Gosched()
				mu.Lock()
				holders--
				mu.Unlock()
				if _, err := s.Remove(ctx, l.Token); err != nil {
					t.Errorf("Remove: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if granted == 0 {
		t.Fatal("nothing was granted")
	}
	if ls := mustList(t, s); len(ls) != 0 {
		t.Fatalf("locks left: %v", roots(ls))
	}
}

// Past max_locks Create fails with an *ExplicitLimitError that names it
// and evicts nothing; expired locks do not count; SetLimits applies to
// the locks created after it.
func storeMaxLocks(t *testing.T, open OpenLockStore) {
	s := open(t)
	s.SetLimits(2, 0, 0)
	short := xlock("/short", lockstore.Exclusive, lockstore.DepthZero)
	short.Timeout = 100 * time.Millisecond
	mustCreate(t, s, short)
	kept := mustCreate(t, s, xlock("/kept", lockstore.Exclusive, lockstore.DepthZero))
	refused(t, s, xlock("/x", lockstore.Exclusive, lockstore.DepthZero), lockstore.LimitLocks, 2)
	if _, err := s.Get(ctx, kept.Token); err != nil {
		t.Fatalf("a held lock was evicted: %v", err)
	}
	createOnceRoom(t, s, xlock("/x", lockstore.Exclusive, lockstore.DepthZero), "room after the short lock expires")
	s.SetLimits(3, 0, 0)
	mustCreate(t, s, xlock("/y", lockstore.Exclusive, lockstore.DepthZero))
	refused(t, s, xlock("/z", lockstore.Exclusive, lockstore.DepthZero), lockstore.LimitLocks, 3)
	s.SetLimits(1, 0, 0) // below what is held: nothing is dropped
	if ls := mustList(t, s); len(ls) != 3 {
		t.Fatalf("List after lowering max_locks = %v, want the 3 held", roots(ls))
	}
	refused(t, s, xlock("/z", lockstore.Exclusive, lockstore.DepthZero), lockstore.LimitLocks, 1)
	s.SetLimits(0, 0, 0) // the defaults
	mustCreate(t, s, xlock("/z", lockstore.Exclusive, lockstore.DepthZero))
}

// A lock that conflicts is refused as a conflict (423) even when the zone
// is full: it could not be granted with room either, and the in-flight
// table answers the same way.
func storeConflictInFullZone(t *testing.T, open OpenLockStore) {
	s := open(t)
	s.SetLimits(1, 0, 0)
	held := mustCreate(t, s, xlock("/a", lockstore.Exclusive, lockstore.DepthInfinity))
	_, err := s.Create(ctx, xlock("/a/b", lockstore.Shared, lockstore.DepthZero))
	var ce *lockstore.LockConflictError
	if !errors.As(err, &ce) || len(ce.Conflicts) != 1 || ce.Conflicts[0].Token != held.Token {
		t.Fatalf("conflicting Create in a full zone: %v, want a conflict with the lock on /a", err)
	}
	refused(t, s, xlock("/b", lockstore.Exclusive, lockstore.DepthZero), lockstore.LimitLocks, 1)
}

// max_locks_per_owner counts the locks of each Creator, all anonymous
// clients ("") as one, and not those of the admin API.
func storeLocksPerOwner(t *testing.T, open OpenLockStore) {
	s := open(t)
	s.SetLimits(0, 0, 2)
	by := func(root, creator string) lockstore.ExplicitLock {
		l := xlock(root, lockstore.Exclusive, lockstore.DepthZero)
		l.Creator = creator
		return l
	}
	a0 := mustCreate(t, s, by("/a0", "alice"))
	mustCreate(t, s, by("/a1", "alice"))
	refused(t, s, by("/a2", "alice"), lockstore.LimitLocksPerOwner, 2)
	mustCreate(t, s, by("/b0", "bob")) // another owner is not held back
	mustCreate(t, s, by("/n0", ""))
	mustCreate(t, s, by("/n1", ""))
	refused(t, s, by("/n2", ""), lockstore.LimitLocksPerOwner, 2)
	for i := range 3 {
		mustCreate(t, s, by(fmt.Sprintf("/adm%d", i), lockstore.AdminCreator))
	}
	// Removing one of alice's locks makes room for another.
	if _, err := s.Remove(ctx, a0.Token); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, by("/a2", "alice"))
	refused(t, s, by("/a3", "alice"), lockstore.LimitLocksPerOwner, 2)
	// So does RemoveUnder, and expiry.
	if _, err := s.RemoveUnder(ctx, "/a1"); err != nil {
		t.Fatal(err)
	}
	short := by("/a3", "alice")
	short.Timeout = 100 * time.Millisecond
	mustCreate(t, s, short)
	createOnceRoom(t, s, by("/a4", "alice"), "room after alice's short lock expires")
}

// max_lock_bytes bounds what the zone's locks keep, as LockBytes counts
// it, whoever takes them; every way a lock ends gives its bytes back.
func storeLockBytes(t *testing.T, open OpenLockStore) {
	s := open(t)
	owner := []byte(`<D:href xmlns:D="DAV:">` + strings.Repeat("o", 1000) + `</D:href>`)
	lk := func(root, creator string, timeout time.Duration) lockstore.ExplicitLock {
		return lockstore.ExplicitLock{Token: newToken(), Root: root, Href: root, Scope: lockstore.Exclusive,
			Depth: lockstore.DepthZero, Owner: owner, Creator: creator, Timeout: timeout}
	}
	sample := lk("/b/0", "alice", time.Hour)
	cost := lockstore.LockBytes(&sample)
	budget := 5*cost + 100
	s.SetLimits(0, budget, 100)
	a0 := mustCreate(t, s, lk("/b/0", "alice", time.Hour))
	mustCreate(t, s, lk("/b/1", "alice", time.Hour))
	bob := mustCreate(t, s, lk("/b/2", "bob", time.Hour))
	// The admin API's locks count against the bytes too.
	mustCreate(t, s, lk("/b/3", lockstore.AdminCreator, time.Hour))
	short := mustCreate(t, s, lk("/b/4", lockstore.AdminCreator, 150*time.Millisecond))
	// The budget is used up: a sixth lock is refused, whoever asks.
	refused(t, s, lk("/b/5", "carol", time.Hour), lockstore.LimitLockBytes, budget)
	refused(t, s, lk("/b/5", lockstore.AdminCreator, time.Hour), lockstore.LimitLockBytes, budget)
	// A lock in conflict is a conflict, not a refusal for room.
	if _, err := s.Create(ctx, lk("/b/0", "carol", time.Hour)); !errors.As(err, new(*lockstore.LockConflictError)) {
		t.Fatalf("conflicting lock in a full budget: %v, want a conflict", err)
	}
	// Nothing was evicted.
	if ls := mustList(t, s); len(ls) != 5 {
		t.Fatalf("List: %v; want 5 locks", roots(ls))
	}
	// Expiry gives its bytes back.
	carol := createOnceRoom(t, s, lk("/b/5", "carol", time.Hour), "the short lock to give back its bytes")
	// (A store may still return the lock in the very millisecond it
	// expires, the one in which it gave its bytes back: Redis does.)
	waitFor(t, "the expired lock to be gone", func() bool {
		_, err := s.Get(ctx, short.Token)
		return errors.Is(err, lockstore.ErrNoSuchLock)
	})
	// A refresh changes nothing counted.
	if _, err := s.Refresh(ctx, bob.Token, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	refused(t, s, lk("/b/6", "dave", time.Hour), lockstore.LimitLockBytes, budget)
	// Remove and RemoveUnder give back what they remove.
	if _, err := s.Remove(ctx, a0.Token); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, lk("/b/6", "dave", time.Hour))
	refused(t, s, lk("/b/7", "dave", time.Hour), lockstore.LimitLockBytes, budget)
	if _, err := s.Remove(ctx, carol.Token); err != nil {
		t.Fatal(err)
	}
	if n, err := s.RemoveUnder(ctx, "/b"); err != nil || n != 4 {
		t.Fatalf("RemoveUnder: %d, %v; want 4", n, err)
	}
	for i := range 5 {
		mustCreate(t, s, lk(fmt.Sprintf("/c/%d", i), "erin", time.Hour))
	}
	refused(t, s, lk("/c/5", "erin", time.Hour), lockstore.LimitLockBytes, budget)
}
