package caddylock

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/net/webdav"
)

func (grantAll) Confirm(time.Time, string, string, ...webdav.Condition) (func(), error) {
	return func() {}, nil
}

func (grantAll) Create(time.Time, webdav.LockDetails) (string, error) { return "backend-token", nil }

func (grantAll) Refresh(time.Time, string, time.Duration) (webdav.LockDetails, error) {
	return webdav.LockDetails{}, nil
}

func (grantAll) Unlock(time.Time, string) error { return nil }

// saw counts the requests "METHOD /path" that reached the backend.
func (b *davBackend) saw(req string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, s := range b.seen {
		if s == req {
			n++
		}
	}
	return n
}

// exists reports whether the backend holds a resource.
func (b *davBackend) exists(p string) bool {
	_, err := b.fs.Stat(context.Background(), p)
	return err == nil
}

// put creates a file at the backend directly.
func (b *davBackend) put(t *testing.T, p, content string) {
	t.Helper()
	f, err := b.fs.OpenFile(context.Background(), p, 0x241 /* O_RDWR|O_CREATE|O_TRUNC */, 0o644)
	if err != nil {
		t.Fatalf("creating %s at the backend: %v", p, err)
	}
	_, _ = f.Write([]byte(content))
	f.Close()
}

func (b *davBackend) mkdir(t *testing.T, p string) {
	t.Helper()
	if err := b.fs.Mkdir(context.Background(), p, 0o755); err != nil {
		t.Fatalf("mkdir %s at the backend: %v", p, err)
	}
}

func TestDAVCollections(t *testing.T) {
	url, b := davSite(t, "")
	b.mkdir(t, "/inf")
	b.put(t, "/inf/a", "a")
	b.mkdir(t, "/zero")
	b.put(t, "/zero/member", "m")

	// Depth infinity covers everything below.
	ti, _ := davLock(t, url+"/inf", "exclusive", "a", nil, http.StatusOK)
	assertDAVError(t, davDo(t, "PUT", url+"/inf/a", "x", map[string]string{"Accept": "application/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/inf")
	assertDAVError(t, davDo(t, "MKCOL", url+"/inf/sub", "", nil), http.StatusLocked, dav.CondLockTokenSubmitted, "/inf")
	davMust(t, http.StatusCreated, "PUT", url+"/inf/a", "x", ifToken(ti))
	davMust(t, http.StatusCreated, "PUT", url+"/inf/new", "x", map[string]string{"If": "</inf> (<" + ti + ">)"})
	// A lock below an infinite exclusive lock conflicts.
	assertDAVError(t, davDo(t, "LOCK", url+"/inf/a", fmt.Sprintf(lockBody, "shared", "b"), nil), http.StatusLocked, dav.CondNoConflictingLock, "/inf")

	// Depth 0 on a collection protects its member list, not its members.
	tz, _ := davLock(t, url+"/zero", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	davMust(t, http.StatusCreated, "PUT", url+"/zero/member", "changed", nil)
	assertDAVError(t, davDo(t, "PUT", url+"/zero/new", "x", map[string]string{"Accept": "application/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/zero")
	assertDAVError(t, davDo(t, "DELETE", url+"/zero/member", "", map[string]string{"Accept": "application/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/zero")
	assertDAVError(t, davDo(t, "MKCOL", url+"/zero/dir", "", nil), http.StatusLocked, dav.CondLockTokenSubmitted, "/zero")
	assertDAVError(t, davDo(t, "MOVE", url+"/zero/member", "", map[string]string{"Destination": url + "/moved"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/zero")
	assertDAVError(t, davDo(t, "COPY", url+"/inf/a", "", map[string]string{"Destination": url + "/zero/copy"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/zero")
	if !b.exists("/zero/member") || b.exists("/zero/new") || b.exists("/zero/dir") || b.exists("/moved") || b.exists("/zero/copy") {
		t.Fatal("a refused request changed the backend")
	}
	davMust(t, http.StatusCreated, "PUT", url+"/zero/new", "x", map[string]string{"If": "</zero> (<" + tz + ">)"})
	davMust(t, http.StatusNoContent, "DELETE", url+"/zero/new", "", map[string]string{"If": "</zero> (<" + tz + ">)"})

	// DELETE of a collection needs the tokens of every lock inside it.
	b.mkdir(t, "/tree")
	b.mkdir(t, "/tree/sub")
	b.put(t, "/tree/sub/f", "f")
	b.put(t, "/tree/g", "g")
	tf, _ := davLock(t, url+"/tree/sub/f", "exclusive", "a", nil, http.StatusOK)
	tg, _ := davLock(t, url+"/tree/g", "shared", "a", nil, http.StatusOK)
	assertDAVError(t, davDo(t, "DELETE", url+"/tree", "", map[string]string{"Depth": "infinity"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/tree/g", "/tree/sub/f")
	assertDAVError(t, davDo(t, "DELETE", url+"/tree", "", map[string]string{"If": "</tree/g> (<" + tg + ">)"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/tree/sub/f")
	// A depth-infinity lock above held locks is refused, naming them.
	assertLockFailure(t, davDo(t, "LOCK", url+"/tree", fmt.Sprintf(lockBody, "exclusive", "a"), nil), "/tree", "/tree/g", "/tree/sub/f")
	davMust(t, http.StatusNoContent, "DELETE", url+"/tree", "", map[string]string{"If": "</tree/g> (<" + tg + ">) </tree/sub/f> (<" + tf + ">)"})
	if b.exists("/tree") {
		t.Fatal("DELETE did not reach the backend")
	}
	// The locks went with the collection.
	st := zoneStore(t, "TestDAVCollections")
	for _, tok := range []string{tf, tg} {
		if _, err := st.Get(context.Background(), tok); err == nil {
			t.Fatalf("lock %s survived the DELETE of its collection", tok)
		}
	}
	davMust(t, http.StatusCreated, "MKCOL", url+"/tree", "", nil)

	// So does MOVE of a collection: the source's subtree goes away.
	b.mkdir(t, "/mtree")
	b.mkdir(t, "/mtree/sub")
	b.put(t, "/mtree/sub/f", "f")
	tm, _ := davLock(t, url+"/mtree/sub/f", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	move := map[string]string{"Destination": url + "/moved-tree"}
	assertDAVError(t, davDo(t, "MOVE", url+"/mtree", "", move), http.StatusLocked, dav.CondLockTokenSubmitted, "/mtree/sub/f")
	if b.saw("MOVE /mtree") != 0 || !b.exists("/mtree/sub/f") || b.exists("/moved-tree") {
		t.Fatal("a MOVE without the token of a lock inside the collection reached the backend")
	}
	move["If"] = "</mtree/sub/f> (<" + tm + ">)"
	davMust(t, http.StatusCreated, "MOVE", url+"/mtree", "", move)
	if b.exists("/mtree") || !b.exists("/moved-tree/sub/f") {
		t.Fatal("MOVE with the token did not happen at the backend")
	}
	if _, err := st.Get(context.Background(), tm); err == nil {
		t.Fatal("the lock of a member survived the MOVE of its collection")
	}
}

func TestDAVMoveCopy(t *testing.T) {
	url, b := davSite(t, "")
	b.put(t, "/src", "s")
	b.put(t, "/dst", "d")
	b.put(t, "/other", "o")
	ts, _ := davLock(t, url+"/src", "exclusive", "a", nil, http.StatusOK)
	td, _ := davLock(t, url+"/dst", "exclusive", "a", nil, http.StatusOK)

	// COPY reads the source: only the destination's token is needed.
	davMust(t, http.StatusCreated, "COPY", url+"/src", "", map[string]string{"Destination": url + "/copy"})
	assertDAVError(t, davDo(t, "COPY", url+"/other", "", map[string]string{"Destination": url + "/dst"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/dst")
	davMust(t, http.StatusNoContent, "COPY", url+"/other", "", map[string]string{"Destination": url + "/dst", "If": "<" + url + "/dst> (<" + td + ">)"})

	// MOVE needs both.
	assertDAVError(t, davDo(t, "MOVE", url+"/src", "", map[string]string{"Destination": url + "/dst", "If": "(<" + ts + ">)"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/dst")
	assertDAVError(t, davDo(t, "MOVE", url+"/src", "", map[string]string{"Destination": url + "/dst", "If": "</dst> (<" + td + ">)"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/src")
	if !b.exists("/src") {
		t.Fatal("a refused MOVE reached the backend")
	}
	// Moving a locked file to an unlocked destination works with the
	// source's token (no 412 as with x/net/webdav's own locks).
	davMust(t, http.StatusCreated, "MOVE", url+"/src", "", map[string]string{"Destination": url + "/free", "If": "(<" + ts + ">)"})
	if b.exists("/src") || !b.exists("/free") {
		t.Fatal("MOVE did not happen at the backend")
	}
	// The source's lock went with the MOVE; the destination's stays.
	st := zoneStore(t, "TestDAVMoveCopy")
	if _, err := st.Get(context.Background(), ts); err == nil {
		t.Fatal("the lock of a moved resource survived")
	}
	if _, err := st.Get(context.Background(), td); err != nil {
		t.Fatalf("the destination's lock is gone: %v", err)
	}
	davMust(t, http.StatusCreated, "PUT", url+"/src", "reborn", nil)

	// Destination on another host: 502; missing or malformed: 400.
	davMust(t, http.StatusBadGateway, "MOVE", url+"/other", "", map[string]string{"Destination": "http://elsewhere.example/x"})
	davMust(t, http.StatusBadRequest, "MOVE", url+"/other", "", nil)
	davMust(t, http.StatusBadRequest, "COPY", url+"/other", "", map[string]string{"Destination": "::not a uri"})
}

// With case_insensitive, a Destination path and an If tag are folded as
// a request path is: a COPY or MOVE onto a resource locked under another
// spelling of its name needs the lock's token. Each name is one whose
// letters lower-case differently once upper-cased (ς, ı, ſ), so the
// backend receives the very path the LOCK named.
func TestDAVDestinationCaseFolded(t *testing.T) {
	site, b := davSite(t, "case_insensitive")
	b.put(t, "/src", "s")
	for i, name := range []string{"/λόγος", "/kapı", "/ſtate"} {
		href := (&url.URL{Path: name}).EscapedPath()
		target := site + href
		tok, _ := davLock(t, target, "exclusive", "a", nil, http.StatusCreated)
		for _, m := range []string{"COPY", "MOVE"} {
			assertDAVError(t, davDo(t, m, site+"/src", "", map[string]string{"Destination": target}), http.StatusLocked, dav.CondLockTokenSubmitted, href)
		}
		// Only the holder's COPYs of the names before this one.
		if n := b.saw("COPY /src") + b.saw("MOVE /src"); n != i {
			t.Fatalf("%d writes onto the locked %s reached the backend", n-i, name)
		}
		// The lock's holder names it in a tagged list.
		davMust(t, http.StatusNoContent, "COPY", site+"/src", "", map[string]string{"Destination": target, "If": "<" + target + "> (<" + tok + ">)"})
	}
}

// A WebDAV method spelled in lower case is handled as its upper-case
// spelling, as kindOf takes its lock: a backend that upper-cases methods
// (Django, Werkzeug) moves on "move". Its Destination takes the in-flight
// lock, and a collection's "delete" needs the tokens of the locks inside.
func TestDAVMethodCase(t *testing.T) {
	b := newBackend(t)
	site := startCaddy(t, "lock {\n webdav\n zone DAVMethodCase\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, site+"/dst", "w", "X-Resource", "/dst")
	for _, m := range []string{"move", "copy", "Move"} {
		r := do(http.DefaultClient, m, site+"/src", map[string]string{"Destination": site + "/dst", "X-Resource": "/dst"})
		assertDAVError(t, r, http.StatusLocked, dav.CondLockTokenSubmitted, "/dst")
	}
	b.open("w")
	<-done

	dsite, db := davSite(t, "")
	db.put(t, "/src", "s")
	db.mkdir(t, "/coll")
	db.put(t, "/coll/f", "f")
	davLock(t, dsite+"/dst", "exclusive", "a", nil, http.StatusCreated)
	davLock(t, dsite+"/coll/f", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	for _, m := range []string{"copy", "move"} {
		assertDAVError(t, davDo(t, m, dsite+"/src", "", map[string]string{"Destination": dsite + "/dst"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/dst")
	}
	assertDAVError(t, davDo(t, "delete", dsite+"/coll", "", map[string]string{"Accept": "text/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/coll/f")
	if n := db.saw("copy /src") + db.saw("move /src") + db.saw("delete /coll"); n != 0 {
		t.Fatalf("%d refused writes reached the backend", n)
	}
}

func TestDAVBadInput(t *testing.T) {
	url, b := davSite(t, "max_lock_body 1KiB")
	b.put(t, "/b", "b")
	body := fmt.Sprintf(lockBody, "exclusive", "a")
	cases := []struct {
		name, method, body string
		header             map[string]string
		want               int
		reason             string
	}{
		{"If", "PUT", "x", map[string]string{"If": "(<urn:x"}, 400, "If header"},
		{"If mixed", "PUT", "x", map[string]string{"If": "(<urn:x>) </b> (<urn:y>)"}, 400, "If header"},
		{"If too many resources", "PUT", "x", map[string]string{"If": manyTags(40)}, 400, "more than 32 resources"},
		{"Timeout", "LOCK", body, map[string]string{"Timeout": "Second-x"}, 400, "Timeout"},
		{"Depth 1", "LOCK", body, map[string]string{"Depth": "1"}, 400, "Depth"},
		{"Depth junk", "LOCK", body, map[string]string{"Depth": "deep"}, 400, "Depth"},
		{"Depth 2 PROPFIND", "PROPFIND", "", map[string]string{"Depth": "2"}, 400, "Depth"},
		{"Depth 2 DELETE", "DELETE", "", map[string]string{"Depth": "2"}, 400, "Depth"},
		{"Depth junk PUT", "PUT", "x", map[string]string{"Depth": "infinite"}, 400, "Depth"},
		{"Depth junk GET", "GET", "", map[string]string{"Depth": "-1"}, 400, "Depth"},
		{"Lock-Token", "UNLOCK", "", map[string]string{"Lock-Token": "<not a uri>"}, 400, "Lock-Token"},
		{"XML", "LOCK", "<D:lockinfo xmlns:D='DAV:'><D:lockscope>", nil, 400, "lockinfo"},
		{"no scope", "LOCK", "<D:lockinfo xmlns:D='DAV:'><D:locktype><D:write/></D:locktype></D:lockinfo>", nil, 400, "lockscope"},
		{"DTD", "LOCK", `<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><D:lockinfo xmlns:D="DAV:"><D:owner>&a;</D:owner></D:lockinfo>`, nil, 400, "declarations"},
		{"too large", "LOCK", "<D:lockinfo xmlns:D='DAV:'>" + strings.Repeat(" ", 2000) + "</D:lockinfo>", nil, 413, "larger"},
		{"Destination NUL", "MOVE", "", map[string]string{"Destination": "/c%00d"}, 400, "NUL"},
		{"Destination NUL absolute", "COPY", "", map[string]string{"Destination": url + "/c%00d"}, 400, "NUL"},
	}
	for _, c := range cases {
		r := davDo(t, c.method, url+"/b", c.body, c.header)
		if r.status != c.want || !strings.Contains(r.body, c.reason) {
			t.Errorf("%s: %d %q, want %d with a reason mentioning %q", c.name, r.status, r.body, c.want, c.reason)
		}
	}
	if ls, _ := zoneStore(t, "TestDAVBadInput").List(context.Background()); len(ls) != 0 {
		t.Fatalf("bad requests left %d locks", len(ls))
	}
	// Two Destinations: the backend might take the one not checked.
	req, err := http.NewRequest("MOVE", url+"/b", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Add("Destination", "/c")
	req.Header.Add("Destination", "/d")
	if r := doRequest(http.DefaultClient, req); r.status != http.StatusBadRequest || !strings.Contains(r.body, "more than one Destination") {
		t.Errorf("two Destination headers: %d %q, want 400", r.status, r.body)
	}
	for _, req := range []string{"PUT /b", "PROPFIND /b", "DELETE /b", "GET /b", "MOVE /b", "COPY /b"} {
		if n := b.saw(req); n != 0 {
			t.Fatalf("a bad request reached the backend: %s", req)
		}
	}
	// A NUL byte in the path, read as well as written: a backend may take
	// it for the end of the path.
	for _, m := range []string{"PROPFIND", "GET", "PUT"} {
		if r := davDo(t, m, url+"/b%00.txt", "", nil); r.status != http.StatusBadRequest || !strings.Contains(r.body, "NUL") {
			t.Errorf("%s of a path with a NUL byte: %d %q, want 400", m, r.status, r.body)
		}
		if n := b.saw(m + " /b\x00.txt"); n != 0 {
			t.Fatalf("%s of a path with a NUL byte reached the backend", m)
		}
	}
	// A path deeper than the lock tables accept, read as well as written:
	// every WebDAV request walks the explicit locks of its ancestors.
	deep := deepKey(lockstore.MaxHierarchyDepth + 1)
	for _, m := range []string{"PROPFIND", "GET", "PUT"} {
		if r := davDo(t, m, url+deep, "", nil); r.status != http.StatusBadRequest || !strings.Contains(r.body, "segments") {
			t.Errorf("%s of a %d-segment path: %d %q, want 400", m, lockstore.MaxHierarchyDepth+1, r.status, r.body)
		}
		if n := b.saw(m + " " + deep); n != 0 {
			t.Fatalf("%s of a %d-segment path reached the backend", m, lockstore.MaxHierarchyDepth+1)
		}
	}
	// Good Depth headers pass, infinity in any case.
	propfind(t, url+"/b", "1", "")
	davMust(t, http.StatusNoContent, "DELETE", url+"/b", "", map[string]string{"Depth": "Infinity"})
}

// browserAccept is the Accept header of a browser navigating to a page.
const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

func TestIsDAVClient(t *testing.T) {
	for _, c := range []struct {
		method string
		header map[string]string
		want   bool
	}{
		{"PUT", nil, false},
		{"GET", nil, false},
		{"PUT", map[string]string{"Accept": "application/xml"}, true},
		{"PUT", map[string]string{"Accept": "text/xml"}, true},
		{"PUT", map[string]string{"Accept": "Text/XML; charset=utf-8"}, true},
		{"PUT", map[string]string{"Accept": "application/xml;q=0"}, false},
		{"PUT", map[string]string{"Accept": "application/xml;q=bad"}, false},
		{"PUT", map[string]string{"Accept": browserAccept}, false},
		{"GET", map[string]string{"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"}, false},
		{"PUT", map[string]string{"Accept": "application/xhtml+xml"}, false},
		{"PUT", map[string]string{"Accept": "*/*"}, false},
		{"PUT", map[string]string{"Accept": "application/json, application/xml"}, false},
		{"PUT", map[string]string{"Accept": "application/xml, application/json;q=0.5"}, true},
		{"PUT", map[string]string{"Accept": "application/xml;q=0.5, application/problem+json"}, false},
		{"PUT", map[string]string{"Accept": "application/problem+json;q=0.9, text/xml"}, true},
		{"PUT", map[string]string{"Accept": "text/html;q=0.1, text/xml"}, true},
		// WebDAV headers and methods count whatever Accept says.
		{"PUT", map[string]string{"Accept": browserAccept, "If": "(<urn:x>)"}, true},
		{"DELETE", map[string]string{"Depth": "infinity"}, true},
		{"PUT", map[string]string{"Lock-Token": "<urn:x>"}, true},
		{"COPY", map[string]string{"Accept": "application/json"}, true},
		{"PROPFIND", nil, true},
	} {
		r := httptest.NewRequest(c.method, "/x", nil)
		for k, v := range c.header {
			r.Header.Set(k, v)
		}
		if got := isDAVClient(r); got != c.want {
			t.Errorf("%s with %v: isDAVClient = %v, want %v", c.method, c.header, got, c.want)
		}
	}
}

func TestDAVTokenHolderWritesDoNotOverlap(t *testing.T) {
	// The in-flight lock still applies to the holder of the token.
	bk := newBackend(t)
	url := startCaddy(t, "lock {\n webdav\n zone TestDAVTokenHolderWritesDoNotOverlap\n}\nreverse_proxy {backend}", bk)
	tok, _ := davLock(t, url+"/h", "exclusive", "a", nil, http.StatusOK)
	done := holdWrite(t, bk, "PUT", url+"/h", "1", "If", "(<"+tok+">)")
	r := davDo(t, "PUT", url+"/h", "second", ifToken(tok))
	assertDAVError(t, r, http.StatusLocked, dav.CondLockTokenSubmitted, "/h")
	bk.open("1")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("first write: %d %s", r.status, r.body)
	}
	// newBackend fails the test if the two writes overlapped.
}

func TestDAVOptions(t *testing.T) {
	// What the backend announces is kept; classes 1 and 2 are added, and
	// LOCK and UNLOCK join its Allow list.
	opt := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("DAV", "1, <http://apache.org/dav/propset/fs/1>")
		w.Header().Set("Allow", "GET, PUT, OPTIONS")
		w.WriteHeader(http.StatusOK)
	}))
	defer opt.Close()
	url := startCaddy(t, "lock {\n webdav\n zone TestDAVOptions\n}\nreverse_proxy "+strings.TrimPrefix(opt.URL, "http://"), nil)
	r := davMust(t, http.StatusOK, "OPTIONS", url+"/", "", nil)
	if got := r.header.Get("DAV"); got != "1, 2, <http://apache.org/dav/propset/fs/1>" {
		t.Fatalf("DAV = %q", got)
	}
	if got := r.header.Get("Allow"); got != "GET, PUT, OPTIONS, LOCK, UNLOCK" {
		t.Fatalf("Allow = %q", got)
	}
	// A backend that knows nothing of WebDAV.
	bk := newBackend(t)
	url = startCaddy(t, "lock {\n webdav\n zone TestDAVOptionsPlain\n}\nreverse_proxy {backend}", bk)
	if got := davMust(t, http.StatusOK, "OPTIONS", url+"/", "", nil).header.Get("DAV"); got != "1, 2" {
		t.Fatalf("DAV = %q, want 1, 2", got)
	}
}

func TestDAVPropfind(t *testing.T) {
	url, b := davSite(t, "")
	b.mkdir(t, "/dir")
	b.put(t, "/dir/locked", "x")
	b.put(t, "/dir/free", "y")
	tok, _ := davLock(t, url+"/dir/locked", "shared", "alice", map[string]string{"Depth": "0"}, http.StatusOK)

	ms := propfind(t, url+"/dir", "1", `<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>`)
	if len(ms.Responses) != 3 {
		t.Fatalf("%d responses, want 3", len(ms.Responses))
	}
	for _, resp := range ms.Responses {
		var ok, lds, sls int
		for _, ps := range resp.Propstat {
			if ps.Prop.LockDiscovery != nil {
				lds++
			}
			sls += len(ps.Prop.SupportedLock)
			if strings.Contains(ps.Status, " 200 ") {
				ok++
				if ps.Prop.LockDiscovery == nil || len(ps.Prop.SupportedLock) != 1 {
					t.Fatalf("%s: lock properties missing from the 200 propstat", resp.Href)
				}
				if e := ps.Prop.SupportedLock[0].Entries; len(e) != 2 || e[0].Exclusive == nil || e[1].Shared == nil {
					t.Fatalf("%s: supportedlock = %+v, want exclusive and shared", resp.Href, e)
				}
				locks := ps.Prop.LockDiscovery.Locks
				if strings.HasSuffix(resp.Href, "/locked") {
					if len(locks) != 1 || locks[0].Token != tok || locks[0].Owner != "http://example.org/~alice" ||
						locks[0].Root != "/dir/locked" || locks[0].Scope.Shared == nil || locks[0].Depth != "0" {
						t.Fatalf("lockdiscovery of %s = %+v", resp.Href, locks)
					}
				} else if len(locks) != 0 {
					t.Fatalf("lockdiscovery of unlocked %s = %+v", resp.Href, locks)
				}
				if ps.Prop.DisplayName == nil {
					t.Fatalf("%s: the backend's properties were lost", resp.Href)
				}
			}
		}
		if ok != 1 || lds != 1 || sls != 1 {
			t.Fatalf("%s: %d ok propstats, %d lockdiscovery, %d supportedlock; want 1 each", resp.Href, ok, lds, sls)
		}
	}

	// Asked by name, the backend reports lockdiscovery as missing (404);
	// the answer has it once, in the 200 propstat.
	ms = propfind(t, url+"/dir/locked", "0", `<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/><D:displayname/></D:prop></D:propfind>`)
	if len(ms.Responses) != 1 {
		t.Fatalf("%d responses", len(ms.Responses))
	}
	found := 0
	for _, ps := range ms.Responses[0].Propstat {
		if ps.Prop.LockDiscovery != nil {
			found++
			if !strings.Contains(ps.Status, " 200 ") || len(ps.Prop.LockDiscovery.Locks) != 1 {
				t.Fatalf("lockdiscovery in propstat %q: %+v", ps.Status, ps.Prop.LockDiscovery)
			}
		}
		if len(ps.Prop.SupportedLock) != 0 {
			t.Fatal("supportedlock added though not asked for")
		}
	}
	if found != 1 {
		t.Fatalf("lockdiscovery appears %d times", found)
	}
	// Not asked for: the answer is the backend's.
	ms = propfind(t, url+"/dir/locked", "0", `<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:displayname/></D:prop></D:propfind>`)
	for _, ps := range ms.Responses[0].Propstat {
		if ps.Prop.LockDiscovery != nil {
			t.Fatal("lockdiscovery added though not asked for")
		}
	}
}

func TestDAVPlaceholders(t *testing.T) {
	// A deferred header shows the result.
	url, b := davSiteAfter(t, "header >X-Lock {http.lock.result}", "")
	b.put(t, "/ph", "x")
	if r := davMust(t, http.StatusOK, "GET", url+"/ph", "", nil); r.header.Get("X-Lock") != "none" {
		t.Fatalf("GET: X-Lock = %q, want none", r.header.Get("X-Lock"))
	}
	tok, _ := davLock(t, url+"/ph", "exclusive", "a", nil, http.StatusOK)
	if r := davMust(t, http.StatusCreated, "PUT", url+"/ph", "y", ifToken(tok)); r.header.Get("X-Lock") != "acquired" {
		t.Fatalf("PUT with the token: X-Lock = %q, want acquired", r.header.Get("X-Lock"))
	}
	if r := davDo(t, "PUT", url+"/ph", "y", nil); r.status != http.StatusLocked || r.header.Get("X-Lock") != "conflict" {
		t.Fatalf("PUT without the token: %d, X-Lock = %q, want 423 conflict", r.status, r.header.Get("X-Lock"))
	}
}

// {http.lock.wait} is set on every path in WebDAV mode too, as it is
// without webdav: requests that take no lock show 0s, not the placeholder's
// name.
func TestDAVWaitPlaceholder(t *testing.T) {
	url, b := davSiteAfter(t, "header >X-Lock-Wait {http.lock.wait}", "")
	b.put(t, "/pw", "x")
	for _, m := range []string{"GET", "OPTIONS", "PROPFIND"} {
		if r := davDo(t, m, url+"/pw", "", map[string]string{"Depth": "0"}); r.header.Get("X-Lock-Wait") != "0s" {
			t.Errorf("%s: %d, X-Lock-Wait = %q, want 0s", m, r.status, r.header.Get("X-Lock-Wait"))
		}
	}
	davLock(t, url+"/pw", "exclusive", "a", nil, http.StatusOK)
	r := davDo(t, "PUT", url+"/pw", "y", nil)
	if _, err := time.ParseDuration(r.header.Get("X-Lock-Wait")); r.status != http.StatusLocked || err != nil {
		t.Errorf("PUT without the token: %d, X-Lock-Wait = %q, want 423 and a duration", r.status, r.header.Get("X-Lock-Wait"))
	}
}

func TestCoalesce(t *testing.T) {
	for _, c := range []struct {
		in, want []lockstore.Request
	}{
		{[]lockstore.Request{{Key: "/a/b", Kind: lockstore.Shared}, {Key: "/a", Kind: lockstore.Exclusive}}, []lockstore.Request{{Key: "/a", Kind: lockstore.Exclusive}}},
		{[]lockstore.Request{{Key: "/a", Kind: lockstore.Shared}, {Key: "/a/b", Kind: lockstore.Exclusive}}, []lockstore.Request{{Key: "/a", Kind: lockstore.Exclusive}}},
		{[]lockstore.Request{{Key: "/a", Kind: lockstore.Exclusive}, {Key: "/a", Kind: lockstore.Exclusive}}, []lockstore.Request{{Key: "/a", Kind: lockstore.Exclusive}}},
		{[]lockstore.Request{{Key: "/a-b", Kind: lockstore.Exclusive}, {Key: "/a", Kind: lockstore.Shared}, {Key: "/a/b", Kind: lockstore.Exclusive}},
			[]lockstore.Request{{Key: "/a", Kind: lockstore.Exclusive}, {Key: "/a-b", Kind: lockstore.Exclusive}}},
		{[]lockstore.Request{{Key: "/z", Kind: lockstore.Exclusive}, {Key: "/", Kind: lockstore.Shared}}, []lockstore.Request{{Key: "/", Kind: lockstore.Exclusive}}},
	} {
		if got := coalesce(slices.Clone(c.in)); !slices.Equal(got, c.want) {
			t.Errorf("coalesce(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

// A move into the moved collection's own subtree takes one in-flight
// lock, not two that conflict with each other.
func TestDAVMoveIntoItself(t *testing.T) {
	url, b := davSite(t, "")
	b.mkdir(t, "/c")
	r := davDo(t, "MOVE", url+"/c", "", map[string]string{"Destination": url + "/c/sub"})
	if r.status == http.StatusLocked {
		t.Fatalf("MOVE into its own subtree refused by its own lock: %s", r.body)
	}
	if b.saw("MOVE /c") != 1 {
		t.Fatal("MOVE did not reach the backend")
	}
}

// A WebDAV request under way across a reload is served to its end by
// the config it started under, with the zone's locks: a PROPFIND's
// lockdiscovery is read after the backend has answered, once the old
// handler is cleaned up and, with Redis, once a reload that changed the
// store's settings has unloaded the old tables (whose client must stay
// open until the request is done).
func TestDAVReloadDuringPropfind(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		testReloadDuringPropfind(t, func(n int) string { return fmt.Sprintf("retry_after %ds", n) })
	})
	t.Run("redis", func(t *testing.T) {
		srv := startRedis(t)
		testReloadDuringPropfind(t, func(n int) string {
			return fmt.Sprintf("store redis {\n address %s\n timeout %dms\n }", srv.Addr, 200+n)
		})
	})
}

// testReloadDuringPropfind runs a PROPFIND across a reload from the
// lock settings config(1) to config(2).
func testReloadDuringPropfind(t *testing.T, config func(n int) string) {
	b := newDAVBackend(t)
	port := freePort(t)
	url := loadCaddy(t, port, "", davSiteConfig(t, b, "", config(1)), nil)
	t.Cleanup(func() { _ = caddy.Stop() })
	b.put(t, "/f", "f")
	tok, _ := davLock(t, url+"/f", "exclusive", "a", nil, http.StatusOK)

	type reply struct {
		status int
		body   string
		err    error
	}
	done := make(chan reply, 1)
	go func() {
		req, _ := http.NewRequest("PROPFIND", url+"/f", strings.NewReader(
			`<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/></D:prop></D:propfind>`))
		req.Header.Set("Depth", "0")
		req.Header.Set("X-Delay", "1s")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- reply{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		done <- reply{resp.StatusCode, string(body), err}
	}()
	waitFor(t, 5*time.Second, "the PROPFIND to reach the backend", func() bool { return b.saw("PROPFIND /f") == 1 })
	loadCaddy(t, port, "", davSiteConfig(t, b, "", config(2)), nil)
	r := <-done
	if r.err != nil || r.status != http.StatusMultiStatus {
		t.Fatalf("PROPFIND across the reload: %d %v %s", r.status, r.err, r.body)
	}
	var ms struct {
		Tokens []string `xml:"DAV: response>propstat>prop>lockdiscovery>activelock>locktoken>href"`
	}
	if err := xml.Unmarshal([]byte(r.body), &ms); err != nil || !slices.Equal(ms.Tokens, []string{tok}) {
		t.Fatalf("PROPFIND across the reload: lock tokens %q (%v), want %s\n%s", ms.Tokens, err, tok, r.body)
	}
}

// A DELETE that the backend answers with 207 (part of it failed) leaves
// the locks inside in place: which members are gone is not read from the
// body, and a member that remains must not lose its lock.
func TestDAVPartialDeleteKeepsLocks(t *testing.T) {
	url, b := davSite(t, "")
	b.mkdir(t, "/c")
	b.put(t, "/c/a", "a")
	b.put(t, "/c/b", "b")
	tok, _ := davLock(t, url+"/c/b", "exclusive", "a", map[string]string{"Depth": "0"}, http.StatusOK)
	r := davDo(t, "DELETE", url+"/c", "", map[string]string{"If": "</c/b> (<" + tok + ">)", "X-Partial": "1"})
	if r.status != http.StatusMultiStatus {
		t.Fatalf("partial DELETE: %d %s", r.status, r.body)
	}
	assertDAVError(t, davDo(t, "PUT", url+"/c/b", "changed", map[string]string{"Accept": "application/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/c/b")
	davMust(t, http.StatusCreated, "PUT", url+"/c/b", "changed", ifToken(tok))
	// A DELETE that succeeds removes the lock with its resource.
	davMust(t, http.StatusNoContent, "DELETE", url+"/c", "", map[string]string{"If": "</c/b> (<" + tok + ">)"})
	if ls, _ := zoneStore(t, "TestDAVPartialDeleteKeepsLocks").List(context.Background()); len(ls) != 0 {
		t.Fatalf("locks left after the DELETE: %+v", ls)
	}
}

// A WebDAV write that waits in vain is in the wait histogram and has
// {http.lock.wait} set, as in a zone without webdav.
func TestWebDAVWaitInVainObserved(t *testing.T) {
	b := newBackend(t)
	zone := fmt.Sprintf("davwait%d", meteredRuns.Add(1))
	url, admin := startCaddyAdmin(t, "metrics",
		"header >X-Wait {http.lock.wait}\nlock {\n\tzone "+zone+"\n\twebdav\n\twait 200ms\n}\nreverse_proxy {backend}", b)
	metrics := admin + "/metrics"
	count := `caddy_lock_wait_seconds_count{zone="` + zone + `"}`
	first := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	before := metricValue(t, metrics, count)
	r := do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
	assertLocked(t, r, "/doc")
	if d, err := time.ParseDuration(r.header.Get("X-Wait")); err != nil || d < 200*time.Millisecond {
		t.Fatalf("{http.lock.wait} of a write that waited 200ms in vain: %q (%v)", r.header.Get("X-Wait"), err)
	}
	if v := metricValue(t, metrics, count) - before; v != 1 {
		t.Fatalf("wait histogram counted %v waits, want 1", v)
	}
	b.open("w")
	<-first
}
