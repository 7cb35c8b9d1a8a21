package caddylock

// LOCK, refresh and UNLOCK through a real Caddy in front of a lock-less
// WebDAV backend (davlock.go).

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
)

func TestDAVLockWriteUnlock(t *testing.T) {
	url, b := davSite(t, "")
	tok, l := davLock(t, url+"/doc.txt", "exclusive", "alice", nil, http.StatusCreated)
	if !b.exists("/doc.txt") {
		t.Fatal("LOCK on an unmapped URL did not create the resource at the backend")
	}
	if l.Scope.Exclusive == nil || l.Type.Write == nil || l.Depth != "infinity" || l.Owner != "http://example.org/~alice" ||
		l.Timeout != "Second-600" || l.Root != "/doc.txt" {
		t.Fatalf("activelock = %+v", l)
	}
	if b.saw("LOCK /doc.txt") != 0 {
		t.Fatal("LOCK was forwarded to the backend")
	}

	// Without the token: 423 naming the lock root, not forwarded.
	r := davDo(t, "PUT", url+"/doc.txt", "intruder", map[string]string{"Accept": "application/xml"})
	assertDAVError(t, r, http.StatusLocked, dav.CondLockTokenSubmitted, "/doc.txt")
	for _, m := range []string{"DELETE", "PROPPATCH", "POST", "PATCH"} {
		r := davDo(t, m, url+"/doc.txt", "", map[string]string{"Accept": "text/xml"})
		assertDAVError(t, r, http.StatusLocked, dav.CondLockTokenSubmitted, "/doc.txt")
	}
	if n := b.saw("PUT /doc.txt"); n != 1 { // the creating PUT only
		t.Fatalf("backend saw %d PUTs, want only the one that created the resource", n)
	}
	// A token that is not the lock's does not help.
	r = davDo(t, "PUT", url+"/doc.txt", "x", map[string]string{"If": "(<urn:uuid:00000000-0000-4000-8000-000000000000>)"})
	if r.status != http.StatusPreconditionFailed {
		t.Fatalf("PUT with a wrong token: %d, want 412", r.status)
	}
	// Reads pass.
	davMust(t, http.StatusOK, "GET", url+"/doc.txt", "", nil)

	// With the token the write goes through, without the If header.
	davMust(t, http.StatusCreated, "PUT", url+"/doc.txt", "hello", ifToken(tok))
	if n := b.saw("PUT /doc.txt"); n != 2 {
		t.Fatalf("backend saw %d PUTs, want 2", n)
	}
	if len(b.ifSeen) != 0 {
		t.Fatalf("If headers reached the backend: %q", b.ifSeen)
	}
	// A tagged list naming this host works as well.
	davMust(t, http.StatusCreated, "PUT", url+"/doc.txt", "hello again", map[string]string{"If": "<" + url + "/doc.txt> (<" + tok + ">)"})

	// UNLOCK: missing header 400, unknown token 409, URL outside the lock 409.
	davMust(t, http.StatusBadRequest, "UNLOCK", url+"/doc.txt", "", nil)
	davMust(t, http.StatusBadRequest, "UNLOCK", url+"/doc.txt", "", map[string]string{"Lock-Token": tok})
	r = davDo(t, "UNLOCK", url+"/doc.txt", "", map[string]string{"Lock-Token": "<urn:uuid:00000000-0000-4000-8000-000000000000>"})
	assertDAVError(t, r, http.StatusConflict, dav.CondLockTokenMatchesRequestURI)
	r = davDo(t, "UNLOCK", url+"/other", "", map[string]string{"Lock-Token": "<" + tok + ">"})
	assertDAVError(t, r, http.StatusConflict, dav.CondLockTokenMatchesRequestURI)
	davMust(t, http.StatusNoContent, "UNLOCK", url+"/doc.txt", "", map[string]string{"Lock-Token": "<" + tok + ">"})
	if b.saw("UNLOCK /doc.txt") != 0 {
		t.Fatal("UNLOCK was forwarded to the backend")
	}
	// Unlocked: anybody writes again; the token is gone.
	davMust(t, http.StatusCreated, "PUT", url+"/doc.txt", "free", nil)
	r = davDo(t, "UNLOCK", url+"/doc.txt", "", map[string]string{"Lock-Token": "<" + tok + ">"})
	assertDAVError(t, r, http.StatusConflict, dav.CondLockTokenMatchesRequestURI)
}

func TestDAVRefresh(t *testing.T) {
	url, b := davSite(t, "max_timeout 2h")
	b.put(t, "/r.txt", "x")
	tok, l := davLock(t, url+"/r.txt", "exclusive", "a", map[string]string{"Timeout": "Second-60"}, http.StatusOK)
	if l.Timeout != "Second-60" {
		t.Fatalf("timeout = %q, want Second-60", l.Timeout)
	}
	r := davMust(t, http.StatusOK, "LOCK", url+"/r.txt", "", map[string]string{"If": "(<" + tok + ">)", "Timeout": "Infinite, Second-5"})
	if r.header.Get("Lock-Token") != "" {
		t.Fatal("a refresh answered with a Lock-Token header")
	}
	locks := parseLockDiscovery(t, r.body)
	if len(locks) != 1 || locks[0].Timeout != "Second-7200" || locks[0].Token != tok {
		t.Fatalf("refreshed lock = %+v, want Infinite clamped to max_timeout 2h", locks)
	}
	// Unknown token, and a URL outside the lock: 412.
	r = davDo(t, "LOCK", url+"/r.txt", "", map[string]string{"If": "(<urn:uuid:00000000-0000-4000-8000-000000000000>)"})
	assertDAVError(t, r, http.StatusPreconditionFailed, dav.CondLockTokenMatchesRequestURI)
	r = davDo(t, "LOCK", url+"/elsewhere", "", map[string]string{"If": "(<" + tok + ">)"})
	assertDAVError(t, r, http.StatusPreconditionFailed, dav.CondLockTokenMatchesRequestURI)
	// No body and no If header: 400.
	davMust(t, http.StatusBadRequest, "LOCK", url+"/r.txt", "", nil)
	// Second-0 gets the shortest lock, not an error.
	r = davMust(t, http.StatusOK, "LOCK", url+"/r.txt", "", map[string]string{"If": "(<" + tok + ">)", "Timeout": "Second-0"})
	if locks := parseLockDiscovery(t, r.body); len(locks) != 1 || locks[0].Timeout != "Second-1" {
		t.Fatalf("refresh with Second-0: %s", r.body)
	}
	davMust(t, http.StatusOK, "LOCK", url+"/r.txt", "", map[string]string{"If": "(<" + tok + ">)"})
	// A second exclusive lock: 423 no-conflicting-lock naming the root.
	r = davDo(t, "LOCK", url+"/r.txt", fmt.Sprintf(lockBody, "exclusive", "b"), nil)
	assertDAVError(t, r, http.StatusLocked, dav.CondNoConflictingLock, "/r.txt")
}

// A refresh without a Timeout header restarts the lock's own timeout
// (RFC 4918 section 6.6), not default_timeout: a client that locked for
// an hour and refreshes keeps an hour, not ten minutes.
func TestDAVRefreshKeepsTimeout(t *testing.T) {
	inEachStore(t, testRefreshKeepsTimeout)
}

func testRefreshKeepsTimeout(t *testing.T, store string) {
	url, b := davSite(t, "max_timeout 2h\n"+store)
	b.put(t, "/k.txt", "x")
	tok, _ := davLock(t, url+"/k.txt", "exclusive", "a", map[string]string{"Timeout": "Second-3600"}, http.StatusOK)
	r := davMust(t, http.StatusOK, "LOCK", url+"/k.txt", "", ifToken(tok))
	if locks := parseLockDiscovery(t, r.body); len(locks) != 1 || locks[0].Timeout != "Second-3600" {
		t.Fatalf("refresh without Timeout: %s, want the lock's own Second-3600", r.body)
	}
	// A Timeout header still sets a new one, and later refreshes keep it.
	davMust(t, http.StatusOK, "LOCK", url+"/k.txt", "", map[string]string{"If": "(<" + tok + ">)", "Timeout": "Second-120"})
	r = davMust(t, http.StatusOK, "LOCK", url+"/k.txt", "", ifToken(tok))
	if locks := parseLockDiscovery(t, r.body); len(locks) != 1 || locks[0].Timeout != "Second-120" {
		t.Fatalf("refresh without Timeout after Second-120: %s", r.body)
	}
}

func TestDAVSharedLocks(t *testing.T) {
	url, b := davSite(t, "")
	b.put(t, "/s.txt", "x")
	t1, _ := davLock(t, url+"/s.txt", "shared", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	t2, l2 := davLock(t, url+"/s.txt", "shared", "b", map[string]string{"Depth": "0"}, http.StatusOK)
	if t1 == t2 || l2.Scope.Shared == nil || l2.Depth != "0" {
		t.Fatalf("second shared lock %+v, token %s (first %s)", l2, t2, t1)
	}
	r := davDo(t, "LOCK", url+"/s.txt", fmt.Sprintf(lockBody, "exclusive", "c"), nil)
	assertDAVError(t, r, http.StatusLocked, dav.CondNoConflictingLock, "/s.txt")
	// Writing needs one of the shared tokens.
	assertDAVError(t, davDo(t, "PUT", url+"/s.txt", "y", map[string]string{"Depth": "0"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/s.txt")
	davMust(t, http.StatusCreated, "PUT", url+"/s.txt", "y", ifToken(t2))
	davMust(t, http.StatusNoContent, "UNLOCK", url+"/s.txt", "", map[string]string{"Lock-Token": "<" + t1 + ">"})
	davMust(t, http.StatusNoContent, "UNLOCK", url+"/s.txt", "", map[string]string{"Lock-Token": "<" + t2 + ">"})
	davLock(t, url+"/s.txt", "exclusive", "c", nil, http.StatusOK)
}

func TestDAVUnmappedURL(t *testing.T) {
	url, b := davSite(t, "")
	// Missing parent collection: 409, no lock left behind.
	r := davDo(t, "LOCK", url+"/missing/x", fmt.Sprintf(lockBody, "exclusive", "a"), nil)
	if r.status != http.StatusConflict {
		t.Fatalf("LOCK under a missing collection: %d, want 409; %s", r.status, r.body)
	}
	if ls, _ := zoneStore(t, "TestDAVUnmappedURL").List(context.Background()); len(ls) != 0 {
		t.Fatalf("a failed LOCK left %d locks", len(ls))
	}
	// LOCK creates an empty resource; a PROPFIND sees it.
	davLock(t, url+"/new", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusCreated)
	if !b.exists("/new") {
		t.Fatal("no resource created")
	}
	if r := davMust(t, http.StatusOK, "GET", url+"/new", "", nil); r.body != "" {
		t.Fatalf("created resource has content %q", r.body)
	}
}

func TestDAVExpiry(t *testing.T) {
	url, b := davSite(t, "max_timeout 300ms\ndefault_timeout 300ms")
	b.put(t, "/x", "x")
	_, l := davLock(t, url+"/x", "exclusive", "a", map[string]string{"Timeout": "Infinite"}, http.StatusOK)
	if l.Timeout != "Second-1" {
		t.Fatalf("timeout = %q, want Second-1 (300ms rounded up)", l.Timeout)
	}
	assertDAVError(t, davDo(t, "PUT", url+"/x", "y", map[string]string{"Depth": "0"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/x")
	waitFor(t, 5*time.Second, "the lock to expire", func() bool {
		return davDo(t, "PUT", url+"/x", "y", nil).status == http.StatusCreated
	})
	if ls, _ := zoneStore(t, "TestDAVExpiry").List(context.Background()); len(ls) != 0 {
		t.Fatalf("expired lock still listed")
	}
}

func TestDAVLocksSurviveReload(t *testing.T) {
	url, b := davSite(t, "")
	b.put(t, "/kept", "x")
	tok, _ := davLock(t, url+"/kept", "exclusive", "a", nil, http.StatusOK)
	port := 0
	fmt.Sscan(strings.TrimPrefix(url, "http://127.0.0.1:"), &port)
	// The same zone under a changed config: the lock is still there.
	loadCaddy(t, port, "", davSiteConfig(t, b, "header X-Config two", "max_timeout 2h"), nil)
	// The old server closes its connections; wait until the new one
	// answers.
	waitFor(t, 5*time.Second, "the new config to serve", func() bool {
		http.DefaultClient.CloseIdleConnections()
		r := do(http.DefaultClient, "GET", url+"/kept", nil)
		return r.err == nil && r.header.Get("X-Config") == "two"
	})
	assertDAVError(t, davDo(t, "PUT", url+"/kept", "y", map[string]string{"Depth": "0"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/kept")
	davMust(t, http.StatusCreated, "PUT", url+"/kept", "y", ifToken(tok))
}
