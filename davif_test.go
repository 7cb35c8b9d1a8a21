package caddylock

// The If header and the tokens a write must submit (davif.go).

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"

	"golang.org/x/crypto/bcrypt"
)

// A COPY or MOVE onto a collection replaces everything below it
// (Overwrite: T), so it needs the tokens of the locks on the members
// below the destination too, not only of locks on the destination or
// above it; with the member's token it passes.
func TestDAVCopyMoveOntoCollectionMembers(t *testing.T) {
	url, b := davSite(t, "")
	b.mkdir(t, "/dst")
	b.put(t, "/dst/member", "m")
	tm, _ := davLock(t, url+"/dst/member", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	for _, method := range []string{"COPY", "MOVE"} {
		src := "/src-" + strings.ToLower(method)
		b.mkdir(t, src)
		b.put(t, src+"/file", "s")
		h := map[string]string{"Destination": url + "/dst", "Overwrite": "T", "Depth": "infinity"}
		assertDAVError(t, davDo(t, method, url+src, "", h), http.StatusLocked, dav.CondLockTokenSubmitted, "/dst/member")
		if b.saw(method+" "+src) != 0 || !b.exists("/dst/member") {
			t.Fatalf("a refused %s onto the collection reached the backend", method)
		}
	}
	h := map[string]string{"Destination": url + "/dst", "Overwrite": "T", "Depth": "infinity", "If": "<" + url + "/dst/member> (<" + tm + ">)"}
	davMust(t, http.StatusNoContent, "COPY", url+"/src-copy", "", h)
	if !b.exists("/dst/file") || b.exists("/dst/member") {
		t.Fatal("the COPY with the member's token did not replace the collection at the backend")
	}
}

func TestDAVIfETags(t *testing.T) {
	url, b := davSite(t, "")
	b.put(t, "/e.txt", "one")
	etag := headETag(t, url+"/e.txt")
	// A stale ETag: 412, the write never reaches the backend.
	r := davDo(t, "PUT", url+"/e.txt", "two", map[string]string{"If": `(["stale"])`})
	if r.status != http.StatusPreconditionFailed {
		t.Fatalf("PUT with a stale ETag: %d, want 412", r.status)
	}
	if b.saw("PUT /e.txt") != 0 {
		t.Fatal("a PUT with a false If header reached the backend")
	}
	// Lists are ORed, conditions ANDed, Not negates.
	davMust(t, http.StatusPreconditionFailed, "PUT", url+"/e.txt", "two", map[string]string{"If": `([` + etag + `] Not [` + etag + `])`})
	davMust(t, http.StatusCreated, "PUT", url+"/e.txt", "two", map[string]string{"If": `(["stale"]) ([` + etag + `])`})
	// The matching ETag went along as If-Match where one list allowed it.
	b.mu.Lock()
	ifMatch := slices.Clone(b.ifMatch)
	b.mu.Unlock()
	if len(ifMatch) != 0 {
		t.Fatalf("If-Match sent for a two-list If header: %q", ifMatch)
	}
	etag2 := headETag(t, url+"/e.txt")
	davMust(t, http.StatusCreated, "PUT", url+"/e.txt", "three", map[string]string{"If": `([` + etag2 + `])`})
	b.mu.Lock()
	ifMatch = slices.Clone(b.ifMatch)
	b.mu.Unlock()
	if !slices.Equal(ifMatch, []string{etag2}) {
		t.Fatalf("If-Match at the backend = %q, want [%s]", ifMatch, etag2)
	}
	// Lock token and ETag together; Not <DAV:no-lock> always holds.
	tok, _ := davLock(t, url+"/e.txt", "exclusive", "a", nil, http.StatusOK)
	etag3 := headETag(t, url+"/e.txt")
	davMust(t, http.StatusPreconditionFailed, "PUT", url+"/e.txt", "four", map[string]string{"If": `(<` + tok + `> [` + etag2 + `])`})
	davMust(t, http.StatusCreated, "PUT", url+"/e.txt", "four", map[string]string{"If": `(<` + tok + `> [` + etag3 + `])`})
	davMust(t, http.StatusCreated, "PUT", url+"/e.txt", "five", map[string]string{"If": `(<` + tok + `>) (Not <DAV:no-lock>)`})
	// A tag for another host cannot be checked: that list is false.
	davMust(t, http.StatusPreconditionFailed, "PUT", url+"/e.txt", "six", map[string]string{"If": `<http://other.example/e.txt> (<` + tok + `>)`})
	if len(b.ifSeen) != 0 {
		t.Fatalf("If headers reached the backend: %q", b.ifSeen)
	}
}

// The If header's ETag is checked while the in-flight lock is held, so
// that no write can come between the check and the write it guards. Two
// PUTs with the same current ETag: the first is slow at the backend, the
// second queues (wait) and, once let through, finds the ETag changed.
// Had it been checked before the queue, both writes would pass and the
// second would overwrite the first unseen.
func TestDAVIfETagCheckedUnderInflightLock(t *testing.T) {
	url, b := davSite(t, "wait 10s")
	b.put(t, "/e.txt", "one")
	etag := headETag(t, url+"/e.txt")
	cond := `([` + etag + `])`
	first := make(chan result, 1)
	go func() {
		first <- do(http.DefaultClient, "PUT", url+"/e.txt", map[string]string{"If": cond, "X-Delay": "1s"})
	}()
	waitFor(t, 5*time.Second, "the first PUT to reach the backend", func() bool { return b.saw("PUT /e.txt") == 1 })
	second := make(chan result, 1)
	go func() { second <- do(http.DefaultClient, "PUT", url+"/e.txt", map[string]string{"If": cond}) }()
	// The second PUT waits for the first's in-flight lock.
	waitForQueue(t, zoneTable(t, t.Name()), 1)
	if r := <-first; r.err != nil || r.status != http.StatusCreated {
		t.Fatalf("first PUT: %d %v %s", r.status, r.err, r.body)
	}
	if r := <-second; r.err != nil || r.status != http.StatusPreconditionFailed {
		t.Fatalf("second PUT with the ETag the first changed: %d %v %s, want 412", r.status, r.err, r.body)
	}
	if n := b.saw("PUT /e.txt"); n != 1 {
		t.Fatalf("backend saw %d PUTs, want 1", n)
	}
	if n := b.writing.count(); n != 0 {
		t.Fatalf("%d writes overlapped at the backend", n)
	}
}

func TestDAVOwnerBinding(t *testing.T) {
	hash := func(pw string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	// basic_auth runs before lock in the standard order.
	url, b := davSiteAfter(t, fmt.Sprintf("basic_auth {\n alice %s\n bob %s\n}", hash("a"), hash("b")), "")
	b.put(t, "/owned", "x")
	as := func(user, pw string, h map[string]string) map[string]string {
		out := map[string]string{"Authorization": "Basic " + basicAuth(user, pw)}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	tok, _ := davLock(t, url+"/owned", "exclusive", "alice", as("alice", "a", nil), http.StatusOK)
	// Bob has the token but the lock is Alice's.
	assertDAVError(t, davDo(t, "PUT", url+"/owned", "bob", as("bob", "b", ifToken(tok))), http.StatusLocked, dav.CondLockTokenSubmitted, "/owned")
	davMust(t, http.StatusForbidden, "UNLOCK", url+"/owned", "", as("bob", "b", map[string]string{"Lock-Token": "<" + tok + ">"}))
	davMust(t, http.StatusForbidden, "LOCK", url+"/owned", "", as("bob", "b", ifToken(tok)))
	davMust(t, http.StatusCreated, "PUT", url+"/owned", "alice", as("alice", "a", ifToken(tok)))
	davMust(t, http.StatusNoContent, "UNLOCK", url+"/owned", "", as("alice", "a", map[string]string{"Lock-Token": "<" + tok + ">"}))
	davMust(t, http.StatusCreated, "PUT", url+"/owned", "bob", as("bob", "b", nil))

	// Shared locks of both on one resource: a refresh that names Alice's
	// token before Bob's refreshes Bob's, not 403.
	ta, _ := davLock(t, url+"/owned", "shared", "alice", as("alice", "a", nil), http.StatusOK)
	tb, _ := davLock(t, url+"/owned", "shared", "bob", as("bob", "b", nil), http.StatusOK)
	r := davMust(t, http.StatusOK, "LOCK", url+"/owned", "", as("bob", "b", map[string]string{"If": "(<" + ta + ">) (<" + tb + ">)"}))
	if ls := parseLockDiscovery(t, r.body); len(ls) != 1 || ls[0].Token != tb {
		t.Fatalf("refresh by bob naming both tokens: %+v, want bob's lock %s", ls, tb)
	}
	davMust(t, http.StatusForbidden, "LOCK", url+"/owned", "", as("bob", "b", ifToken(ta)))
}

func TestSameHost(t *testing.T) {
	for _, c := range []struct {
		uri, host string
		want      bool
	}{
		{"http://Example.com/x", "example.com", true},
		{"http://example.com:80/x", "example.com", true},
		{"https://example.com:443/x", "example.com", true},
		{"https://example.com/x", "example.com:443", true},
		{"http://example.com:8080/x", "example.com", false},
		{"https://example.com:80/x", "example.com", false},
		{"http://other.com/x", "example.com", false},
	} {
		u, err := url.Parse(c.uri)
		if err != nil {
			t.Fatal(err)
		}
		if got := sameHost(u, c.host); got != c.want {
			t.Errorf("sameHost(%s, %s) = %v", c.uri, c.host, got)
		}
	}
}
