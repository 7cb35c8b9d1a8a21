package caddylock

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	redisstore "github.com/caddy-lock/caddy-lock/stores/redis"

	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddy-lock/caddy-lock/lockstore/storetest"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
)

// The memory store keeps the LockStore contract.
func TestMemLockStoreContract(t *testing.T) {
	testLockStoreContract(t, func(t *testing.T) lockstore.LockStore {
		s := newMemLockStore(0)
		t.Cleanup(s.Close)
		return s
	})
}

// testLockStoreContract runs the LockStore contract suite on the stores
// newStore returns, each empty; every implementation runs it.
func testLockStoreContract(t *testing.T, newStore func(t *testing.T) lockstore.LockStore) {
	storetest.LockStore(t, newStore)
}

func TestMemLockStoreExpiresWithoutCalls(t *testing.T) {
	// The timer drops expired locks even when nobody calls the store,
	// and Close stops it.
	s := newMemLockStore(0)
	defer s.Close()
	for i := range 100 {
		_, err := s.Create(context.Background(), lockstore.ExplicitLock{
			Token: dav.NewLockToken(), Root: fmt.Sprintf("/t/%d", i), Scope: lockstore.Exclusive,
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

// usageOf reads what a zone's explicit store counts: bytes against
// max_lock_bytes, and the locks of owner.
func usageOf(t *testing.T, s lockstore.LockStore, owner string) (bytes, owned int64) {
	t.Helper()
	switch s := s.(type) {
	case *memLockStore:
		b, o := s.Usage(owner)
		return b, int64(o)
	case *redisstore.LockStore:
		b, o, err := s.Usage(context.Background(), owner)
		if err != nil {
			t.Fatal(err)
		}
		return b, o
	}
	t.Fatalf("store %T keeps no usage", s)
	return 0, 0
}

// limitOf returns the limit that err names, "" when it names none.
func limitOf(err error) string {
	var lim *lockstore.ExplicitLimitError
	if errors.As(err, &lim) {
		return lim.Limit
	}
	return ""
}

// testLockStoreBudget checks max_lock_bytes and max_locks_per_owner in a
// store: the counts follow every way a lock ends, a lock past a limit is
// refused with the limit named and nothing is evicted, and at the end
// nothing is left counted.
func testLockStoreBudget(t *testing.T, s interface {
	lockstore.LockStore
	SetBudget(int64, int)
}) {
	ctx := context.Background()
	owner := []byte(`<D:href xmlns:D="DAV:">` + strings.Repeat("o", 1000) + `</D:href>`)
	lk := func(root, creator string, timeout time.Duration) lockstore.ExplicitLock {
		return lockstore.ExplicitLock{Token: dav.NewLockToken(), Root: root, Href: root, Scope: lockstore.Exclusive, Depth: lockstore.DepthZero,
			Owner: owner, Creator: creator, Timeout: timeout}
	}
	sample := lk("/b/0", "alice", time.Hour)
	cost := lockstore.LockBytes(&sample)
	s.SetBudget(5*cost+100, 2)
	held := map[string]int64{} // token → lockstore.LockBytes of the locks that should be held
	create := func(l lockstore.ExplicitLock) lockstore.ExplicitLock {
		t.Helper()
		got := mustCreate(t, s, l)
		held[l.Token] = lockstore.LockBytes(&l)
		return got
	}
	remove := func(l lockstore.ExplicitLock) {
		t.Helper()
		if _, err := s.Remove(ctx, l.Token); err != nil {
			t.Fatal(err)
		}
		delete(held, l.Token)
	}
	sum := func() (n int64) {
		for _, b := range held {
			n += b
		}
		return n
	}
	want := func(alice int64) {
		t.Helper()
		b, o := usageOf(t, s, "alice")
		if b != sum() || o != alice {
			t.Fatalf("usage: %d bytes, alice holds %d; want %d bytes and %d", b, o, sum(), alice)
		}
	}
	a0 := create(lk("/b/0", "alice", time.Hour))
	create(lk("/b/1", "alice", time.Hour))
	want(2)
	// Alice is at max_locks_per_owner; Bob is not.
	if _, err := s.Create(ctx, lk("/b/2", "alice", time.Hour)); limitOf(err) != lockstore.LimitLocksPerOwner || !errors.Is(err, lockstore.ErrFull) {
		t.Fatalf("alice's third lock: %v, want max_locks_per_owner", err)
	}
	bob := create(lk("/b/3", "bob", time.Hour))
	// Locks of the admin API count against the bytes, not per owner.
	adm := create(lk("/b/4", lockstore.AdminCreator, time.Hour))
	adm2 := create(lk("/b/5", lockstore.AdminCreator, 150*time.Millisecond))
	want(2)
	// The budget is used up: a sixth lock is refused, whoever asks.
	if _, err := s.Create(ctx, lk("/b/6", "carol", time.Hour)); limitOf(err) != lockstore.LimitLockBytes || !errors.Is(err, lockstore.ErrFull) {
		t.Fatalf("past max_lock_bytes: %v, want max_lock_bytes", err)
	}
	// A lock in conflict is a conflict, not a refusal for room.
	var ce *lockstore.LockConflictError
	if _, err := s.Create(ctx, lk("/b/0", "carol", time.Hour)); !errors.As(err, &ce) {
		t.Fatalf("conflicting lock in a full budget: %v, want a conflict", err)
	}
	// Nothing was evicted.
	if ls, err := s.List(ctx); err != nil || len(ls) != 5 {
		t.Fatalf("List: %d locks, %v; want 5", len(ls), err)
	}
	// Expiry gives its bytes back.
	delete(held, adm2.Token)
	waitFor(t, 5*time.Second, "the short lock to expire and give back its bytes", func() bool {
		_, _ = s.Affecting(ctx, "/b", true) // Redis purges on any call
		b, _ := usageOf(t, s, "alice")
		return b == sum()
	})
	if _, err := s.Get(ctx, adm2.Token); !errors.Is(err, lockstore.ErrNoSuchLock) {
		t.Fatalf("expired lock: %v", err)
	}
	carol := create(lk("/b/6", "carol", time.Hour))
	// A refresh changes nothing counted.
	if _, err := s.Refresh(ctx, bob.Token, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	want(2)
	// Remove and RemoveUnder give back what they remove.
	remove(a0)
	want(1)
	create(lk("/b/2", "alice", time.Hour))
	want(2)
	remove(adm)
	remove(carol)
	if n, err := s.RemoveUnder(ctx, "/b"); err != nil || n != 3 {
		t.Fatalf("RemoveUnder: %d, %v; want 3", n, err)
	}
	clear(held)
	want(0)
	for _, who := range []string{"bob", "carol", lockstore.AdminCreator} {
		if _, o := usageOf(t, s, who); o != 0 {
			t.Fatalf("%q still holds %d locks", who, o)
		}
	}
}

func TestMemLockStoreBudget(t *testing.T) {
	s := newMemLockStore(0)
	t.Cleanup(s.Close)
	testLockStoreBudget(t, s)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.owners) != 0 || s.bytes != 0 {
		t.Fatalf("left counted: %d bytes, owners %v", s.bytes, s.owners)
	}
}

func TestRedisLockStoreBudget(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	testLockStoreBudget(t, s)
	// The counters' keys are gone, not left at zero.
	c := redisClient(t, srv)
	for _, k := range []string{"xsz", "xbytes", "xown"} {
		if n, err := c.Exists(context.Background(), redisZoneBase(t.Name())+k).Result(); err != nil || n != 0 {
			t.Fatalf("key %s left behind: %d %v", redisZoneBase(t.Name())+k, n, err)
		}
	}
}

// assertLimitRefusal checks the answer to a LOCK past limit: 503 with
// Retry-After and a problem document that names the limit.
func assertLimitRefusal(t *testing.T, r result, limit string) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" ||
		r.header.Get("Content-Type") != "application/problem+json" || !strings.Contains(r.body, limit) {
		t.Fatalf("LOCK past %s: %d, Retry-After %q, %.300s; want 503 with Retry-After naming %s",
			limit, r.status, r.header.Get("Retry-After"), r.body, limit)
	}
}

// A flood of LOCKs by one user stops at max_locks_per_owner; another user
// still locks, the flooder's locks stay, and an UNLOCK makes room again.
func TestDAVLocksPerOwner(t *testing.T) {
	inEachStore(t, func(t *testing.T, store string) {
		hash := func(pw string) string {
			h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			return string(h)
		}
		url, b := davSiteAfter(t, fmt.Sprintf("header >X-Lock {http.lock.result}\nbasic_auth {\n alice %s\n bob %s\n}", hash("a"), hash("b")),
			"max_locks_per_owner 3\n"+store)
		as := func(user string, h map[string]string) map[string]string {
			out := map[string]string{"Authorization": "Basic " + basicAuth(user, user[:1])}
			for k, v := range h {
				out[k] = v
			}
			return out
		}
		var tokens []string
		for i := range 3 {
			b.put(t, fmt.Sprintf("/a%d", i), "x")
			tok, _ := davLock(t, fmt.Sprintf("%s/a%d", url, i), "exclusive", "alice", as("alice", nil), http.StatusOK)
			tokens = append(tokens, tok)
		}
		for i := 3; i < 10; i++ {
			r := davDo(t, "LOCK", fmt.Sprintf("%s/a%d", url, i), fmt.Sprintf(lockBody, "exclusive", "alice"), as("alice", nil))
			assertLimitRefusal(t, r, "max_locks_per_owner")
			if got := r.header.Get("X-Lock"); got != resultFull {
				t.Fatalf("{http.lock.result} of a LOCK past max_locks_per_owner = %q, want %q", got, resultFull)
			}
		}
		// Another owner is not held back.
		b.put(t, "/b0", "x")
		davLock(t, url+"/b0", "exclusive", "bob", as("bob", nil), http.StatusOK)
		// Nothing was evicted: alice's locks still hold.
		for i := range 3 {
			if r := davDo(t, "PUT", fmt.Sprintf("%s/a%d", url, i), "y", as("bob", nil)); r.status != http.StatusLocked {
				t.Fatalf("PUT /a%d without the token: %d, want 423", i, r.status)
			}
		}
		// An UNLOCK gives alice room again.
		davMust(t, http.StatusNoContent, "UNLOCK", url+"/a0", "", as("alice", map[string]string{"Lock-Token": "<" + tokens[0] + ">"}))
		b.put(t, "/a3", "x")
		davLock(t, url+"/a3", "exclusive", "alice", as("alice", nil), http.StatusOK)
		if _, owned := usageOf(t, zoneStore(t, davZone(t)), "alice"); owned != 3 {
			t.Fatalf("alice holds %d locks, want 3", owned)
		}
	})
}

// davZone is the zone davSite gives the running test.
func davZone(t *testing.T) string {
	return strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
}

// bigOwnerLock is a LOCK body whose owner is about n bytes.
func bigOwnerLock(n int) string {
	return fmt.Sprintf(lockBody, "exclusive", strings.Repeat("x", n))
}

// A flood of LOCKs with large owners stops at max_lock_bytes with 503;
// no lock is evicted, the store counts no more than the budget, and
// UNLOCK and expiry give the budget back until nothing is counted.
func TestDAVLockByteBudget(t *testing.T) {
	inEachStore(t, func(t *testing.T, store string) {
		const budget = 256 << 10
		url, b := davSite(t, "max_lock_bytes 256KiB\nmax_locks_per_owner 100000\n"+store)
		s := zoneStore(t, davZone(t))
		var rc redis.UniversalClient
		var memBefore int64
		if _, ok := s.(*redisstore.LockStore); ok {
			rc = redisClientOf(t, store)
			memBefore = redisUsedMemory(t, rc)
		}
		var tokens []string
		refused := 0
		for i := range 100 {
			b.put(t, fmt.Sprintf("/f%d", i), "x")
			r := davDo(t, "LOCK", fmt.Sprintf("%s/f%d", url, i), bigOwnerLock(20000), nil)
			if r.status == http.StatusOK || r.status == http.StatusCreated {
				tok := r.header.Get("Lock-Token")
				tokens = append(tokens, tok[1:len(tok)-1])
				continue
			}
			assertLimitRefusal(t, r, "max_lock_bytes")
			refused++
		}
		bytes, _ := usageOf(t, s, "")
		t.Logf("%d LOCKs granted, %d refused; %d bytes counted (%d per lock)", len(tokens), refused, bytes, bytes/int64(max(1, len(tokens))))
		if len(tokens) == 0 || refused == 0 || bytes > budget || bytes < budget-bytes/int64(len(tokens)) {
			t.Fatalf("%d granted, %d refused, %d bytes counted; want the flood stopped just short of %d bytes", len(tokens), refused, bytes, budget)
		}
		if rc != nil {
			// What Redis keeps for the locks, key by key, is within what
			// they count.
			base := redisZoneBase(davZone(t))
			keys := []string{base + "xidx", base + "xexp", base + "xsz", base + "xown", base + "xbytes"}
			for _, tok := range tokens {
				keys = append(keys, base+"x:"+tok)
			}
			var kept int64
			for _, k := range keys {
				n, err := rc.MemoryUsage(context.Background(), k, 0).Result() // 0: every field, not a sample
				if err != nil {
					t.Fatalf("MEMORY USAGE %s: %v", k, err)
				}
				kept += n
			}
			t.Logf("redis keeps %d bytes in the zone's keys for %d locks (%d per lock); used_memory grew by %d bytes",
				kept, len(tokens), kept/int64(len(tokens)), redisUsedMemory(t, rc)-memBefore)
			if kept > bytes {
				t.Fatalf("redis keeps %d bytes for the locks, more than the %d they count", kept, bytes)
			}
		}
		// Nothing was evicted: every granted lock is listed and holds.
		if ls, err := s.List(context.Background()); err != nil || len(ls) != len(tokens) {
			t.Fatalf("List: %d locks, %v; want %d", len(ls), err, len(tokens))
		}
		if r := davDo(t, "PUT", url+"/f0", "y", nil); r.status != http.StatusLocked {
			t.Fatalf("PUT /f0 without the token: %d, want 423", r.status)
		}
		// UNLOCK gives the budget back, to the last byte.
		for i, tok := range tokens {
			davMust(t, http.StatusNoContent, "UNLOCK", fmt.Sprintf("%s/f%d", url, i), "", map[string]string{"Lock-Token": "<" + tok + ">"})
		}
		if bytes, owned := usageOf(t, s, ""); bytes != 0 || owned != 0 {
			t.Fatalf("after UNLOCK of all: %d bytes, %d locks counted; want 0", bytes, owned)
		}
		// Locks that expire give it back too: the budget filled with
		// one-second locks is free again once they end.
		n := 0
		for i := 0; ; i++ {
			r := davDo(t, "LOCK", fmt.Sprintf("%s/f%d", url, i), bigOwnerLock(20000), map[string]string{"Timeout": "Second-1"})
			if r.status != http.StatusOK && r.status != http.StatusCreated {
				assertLimitRefusal(t, r, "max_lock_bytes")
				break
			}
			n++
		}
		if n != len(tokens) {
			t.Fatalf("%d one-second locks fit, want %d as before", n, len(tokens))
		}
		waitFor(t, 10*time.Second, "the expired locks to give their bytes back", func() bool {
			r := davDo(t, "LOCK", url+"/after", bigOwnerLock(20000), map[string]string{"Timeout": "Second-1"})
			return r.status == http.StatusOK || r.status == http.StatusCreated
		})
		waitFor(t, 10*time.Second, "nothing counted once every lock expired", func() bool {
			_, _ = s.Affecting(context.Background(), "/", true) // Redis purges on any call
			bytes, owned := usageOf(t, s, "")
			return bytes == 0 && owned == 0
		})
	})
}

// redisUsedMemory is INFO memory's used_memory.
func redisUsedMemory(t *testing.T, c redis.UniversalClient) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatalf("no used_memory in INFO memory")
	return 0
}

// TestExplicitLockBytesCoverHeap measures what LOCKs keep in the memory
// store through Caddy: lockstore.LockBytes must count at least the heap a lock
// keeps (flat paths with large owners, and deep paths, which need a tree
// node per segment), and with max_lock_bytes a flood of LOCKs grows the
// heap by no more than about the budget.
func TestExplicitLockBytesCoverHeap(t *testing.T) {
	const n = 200
	type shape struct {
		name  string
		path  func(i int) string
		owner int
	}
	shapes := []shape{
		{"large owners", func(i int) string { return fmt.Sprintf("/flat%d", i) }, 30000},
		{"deep paths", func(i int) string { return fmt.Sprintf("/deep%d", i) + strings.Repeat("/d", 200) }, 10},
	}
	// The backend answers every HEAD with 200, so a LOCK makes no
	// resource there: the heap grows by what the lock keeps.
	site := func(t *testing.T, limits string) string {
		return startCaddy(t, "lock {\n webdav\n zone "+davZone(t)+"\n max_lock_body 128KiB\n max_locks_per_owner 100000\n "+
			limits+"\n}\nreverse_proxy {backend}", newBackend(t))
	}
	t.Run("measure", func(t *testing.T) {
		url := site(t, "max_lock_bytes 1GiB")
		s := zoneStore(t, davZone(t)).(*memLockStore)
		for _, sh := range shapes {
			before := heapInUse()
			for i := range n {
				if r := davDo(t, "LOCK", url+sh.path(i), bigOwnerLock(sh.owner), nil); r.status != http.StatusOK {
					t.Fatalf("LOCK %.40s: %d, want 200", sh.path(i), r.status)
				}
			}
			grown := heapInUse() - before
			counted, _ := s.Usage("")
			t.Logf("%s: heap grew by %d bytes for %d locks (%d per lock); %d bytes counted (%d per lock)",
				sh.name, grown, n, grown/n, counted, counted/n)
			if counted < grown {
				t.Errorf("%s: %d bytes counted for %d locks, but they keep %d bytes of heap", sh.name, counted, n, grown)
			}
			if _, err := s.RemoveUnder(context.Background(), "/"); err != nil {
				t.Fatal(err)
			}
		}
	})
	// With a budget, the flood stops there and the heap stays near it.
	t.Run("budget", func(t *testing.T) {
		const budget = 2 << 20
		url := site(t, "max_lock_bytes 2MiB")
		before := heapInUse()
		granted := 0
		for i := range n {
			r := davDo(t, "LOCK", url+fmt.Sprintf("/flood%d", i), bigOwnerLock(60000), nil)
			if r.status == http.StatusOK {
				granted++
				continue
			}
			assertLimitRefusal(t, r, "max_lock_bytes")
		}
		grown := heapInUse() - before
		t.Logf("flood of %d LOCKs with 60 kB owners under max_lock_bytes 2MiB: %d granted, heap grew by %d bytes", n, granted, grown)
		if granted == n || grown > 2*budget {
			t.Fatalf("flood of %d LOCKs: %d granted, heap grew by %d bytes; want it stopped at the 2 MiB budget", n, granted, grown)
		}
	})
}

func TestSameToken(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"urn:uuid:1", "urn:uuid:1", true},
		{"urn:uuid:1", "urn:uuid:2", false},
		{"urn:uuid:1", "urn:uuid:10", false},
		{"", "", true},
		{"URN:uuid:1", "urn:uuid:1", false}, // exact, case-sensitive (RFC 4918 section 10.4.3)
	} {
		if got := sameToken(c.a, c.b); got != c.want {
			t.Errorf("sameToken(%q, %q) = %v", c.a, c.b, got)
		}
	}
	if !tokenIn([]string{"a", "b"}, "b") || tokenIn([]string{"a", "b"}, "c") || tokenIn(nil, "") {
		t.Error("tokenIn")
	}
}

// TestTokensComparedInConstantTime reads the code of the package, of
// internal/dav (which evaluates the If header) and of lockstore: a lock
// token (a .Token field, or a variable named token or tok) is compared
// only with sameToken or tokenIn (lockstore's SameToken and TokenIn),
// never with ==, != or a library function that stops at the first
// differing byte, so that the time an answer takes does not tell an
// attacker how much of a guessed token was right.
// Comparing with "" (is there a token at all) and with the public
// DAV:no-lock URI tells nothing and is allowed.
func TestTokensComparedInConstantTime(t *testing.T) {
	fset := token.NewFileSet()
	var pkgs []*ast.Package
	// internal/dav evaluates the If header's tokens; lockstore compares.
	for _, dir := range []string{".", "internal/dav", "lockstore"} {
		ps, err := parser.ParseDir(fset, dir, func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			pkgs = append(pkgs, p)
		}
	}
	isToken := func(e ast.Expr) bool {
		switch e := e.(type) {
		case *ast.SelectorExpr:
			return e.Sel.Name == "Token"
		case *ast.Ident:
			return e.Name == "token" || e.Name == "tok"
		}
		return false
	}
	public := func(e ast.Expr) bool {
		if lit, ok := e.(*ast.BasicLit); ok && lit.Value == `""` {
			return true
		}
		id, ok := e.(*ast.Ident)
		return ok && (id.Name == "NoLockToken" || id.Name == "noLockToken")
	}
	variableTime := map[string]bool{
		"slices.Contains": true, "slices.Index": true, "strings.HasPrefix": true, "strings.EqualFold": true,
		"bytes.Equal": true, "strings.HasSuffix": true, "strings.Contains": true,
	}
	found := 0
	for _, pkg := range pkgs {
		for _, f := range pkg.Files {
			ast.Inspect(f, func(n ast.Node) bool {
				var args []ast.Expr
				switch n := n.(type) {
				case *ast.BinaryExpr:
					if n.Op != token.EQL && n.Op != token.NEQ {
						return true
					}
					args = []ast.Expr{n.X, n.Y}
				case *ast.CallExpr:
					sel, ok := n.Fun.(*ast.SelectorExpr)
					if !ok {
						return true
					}
					pkgName, ok := sel.X.(*ast.Ident)
					if !ok || !variableTime[pkgName.Name+"."+sel.Sel.Name] {
						return true
					}
					args = n.Args
				default:
					return true
				}
				if slices.ContainsFunc(args, public) || !slices.ContainsFunc(args, isToken) {
					return true
				}
				found++
				t.Errorf("%s: a lock token compared in variable time; use sameToken or tokenIn", fset.Position(n.Pos()))
				return true
			})
		}
	}
	t.Logf("%d variable-time token comparisons", found)
}
