package caddylock

// How WebDAV requests are refused (davrefuse.go): 207 for locks below,
// problem JSON for clients that are not WebDAV clients, 503 when full.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
)

// TestDAVLockBelowMultiStatus drives RFC 4918 section 9.10.6: a
// depth-infinity LOCK refused only for locks below its request URI gets
// 207 naming them; a conflict on the URI or an ancestor stays 423. It
// runs with the in-memory store and with the Redis store, whose conflict
// lists the answer is made of.
func TestDAVLockBelowMultiStatus(t *testing.T) {
	inEachStore(t, testLockBelowMultiStatus)
}

func testLockBelowMultiStatus(t *testing.T, store string) {
	url, b := davSite(t, store)
	b.mkdir(t, "/c")
	b.mkdir(t, "/c/sub dir")
	b.put(t, "/c/sub dir/f", "f")
	b.put(t, "/c/g", "g")
	b.put(t, "/c/h", "h")
	davLock(t, url+"/c/sub%20dir/f", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	davLock(t, url+"/c/g", "shared", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	davLock(t, url+"/c/g", "shared", "b", map[string]string{"Depth": "0"}, http.StatusOK)

	// Exclusive: every lock below is in the way; each root once, escaped
	// as an href, and the request URI as the client spelled it.
	assertLockFailure(t, davDo(t, "LOCK", url+"/c/", fmt.Sprintf(lockBody, "exclusive", "c"), nil),
		"/c/", "/c/g", "/c/sub%20dir/f")
	// Shared: only the exclusive lock below is.
	assertLockFailure(t, davDo(t, "LOCK", url+"/c", fmt.Sprintf(lockBody, "shared", "c"), map[string]string{"Depth": "infinity"}),
		"/c", "/c/sub%20dir/f")
	// Nothing was locked: a write without a token passes.
	davMust(t, http.StatusCreated, "PUT", url+"/c/h", "changed", nil)

	// A lock on the request URI itself, or on an ancestor, is a plain
	// conflict even with locks below as well.
	b.mkdir(t, "/d")
	b.put(t, "/d/f", "f")
	davLock(t, url+"/d", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	davLock(t, url+"/d/f", "exclusive", "a", nil, http.StatusOK)
	assertDAVError(t, davDo(t, "LOCK", url+"/d", fmt.Sprintf(lockBody, "exclusive", "c"), nil), http.StatusLocked, dav.CondNoConflictingLock, "/d", "/d/f")
	b.mkdir(t, "/e")
	b.mkdir(t, "/e/x")
	b.put(t, "/e/x/f", "f")
	davLock(t, url+"/e", "shared", "a", nil, http.StatusOK)
	davLock(t, url+"/e/x/f", "shared", "a", nil, http.StatusOK)
	assertDAVError(t, davDo(t, "LOCK", url+"/e/x", fmt.Sprintf(lockBody, "exclusive", "c"), nil), http.StatusLocked, dav.CondNoConflictingLock, "/e", "/e/x/f")

	// Depth 0 does not cover the members: granted despite the locks below.
	davLock(t, url+"/c", "exclusive", "c", map[string]string{"Depth": "0"}, http.StatusOK)
}

func TestDAVNonDAVClientsGetProblemJSON(t *testing.T) {
	url, b := davSite(t, "")
	b.put(t, "/p", "x")
	davLock(t, url+"/p", "exclusive", "a", nil, http.StatusOK)
	r := davDo(t, "PUT", url+"/p", "plain client", nil)
	if r.status != http.StatusLocked || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("plain client: %d %s %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	var p struct {
		Status int
		Lock   struct {
			Key      string
			Kind     string
			Explicit bool
			Expires  time.Time
		}
	}
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatal(err)
	}
	if p.Status != 423 || p.Lock.Key != "/p" || p.Lock.Kind != "exclusive" || !p.Lock.Explicit || time.Until(p.Lock.Expires) < 9*time.Minute {
		t.Fatalf("problem document: %s", r.body)
	}
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || ra < 590 || ra > 600 {
		t.Fatalf("Retry-After = %q, want the seconds until the lock ends (600)", r.header.Get("Retry-After"))
	}
	// Asking for XML gets DAV:error.
	assertDAVError(t, davDo(t, "PUT", url+"/p", "x", map[string]string{"Accept": "application/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/p")
	// A browser's Accept lists XML below HTML: it gets the refusal page
	// (refusalpage.go), not DAV:error.
	r = davDo(t, "PUT", url+"/p", "x", map[string]string{"Accept": browserAccept})
	if r.status != http.StatusLocked || r.header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("browser: %d %s %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	if b.saw("PUT /p") != 0 {
		t.Fatal("a refused PUT reached the backend")
	}
}

func TestDAVFullStoreGives503(t *testing.T) {
	url, b := davSite(t, "max_locks 2")
	for _, p := range []string{"/1", "/2", "/3"} {
		b.put(t, p, "x")
	}
	t1, _ := davLock(t, url+"/1", "exclusive", "a", nil, http.StatusOK)
	davLock(t, url+"/2", "exclusive", "a", nil, http.StatusOK)
	r := davDo(t, "LOCK", url+"/3", fmt.Sprintf(lockBody, "exclusive", "a"), nil)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || !strings.Contains(r.body, "explicit locks") {
		t.Fatalf("LOCK past max_locks: %d %s", r.status, r.body)
	}
	// Nothing was evicted: /1 is still locked.
	assertDAVError(t, davDo(t, "PUT", url+"/1", "x", map[string]string{"Depth": "0"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/1")
	davMust(t, http.StatusNoContent, "UNLOCK", url+"/1", "", map[string]string{"Lock-Token": "<" + t1 + ">"})
	davLock(t, url+"/3", "exclusive", "a", nil, http.StatusOK)
}
