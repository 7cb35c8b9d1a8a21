package caddylock

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/webdav"
)

// davBackend is a real WebDAV server without locks: golang.org/x/net/webdav
// on an in-memory file system with a lock system that grants everything,
// as many legacy servers do. It records what reaches it: requests per
// method and path, writes that overlapped on one resource, and the
// conditional headers it was sent.
type davBackend struct {
	*httptest.Server
	fs       webdav.FileSystem
	mu       sync.Mutex
	seen     []string // "METHOD /path"
	inflight map[string]int
	overlaps int
	ifSeen   []string // If headers that reached the backend
	ifMatch  []string // If-Match headers that reached the backend
}

// grantAll is a webdav.LockSystem that grants every lock and confirms
// every condition: a backend with no lock support.
type grantAll struct{}

func (grantAll) Confirm(time.Time, string, string, ...webdav.Condition) (func(), error) {
	return func() {}, nil
}
func (grantAll) Create(time.Time, webdav.LockDetails) (string, error) { return "backend-token", nil }
func (grantAll) Refresh(time.Time, string, time.Duration) (webdav.LockDetails, error) {
	return webdav.LockDetails{}, nil
}
func (grantAll) Unlock(time.Time, string) error { return nil }

func newDAVBackend(t *testing.T) *davBackend {
	b := &davBackend{
		fs:       webdav.NewMemFS(),
		inflight: map[string]int{},
	}
	dav := &webdav.Handler{FileSystem: b.fs, LockSystem: grantAll{}}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res := normalizePath(r.URL.Path)
		write := !slices.Contains([]string{"GET", "HEAD", "OPTIONS", "PROPFIND"}, r.Method)
		b.mu.Lock()
		b.seen = append(b.seen, r.Method+" "+r.URL.Path)
		if v := r.Header.Get("If"); v != "" {
			b.ifSeen = append(b.ifSeen, v)
		}
		if v := r.Header.Get("If-Match"); v != "" {
			b.ifMatch = append(b.ifMatch, v)
		}
		if write {
			b.inflight[res]++
			if b.inflight[res] > 1 {
				b.overlaps++
			}
		}
		b.mu.Unlock()
		defer func() {
			if write {
				b.mu.Lock()
				b.inflight[res]--
				b.mu.Unlock()
			}
		}()
		dav.ServeHTTP(w, r)
	}))
	t.Cleanup(b.Close)
	return b
}

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

// davSite starts Caddy with the lock handler in WebDAV mode (plus extra
// lines) in front of a new davBackend, in a zone of its own.
func davSite(t *testing.T, extra string) (string, *davBackend) {
	t.Helper()
	b := newDAVBackend(t)
	zone := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	site := fmt.Sprintf("lock {\n webdav\n zone %s\n %s\n}\nreverse_proxy %s\n", zone, extra, strings.TrimPrefix(b.URL, "http://"))
	return startCaddy(t, site, nil), b
}

// davDo sends a request with a body (may be "") and headers.
func davDo(t *testing.T, method, url, body string, header map[string]string) result {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{status: resp.StatusCode, header: resp.Header, body: string(data)}
}

func davMust(t *testing.T, want int, method, url, body string, header map[string]string) result {
	t.Helper()
	r := davDo(t, method, url, body, header)
	if r.status != want {
		t.Fatalf("%s %s: status %d, want %d; body: %s", method, url, r.status, want, r.body)
	}
	return r
}

const lockBody = `<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:%s/></D:lockscope><D:locktype><D:write/></D:locktype>
<D:owner><D:href>http://example.org/~%s</D:href></D:owner></D:lockinfo>`

// davLock takes a lock and returns its token.
func davLock(t *testing.T, url, scope, who string, header map[string]string, want int) (string, activeLockXML) {
	t.Helper()
	r := davMust(t, want, "LOCK", url, fmt.Sprintf(lockBody, scope, who), header)
	tok := r.header.Get("Lock-Token")
	if len(tok) < 3 || tok[0] != '<' || tok[len(tok)-1] != '>' || !strings.HasPrefix(tok, "<urn:uuid:") {
		t.Fatalf("Lock-Token = %q, want <urn:uuid:…>", tok)
	}
	if ct := r.header.Get("Content-Type"); !strings.Contains(ct, "xml") {
		t.Fatalf("LOCK answer Content-Type = %q", ct)
	}
	locks := parseLockDiscovery(t, r.body)
	if len(locks) != 1 {
		t.Fatalf("LOCK answer has %d activelocks, want 1: %s", len(locks), r.body)
	}
	if locks[0].Token != tok[1:len(tok)-1] {
		t.Fatalf("locktoken %q differs from Lock-Token %q", locks[0].Token, tok)
	}
	return tok[1 : len(tok)-1], locks[0]
}

// activeLockXML is DAV:activelock as a client reads it.
type activeLockXML struct {
	Scope struct {
		Exclusive *struct{} `xml:"DAV: exclusive"`
		Shared    *struct{} `xml:"DAV: shared"`
	} `xml:"DAV: lockscope"`
	Type struct {
		Write *struct{} `xml:"DAV: write"`
	} `xml:"DAV: locktype"`
	Depth   string `xml:"DAV: depth"`
	Owner   string `xml:"DAV: owner>href"`
	Timeout string `xml:"DAV: timeout"`
	Token   string `xml:"DAV: locktoken>href"`
	Root    string `xml:"DAV: lockroot>href"`
}

func parseLockDiscovery(t *testing.T, body string) []activeLockXML {
	t.Helper()
	var doc struct {
		XMLName xml.Name        `xml:"DAV: prop"`
		Locks   []activeLockXML `xml:"DAV: lockdiscovery>activelock"`
	}
	if err := xml.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("lock answer %q: %v", body, err)
	}
	return doc.Locks
}

// assertDAVError checks a DAV:error answer naming condition and hrefs.
func assertDAVError(t *testing.T, r result, status int, condition string, hrefs ...string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/xml") {
		t.Fatalf("Content-Type = %q, want application/xml", ct)
	}
	var doc struct {
		XMLName xml.Name `xml:"DAV: error"`
		Conds   []struct {
			XMLName xml.Name
			Hrefs   []string `xml:"DAV: href"`
		} `xml:",any"`
	}
	if err := xml.Unmarshal([]byte(r.body), &doc); err != nil {
		t.Fatalf("DAV:error body %q: %v", r.body, err)
	}
	if len(doc.Conds) != 1 || doc.Conds[0].XMLName.Space != "DAV:" || doc.Conds[0].XMLName.Local != condition {
		t.Fatalf("DAV:error = %s, want condition %s", r.body, condition)
	}
	if hrefs != nil && !slices.Equal(doc.Conds[0].Hrefs, hrefs) {
		t.Fatalf("DAV:error hrefs = %v, want %v", doc.Conds[0].Hrefs, hrefs)
	}
	if status == http.StatusLocked && r.header.Get("Retry-After") == "" {
		t.Fatal("423 without Retry-After")
	}
}

func ifToken(tok string) map[string]string { return map[string]string{"If": "(<" + tok + ">)"} }

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
	assertDAVError(t, r, http.StatusLocked, CondLockTokenSubmitted, "/doc.txt")
	for _, m := range []string{"DELETE", "PROPPATCH", "POST", "PATCH"} {
		r := davDo(t, m, url+"/doc.txt", "", map[string]string{"Accept": "text/xml"})
		assertDAVError(t, r, http.StatusLocked, CondLockTokenSubmitted, "/doc.txt")
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
	assertDAVError(t, r, http.StatusConflict, CondLockTokenMatchesRequestURI)
	r = davDo(t, "UNLOCK", url+"/other", "", map[string]string{"Lock-Token": "<" + tok + ">"})
	assertDAVError(t, r, http.StatusConflict, CondLockTokenMatchesRequestURI)
	davMust(t, http.StatusNoContent, "UNLOCK", url+"/doc.txt", "", map[string]string{"Lock-Token": "<" + tok + ">"})
	if b.saw("UNLOCK /doc.txt") != 0 {
		t.Fatal("UNLOCK was forwarded to the backend")
	}
	// Unlocked: anybody writes again; the token is gone.
	davMust(t, http.StatusCreated, "PUT", url+"/doc.txt", "free", nil)
	r = davDo(t, "UNLOCK", url+"/doc.txt", "", map[string]string{"Lock-Token": "<" + tok + ">"})
	assertDAVError(t, r, http.StatusConflict, CondLockTokenMatchesRequestURI)
}
