package caddylock

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	redisstore "github.com/caddy-lock/caddy-lock/stores/redis"

	"golang.org/x/crypto/bcrypt"
)

// The requests the lock handler makes on a client's behalf (sub-requests:
// the HEAD of an If ETag or of an existence check, the PROPFIND of an
// existence check, the empty PUT of a LOCK on an unmapped URL), and how
// the answers they get are read.

// davFront puts a handler in front of a davBackend, so that a test can
// change how the backend answers some requests; what reaches the backend
// is still recorded. It returns the front's host:port.
func davFront(t *testing.T, b *davBackend, f func(w http.ResponseWriter, r *http.Request) bool) string {
	t.Helper()
	inner := b.Config.Handler
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f(w, r) {
			inner.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(front.Close)
	return strings.TrimPrefix(front.URL, "http://")
}

// subZone is a zone name of the test's own.
func subZone(t *testing.T) string {
	return strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
}

// An If header that names a resource the route hides: the HEAD that
// would read its ETag never reaches the backend, and the condition does
// not hold, whatever the ETag, so the answer tells nothing about it.
func TestDAVSubRequestHiddenPath(t *testing.T) {
	b := newDAVBackend(t)
	url := startCaddy(t, fmt.Sprintf(`
handle /private/* {
	respond "hidden" 403
}
handle {
	lock {
		webdav
		zone %s
	}
	reverse_proxy %s
}`, subZone(t), strings.TrimPrefix(b.URL, "http://")), nil)
	b.mkdir(t, "/private")
	b.put(t, "/private/secret", "s")
	b.put(t, "/public.txt", "p")
	// The ETag as the backend has it, read past Caddy.
	resp, err := http.Head(b.URL + "/private/secret")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	etag := resp.Header.Get("ETag")
	if etag == "" {
		t.Fatal("the backend sends no ETag")
	}
	davMust(t, http.StatusForbidden, "HEAD", url+"/private/secret", "", nil)
	r := davDo(t, "PUT", url+"/public.txt", "x", map[string]string{"If": `</private/secret> ([` + etag + `])`})
	if r.status != http.StatusPreconditionFailed {
		t.Fatalf("PUT with the hidden resource's ETag in If: %d, want 412; %s", r.status, r.body)
	}
	if n := b.saw("HEAD /private/secret"); n != 1 { // the test's own, past Caddy
		n--
		t.Fatalf("the backend answered %d HEADs for a path the route hides", n)
	}
	if n := b.saw("PUT /public.txt"); n != 0 {
		t.Fatalf("a PUT whose If header does not hold reached the backend %d times", n)
	}
}

// An If header that names another resource the route serves: its ETag
// is read through the route, and the condition holds or not by it.
func TestDAVSubRequestTaggedETag(t *testing.T) {
	url, b := davSite(t, "")
	b.put(t, "/other.txt", "o")
	b.put(t, "/e.txt", "e")
	etag := headETag(t, url+"/other.txt")
	davMust(t, http.StatusPreconditionFailed, "PUT", url+"/e.txt", "x", map[string]string{"If": `</other.txt> (["stale"])`})
	davMust(t, http.StatusCreated, "PUT", url+"/e.txt", "x", map[string]string{"If": `</other.txt> ([` + etag + `])`})
	davMust(t, http.StatusCreated, "PUT", url+"/e.txt", "y", map[string]string{"If": `<` + url + `/other.txt> ([` + etag + `])`})
	if n := b.saw("HEAD /other.txt"); n != 4 { // the test's own, then one per PUT
		t.Fatalf("the backend saw %d HEADs of /other.txt, want 4", n)
	}
}

// The empty PUT that a LOCK on an unmapped URL makes meets the route's
// auth for PUT: where writes need a login that the route does not ask of
// LOCK, an anonymous LOCK creates nothing and leaves no lock; with the
// login it creates the resource.
func TestDAVLockCreateMeetsRouteAuth(t *testing.T) {
	b := newDAVBackend(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("a"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	zone := subZone(t)
	url := startCaddy(t, fmt.Sprintf(`
@put method PUT
basic_auth @put {
	alice %s
}
lock {
	webdav
	zone %s
}
reverse_proxy %s`, hash, zone, strings.TrimPrefix(b.URL, "http://")), nil)
	r := davDo(t, "LOCK", url+"/new", fmt.Sprintf(lockBody, "exclusive", "anon"), nil)
	if r.status != http.StatusUnauthorized {
		t.Fatalf("anonymous LOCK on an unmapped URL whose PUT needs a login: %d, want 401; %s", r.status, r.body)
	}
	if r.header.Get("WWW-Authenticate") == "" {
		t.Fatal("401 without WWW-Authenticate: the client cannot tell how to log in")
	}
	if n := b.saw("PUT /new"); n != 0 || b.exists("/new") {
		t.Fatalf("an anonymous LOCK created /new at the backend (%d PUTs)", n)
	}
	if ls, _ := zoneStore(t, zone).List(context.Background()); len(ls) != 0 {
		t.Fatalf("a refused LOCK left %d locks", len(ls))
	}
	davLock(t, url+"/new", "exclusive", "alice", map[string]string{"Authorization": "Basic " + basicAuth("alice", "a")}, http.StatusCreated)
	if !b.exists("/new") {
		t.Fatal("LOCK with the login created nothing")
	}
}

// A lock handler earlier in the route that holds the LOCK's own lock
// lets the LOCK's empty PUT through: it must not wait for itself.
func TestDAVLockCreateUnderOuterLock(t *testing.T) {
	b := newDAVBackend(t)
	zone := subZone(t)
	url := startCaddy(t, fmt.Sprintf(`
route {
	lock {
		zone %s_outer
		exclusive PUT LOCK
	}
	lock {
		webdav
		zone %s
	}
	reverse_proxy %s
}`, zone, zone, strings.TrimPrefix(b.URL, "http://")), nil)
	davLock(t, url+"/new", "exclusive", "a", nil, http.StatusCreated)
	if !b.exists("/new") {
		t.Fatal("LOCK created nothing")
	}
}

// headAnswers makes a davFront answer HEAD (and PROPFIND, when
// propfind is set) with the status it holds, when that is not 0.
type headAnswers struct {
	head, propfind atomic.Int32
}

func (a *headAnswers) front(w http.ResponseWriter, r *http.Request) bool {
	status := 0
	switch r.Method {
	case http.MethodHead:
		status = int(a.head.Load())
	case "PROPFIND":
		status = int(a.propfind.Load())
	}
	if status == 0 {
		return false
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="backend"`)
	}
	w.WriteHeader(status)
	return true
}

// davXML makes a plain method's refusal a DAV:error document.
var davXML = map[string]string{"Accept": "application/xml"}

// Only a clear answer tells whether a resource exists: 2xx (or 304) that
// it does, 404 or 410 that it does not. A backend that answers HEAD with
// 405 (x/net/webdav does for a collection), 401 or 5xx is asked with
// PROPFIND; when that is no clearer either, a PUT into a collection
// under a depth-0 lock still needs the collection's token, and a LOCK is
// refused rather than granted on what may be a new member.
func TestDAVExistenceNeedsClearAnswer(t *testing.T) {
	b := newDAVBackend(t)
	var ans headAnswers
	zone := subZone(t)
	url := startCaddy(t, fmt.Sprintf("lock {\n webdav\n zone %s\n}\nreverse_proxy %s\n", zone, davFront(t, b, ans.front)), nil)
	b.mkdir(t, "/dir")
	b.put(t, "/dir/existing", "e")
	// A collection: HEAD gets 405 from x/net/webdav, PROPFIND tells.
	tok, _ := davLock(t, url+"/dir", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	if b.saw("PUT /dir") != 0 {
		t.Fatal("LOCK on an existing collection tried to create it")
	}
	for _, st := range []int{http.StatusMethodNotAllowed, http.StatusUnauthorized, http.StatusForbidden, http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusMovedPermanently} {
		t.Run(fmt.Sprintf("unclear %d", st), func(t *testing.T) {
			ans.head.Store(int32(st))
			ans.propfind.Store(int32(st))
			defer ans.head.Store(0)
			defer ans.propfind.Store(0)
			p := fmt.Sprintf("/dir/new%d", st)
			assertDAVError(t, davDo(t, "PUT", url+p, "x", davXML), http.StatusLocked, dav.CondLockTokenSubmitted, "/dir")
			if n := b.saw("PUT " + p); n != 0 {
				t.Fatalf("a new member of a locked collection reached the backend without its token (%d PUTs)", n)
			}
			// An existing member whose existence cannot be told: the
			// collection's lock stays needed too.
			assertDAVError(t, davDo(t, "PUT", url+"/dir/existing", "x", davXML), http.StatusLocked, dav.CondLockTokenSubmitted, "/dir")
			want := http.StatusBadGateway
			if st == http.StatusUnauthorized || st == http.StatusForbidden {
				want = st
			}
			r := davDo(t, "LOCK", url+p, fmt.Sprintf(lockBody, "exclusive", "b"), map[string]string{"Depth": "0"})
			if r.status != want {
				t.Fatalf("LOCK on a member whose existence the backend does not tell: %d, want %d; %s", r.status, want, r.body)
			}
			if st == http.StatusUnauthorized && r.header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without the backend's WWW-Authenticate")
			}
			ls, err := zoneStore(t, zone).List(context.Background())
			if err != nil || len(ls) != 1 {
				t.Fatalf("locks after a refused LOCK: %d (%v), want the collection's alone", len(ls), err)
			}
		})
	}
	t.Run("HEAD unclear, PROPFIND clear", func(t *testing.T) {
		ans.head.Store(http.StatusMethodNotAllowed)
		defer ans.head.Store(0)
		assertDAVError(t, davDo(t, "PUT", url+"/dir/fresh1", "x", davXML), http.StatusLocked, dav.CondLockTokenSubmitted, "/dir")
		assertDAVError(t, davDo(t, "LOCK", url+"/dir/fresh1", fmt.Sprintf(lockBody, "exclusive", "b"), nil), http.StatusLocked, dav.CondLockTokenSubmitted, "/dir")
		// An existing member keeps the member list as it is.
		davMust(t, http.StatusCreated, "PUT", url+"/dir/existing", "y", nil)
	})
	t.Run("clear", func(t *testing.T) {
		assertDAVError(t, davDo(t, "PUT", url+"/dir/fresh2", "x", davXML), http.StatusLocked, dav.CondLockTokenSubmitted, "/dir")
		davMust(t, http.StatusCreated, "PUT", url+"/dir/existing", "z", nil)
		davMust(t, http.StatusCreated, "PUT", url+"/dir/fresh2", "x", ifToken(tok))
	})
}

// A conflict list can come back empty from the Redis store: the locks in
// the way ended between the index lookup and the read of their hashes
// (the hash's own expiry a moment before the index is purged). Such a
// LOCK is refused as a conflict to retry, 423 with Retry-After, naming no
// lock; it never brings the request down. The test deletes a lock's hash
// and leaves its index entry, as that moment does.
func TestDAVEmptyConflictList(t *testing.T) {
	srv := startRedis(t)
	url, b := davSite(t, "store redis {\n address "+srv.Addr+"\n }")
	b.put(t, "/f", "f")
	b.mkdir(t, "/d")
	tok, _ := davLock(t, url+"/f", "exclusive", "a", nil, http.StatusOK)
	tokD, _ := davLock(t, url+"/d/x", "exclusive", "a", nil, http.StatusCreated)
	if _, ok := zoneStore(t, subZone(t)).(*redisstore.LockStore); !ok {
		t.Fatal("the zone's explicit store is not the Redis one")
	}
	c := redisClient(t, srv)
	for _, k := range []string{tok, tokD} {
		// The lock's hash, as the store names it (see stores/redis/explicit.go).
		if err := c.Del(context.Background(), "{"+redisstore.DefaultKeyPrefix+":"+subZone(t)+"}:x:"+k).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A lock on the same root, and a depth-infinity lock above one.
	for _, p := range []string{"/f", "/d"} {
		r := davDo(t, "LOCK", url+p, fmt.Sprintf(lockBody, "exclusive", "b"), nil)
		assertDAVError(t, r, http.StatusLocked, dav.CondNoConflictingLock)
		if ra := r.header.Get("Retry-After"); ra != "1" {
			t.Fatalf("LOCK %s: Retry-After %q, want 1", p, ra)
		}
	}
}
