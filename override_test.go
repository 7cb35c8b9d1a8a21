package caddylock

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// frameworkBackend reads requests as web frameworks do before it hands
// them to a recording backend: the method from an override header or a
// "_method" query parameter (Slim 4, Symfony, Express's method-override;
// names compared as PHP's $_SERVER does, "_" as "-"), the path from
// X-Original-URL or X-Rewrite-URL (IIS URL Rewrite, Zend, older Symfony).
// It records the path-rewriting headers that reached it.
type frameworkBackend struct {
	*httptest.Server
	mu        sync.Mutex
	rewriting []string // path-rewriting headers that reached the backend
}

func newFrameworkBackend(t *testing.T, next http.Handler) *frameworkBackend {
	f := &frameworkBackend{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for name, vals := range r.Header {
			switch foldHeaderName(name) {
			case "x-original-url", "x-rewrite-url": // foldHeaderName: as PHP's $_SERVER
				f.mu.Lock()
				f.rewriting = append(f.rewriting, name+": "+vals[0])
				f.mu.Unlock()
				r.URL.Path = vals[0]
			case "x-http-method-override", "x-http-method", "x-method-override":
				r.Method = strings.ToUpper(vals[0])
			}
		}
		if m := r.URL.Query().Get("_method"); m != "" {
			r.Method = strings.ToUpper(m)
		}
		next.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// startFrameworkSite starts Caddy with site ({backend} is a framework
// backend in front of a recording backend).
func startFrameworkSite(t *testing.T, site string) (string, *backend, *frameworkBackend) {
	t.Helper()
	b := newBackend(t)
	f := newFrameworkBackend(t, http.HandlerFunc(b.serve))
	site = strings.ReplaceAll(site, "{backend}", strings.TrimPrefix(f.URL, "http://"))
	return startCaddy(t, site, nil), b, f
}

// assertAmbiguous checks a 400 refusal of an ambiguous request: a problem
// body with the title, {http.lock.result} "ambiguous", no Retry-After,
// and that it did not reach the backend.
func assertAmbiguous(t *testing.T, r result, title string) {
	t.Helper()
	if r.err != nil || r.status != http.StatusBadRequest {
		t.Fatalf("status %d (err %v), want 400; body: %s", r.status, r.err, r.body)
	}
	if r.header.Get("X-Backend") != "" {
		t.Fatal("the refused request reached the backend")
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" || r.header.Get("Retry-After") != "" {
		t.Fatalf("Content-Type %q, Retry-After %q", ct, r.header.Get("Retry-After"))
	}
	var p struct {
		Title, Detail string
		Status        int
	}
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Status != 400 || p.Title != title || p.Detail == "" {
		t.Fatalf("problem %+v, want title %q", p, title)
	}
	if got := r.header.Get("X-Lock-Result"); got != resultAmbiguous {
		t.Fatalf("{http.lock.result} = %q, want %q", got, resultAmbiguous)
	}
}

// A GET (or POST) that a framework reads as a PUT takes the PUT's lock:
// while a PUT on the path is in flight it is refused, in every spelling of
// the override.
func TestMethodOverrideTakesTheLock(t *testing.T) {
	url, b, _ := startFrameworkSite(t, "header >X-Lock-Result {http.lock.result}\nlock {\n zone override\n}\nreverse_proxy {backend}")
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	var results []result
	for _, tc := range []struct {
		method, query string
		header        map[string]string
	}{
		{"GET", "", map[string]string{"X-HTTP-Method-Override": "PUT"}},
		{"GET", "", map[string]string{"X-HTTP-Method": "put"}},
		{"HEAD", "", map[string]string{"X-Method-Override": "DELETE"}},
		{"GET", "?_method=PUT", nil},
		{"GET", "?_%6Dethod=PUT", nil},
		{"GET", "?_METHOD=PATCH", nil},
		{"OPTIONS", "?x=1&.method=PUT", nil},
	} {
		r := do(http.DefaultClient, tc.method, url+"/doc"+tc.query, tc.header)
		if tc.method == http.MethodHead {
			if r.status != http.StatusLocked {
				t.Errorf("%s %+v: status %d, want 423", tc.method, tc.header, r.status)
			}
			continue
		}
		t.Logf("%s %s %v: %d", tc.method, tc.query, tc.header, r.status)
		results = append(results, r)
	}
	b.open("w")
	for _, r := range results {
		assertLocked(t, r, "/doc")
	}
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the held write: %d", r.status)
	}
	// Once free, the override passes and the backend writes.
	r := mustDo(t, http.MethodGet, url+"/doc", map[string]string{"X-HTTP-Method-Override": "PUT"}, http.StatusOK)
	if r.body != "ok PUT /doc" || r.header.Get("X-Lock-Result") != resultAcquired {
		t.Fatalf("the override once free: %q, result %q", r.body, r.header.Get("X-Lock-Result"))
	}
	// A plain read takes no lock, as before.
	if r := mustDo(t, http.MethodGet, url+"/doc?method=x", nil, http.StatusOK); r.header.Get("X-Lock-Result") != resultNone {
		t.Fatalf("a plain GET: result %q", r.header.Get("X-Lock-Result"))
	}
}

// A server that lets "_" header names through (Caddy drops them by
// default) passes X_HTTP_Method_Override, which PHP reads as the override
// header: it counts as one.
func TestMethodOverrideUnderscoreSpelling(t *testing.T) {
	b := newBackend(t)
	f := newFrameworkBackend(t, http.HandlerFunc(b.serve))
	global := "admin off\nservers {\n expected_underscore_headers X_HTTP_Method_Override\n}"
	site := "lock {\n zone override_underscore\n}\nreverse_proxy " + strings.TrimPrefix(f.URL, "http://")
	u := loadCaddy(t, freePort(t), global, site, nil)
	t.Cleanup(func() { _ = caddy.Stop() })
	done := holdWrite(t, b, http.MethodPut, u+"/doc", "w")
	r := sendMethod(t, http.MethodGet, u+"/doc", "X_HTTP_Method_Override", "PUT")
	b.open("w")
	<-done
	assertLocked(t, r, "/doc")
}

// sendMethod is sendPut with another method.
func sendMethod(t *testing.T, method, u string, header ...string) result {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header[header[i]] = append(req.Header[header[i]], header[i+1])
	}
	return doRequest(http.DefaultClient, req)
}

// With "exclusive PUT DELETE", a POST takes no lock; one carrying an
// override to PUT takes PUT's exclusive lock, so it neither passes a held
// PUT nor lets a PUT pass it.
func TestMethodOverrideOnPostUnderExclusiveList(t *testing.T) {
	url, b, _ := startFrameworkSite(t, "lock {\n zone override_post\n exclusive PUT DELETE\n}\nreverse_proxy {backend}")
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	r := do(http.DefaultClient, http.MethodPost, url+"/doc", map[string]string{"X-HTTP-Method-Override": "PUT"})
	b.open("w") // before asserting: a failed test must not leave the write held
	<-done
	assertLocked(t, r, "/doc")
	done = holdWrite(t, b, http.MethodPost, url+"/doc", "p", "X-HTTP-Method-Override", "DELETE")
	r = do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
	b.open("p")
	assertLocked(t, r, "/doc")
	if r := <-done; r.status != http.StatusOK || r.body != "ok DELETE /doc" {
		t.Fatalf("the held POST: %d %q", r.status, r.body)
	}
	// A POST without an override takes no lock, as configured.
	mustDo(t, http.MethodPost, url+"/doc", nil, http.StatusOK)
}

// Override values that are not methods, or that differ, are refused:
// backends would read them differently.
func TestMethodOverrideAmbiguousRefused(t *testing.T) {
	url, b, _ := startFrameworkSite(t, "header >X-Lock-Result {http.lock.result}\nlock {\n zone override_bad\n}\nreverse_proxy {backend}")
	for _, tc := range []struct {
		query  string
		header map[string]string
		title  string
	}{
		{"", map[string]string{"X-HTTP-Method-Override": "PUT", "X-HTTP-Method": "DELETE"}, "Conflicting method overrides"},
		{"", map[string]string{"X-HTTP-Method-Override": "GET, PUT"}, "Conflicting method overrides"},
		{"?_method=PUT&_method=DELETE", nil, "Conflicting method overrides"},
		{"?_method=GET", map[string]string{"X-Method-Override": "PUT"}, "Conflicting method overrides"},
		{"", map[string]string{"X-HTTP-Method-Override": "P(UT"}, "Invalid method override"},
		{"?_method=P%20UT", nil, "Invalid method override"},
	} {
		assertAmbiguous(t, do(http.DefaultClient, http.MethodGet, url+"/doc"+tc.query, tc.header), tc.title)
	}
	if writes, reads, _ := b.counts(); writes+reads != 0 {
		t.Fatalf("%d requests reached the backend", writes+reads)
	}
	// The same method twice, in any case, is one reading.
	r := mustDo(t, http.MethodGet, url+"/doc?_method=put", map[string]string{"X-HTTP-Method-Override": "PUT"}, http.StatusOK)
	if r.body != "ok PUT /doc" {
		t.Fatalf("body %q", r.body)
	}
}

// X-Original-URL and X-Rewrite-URL never reach the backend, in any
// spelling: a framework would write the path they name under the lock of
// the request's own path.
func TestPathRewriteHeadersStripped(t *testing.T) {
	url, b, f := startFrameworkSite(t, "lock {\n zone rewrite\n}\nreverse_proxy {backend}")
	done := holdWrite(t, b, http.MethodPut, url+"/locked", "w")
	var writes, reads []result
	names := []string{"X-Original-URL", "X-Rewrite-URL", "x-original-url"}
	for _, h := range names {
		writes = append(writes, do(http.DefaultClient, http.MethodPut, url+"/public", map[string]string{h: "/locked"}))
		// Reads too: the header would change what is read.
		reads = append(reads, do(http.DefaultClient, http.MethodGet, url+"/public", map[string]string{h: "/locked"}))
	}
	b.open("w") // before asserting: a failed test must not leave the write held
	<-done
	for i, h := range names {
		if w, r := writes[i], reads[i]; w.status != http.StatusOK || w.body != "ok PUT /public" || r.body != "ok GET /public" {
			t.Fatalf("%s: the backend answered %d %q and %q", h, w.status, w.body, r.body)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.rewriting) > 0 {
		t.Fatalf("path-rewriting headers reached the backend: %q", f.rewriting)
	}
}

// In webdav mode a GET that a framework reads as a DELETE or MOVE is
// checked as one: without the lock token it is refused, so a resource
// under another user's WebDAV lock is neither deleted nor moved.
func TestMethodOverrideWebDAV(t *testing.T) {
	dav := newDAVBackend(t)
	target, _ := url.Parse(dav.URL)
	f := newFrameworkBackend(t, httputil.NewSingleHostReverseProxy(target))
	site := "header >X-Lock-Result {http.lock.result}\nlock {\n webdav\n zone override_dav\n}\nreverse_proxy " + strings.TrimPrefix(f.URL, "http://")
	u := startCaddy(t, site, nil)
	dav.put(t, "/doc", "content")
	token, _ := davLock(t, u+"/doc", "exclusive", "alice", nil, http.StatusOK)

	for _, h := range []map[string]string{
		{"X-HTTP-Method-Override": "DELETE"},
		{"X-HTTP-Method": "MOVE", "Destination": u + "/moved"},
		{"X-HTTP-Method-Override": "PUT"},
	} {
		if r := davDo(t, http.MethodGet, u+"/doc", "", h); r.status != http.StatusLocked {
			t.Fatalf("GET with %v: status %d, want 423; body %s", h, r.status, r.body)
		}
	}
	if r := davDo(t, http.MethodPost, u+"/doc?_method=DELETE", "", nil); r.status != http.StatusLocked {
		t.Fatalf("POST ?_method=DELETE: status %d, want 423", r.status)
	}
	if !dav.exists("/doc") || dav.exists("/moved") {
		t.Fatal("a GET with an override changed a locked resource")
	}
	// Checked as a MOVE, not as the GET it is: its Destination is locked.
	dav.put(t, "/src", "src")
	dav.put(t, "/dst", "dst")
	davLock(t, u+"/dst", "exclusive", "bob", nil, http.StatusOK)
	if r := davDo(t, http.MethodGet, u+"/src", "", map[string]string{"X-HTTP-Method-Override": "MOVE", "Destination": u + "/dst", "Overwrite": "T"}); r.status != http.StatusLocked {
		t.Fatalf("GET /src with a MOVE override onto a locked /dst: status %d, want 423; body %s", r.status, r.body)
	}
	if !dav.exists("/src") {
		t.Fatal("a GET with a MOVE override moved onto a locked resource")
	}
	// Overrides the WebDAV checks cannot follow are refused.
	for _, tc := range []struct {
		method string
		header map[string]string
	}{
		{"GET", map[string]string{"X-HTTP-Method-Override": "UNLOCK", "Lock-Token": "<" + token + ">"}},
		{"PUT", map[string]string{"X-HTTP-Method-Override": "GET"}},
		{"POST", map[string]string{"X-HTTP-Method-Override": "COPY", "Destination": u + "/copy"}},
	} {
		assertAmbiguous(t, davDo(t, tc.method, u+"/doc", "", tc.header), "Method override not supported")
	}
	// With the token, the override goes through as the method it names.
	if r := davDo(t, http.MethodGet, u+"/doc", "", map[string]string{"X-HTTP-Method-Override": "DELETE", "If": "(<" + token + ">)"}); r.status != http.StatusNoContent {
		t.Fatalf("GET with DELETE override and the token: %d %s", r.status, r.body)
	}
	if dav.exists("/doc") {
		t.Fatal("the DELETE override with the token did not delete")
	}
	// A plain GET is unaffected.
	dav.put(t, "/other", "x")
	if r := davDo(t, http.MethodGet, u+"/other", "", nil); r.status != http.StatusOK || r.body != "x" {
		t.Fatalf("plain GET: %d %q", r.status, r.body)
	}
}
