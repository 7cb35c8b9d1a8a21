package caddylock

import (
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/net/webdav"
)

// Test helpers shared by the root package's tests: a real Caddy (startCaddy,
// loadCaddy, startCaddyAdmin), real backends that record what reached them
// (newBackend, newDAVBackend, overlapRecorder), and the request and
// assertion helpers built on them.

func TestMain(m *testing.M) {
	// Keep Caddy's storage and autosave out of the user's home.
	dir, err := os.MkdirTemp("", "caddy-lock-test")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", dir)
	os.Setenv("XDG_CONFIG_HOME", dir)
	code := m.Run()
	_ = caddy.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// backend is a real HTTP server that records what reaches it: writes and
// reads per resource, and writes that overlapped on one resource (what
// the lock exists to prevent). A request with X-Hold: <id> is held at the
// backend until the test opens that gate, one with X-Delay: <duration>
// for that long; X-Resource names the resource when a test sends several
// spellings of one path.
type backend struct {
	*httptest.Server
	mu      sync.Mutex
	writing overlapRecorder
	writes  int
	reads   int
	gateSet
	started   chan string
	cancelled map[string]bool // hold id -> the backend saw its request cancelled
	closed    chan struct{}
}

// newUncheckedBackend is newBackend without the overlap check, for a
// test in which writes pass unlocked on purpose (fail_open).
func newUncheckedBackend(t testing.TB) *backend {
	b := &backend{
		started:   make(chan string, 1000),
		cancelled: map[string]bool{},
		closed:    make(chan struct{}),
	}
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(func() {
		close(b.closed)
		b.Close()
	})
	return b
}

// overlapRecorder counts the writes in flight per resource at a backend,
// and how many began while another write to the same resource was in
// flight: what the lock exists to prevent. A write may also change
// everything below its resource (a collection's DELETE, MOVE or COPY):
// it then overlaps every write in flight below it, and every write that
// begins below it while it is in flight. The zero value is ready.
type overlapRecorder struct {
	mu       sync.Mutex
	inflight map[string]int // resource -> writes begun and not yet ended; never < 0
	trees    map[string]int // resource -> those of inflight's that change everything below it too
	overlaps int            // the sum of overlapped's values
	// overlapped: resource -> writes that began while another write to
	// it was in flight; only resources with at least one.
	overlapped map[string]int
}

// write is what one request changes: res, and everything below it if tree.
type write struct {
	res  string
	tree bool
}

// newBackend starts the recording backend. No two writes to one
// resource may ever be in flight at once, which is what the lock is for:
// the test fails at its end if some were.
func newBackend(t testing.TB) *backend {
	var b *backend
	t.Cleanup(func() { b.writing.assertNone(t, "the backend "+b.URL) }) // after b.Close: see assertNone
	b = newUncheckedBackend(t)
	return b
}

// gateSet holds requests at a test backend, each by its id, until the
// test opens that id's gate. The zero value is ready.
type gateSet struct {
	mu    sync.Mutex
	gates map[string]chan struct{}
}

// holdWrite sends method url with X-Hold: id and the given header (name,
// value pairs) through the default client, and returns once the backend
// holds the request. From then on, whatever lock the request took has been
// granted and stays held until b.open(id); the returned channel yields the
// request's result once it has been let through. It fails the test if
// another held request reaches the backend first, or none in 10 seconds.
// For a request that may be refused or queued before it reaches the
// backend, send it with do instead.
func holdWrite(t *testing.T, b *backend, method, url, id string, header ...string) <-chan result {
	t.Helper()
	return holdWriteVia(t, http.DefaultClient, b, method, url, id, header...)
}

// holdWriteVia is holdWrite through the given client.
func holdWriteVia(t *testing.T, client *http.Client, b *backend, method, url, id string, header ...string) <-chan result {
	t.Helper()
	if len(header)%2 != 0 {
		t.Fatalf("holdWrite %s %s: header %q is not name, value pairs", method, url, header)
	}
	h := map[string]string{"X-Hold": id}
	for i := 0; i < len(header); i += 2 {
		h[header[i]] = header[i+1]
	}
	done := make(chan result, 1) // buffered: the sender never blocks on a test that stopped reading
	go func() { done <- do(client, method, url, h) }()
	b.waitStarted(t, id)
	return done
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// loadCaddy runs a real Caddy with the given site block (a Caddyfile
// fragment; {backend} is replaced with the backend's address) and returns
// the site's base URL. Each call replaces the running config, as a reload
// does.
func loadCaddy(t testing.TB, port int, global, site string, b *backend) string {
	t.Helper()
	if b != nil {
		site = strings.ReplaceAll(site, "{backend}", strings.TrimPrefix(b.URL, "http://"))
	}
	if global == "" {
		global = "admin off"
	}
	caddyfile := fmt.Sprintf("{\n%s\npersist_config off\nauto_https off\nlog {\n output discard\n}\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", global, port, site)
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w.String())
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

// startCaddyAdmin is startCaddy with Caddy's admin endpoint on a port of
// its own, for the admin API and /metrics, and the global options in
// global besides; it returns the site's and the admin endpoint's URLs.
func startCaddyAdmin(t *testing.T, global, site string, b *backend) (url, admin string) {
	t.Helper()
	adminPort := freePort(t)
	url = loadCaddy(t, freePort(t), fmt.Sprintf("admin 127.0.0.1:%d\n%s", adminPort, global), site, b)
	t.Cleanup(func() { _ = caddy.Stop() })
	return url, fmt.Sprintf("http://127.0.0.1:%d", adminPort)
}

func startCaddy(t *testing.T, site string, b *backend) string {
	t.Helper()
	url := loadCaddy(t, freePort(t), "", site, b)
	t.Cleanup(func() { _ = caddy.Stop() })
	return url
}

type result struct {
	status int
	header http.Header
	body   string
	err    error
}

func do(client *http.Client, method, url string, header map[string]string) result {
	req, err := http.NewRequest(method, url, strings.NewReader("payload"))
	if err != nil {
		return result{err: err}
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return doRequest(client, req)
}

// doRequest sends req and reads the whole answer.
func doRequest(client *http.Client, req *http.Request) result {
	resp, err := client.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: string(body), err: err}
}

func mustDo(t testing.TB, method, url string, header map[string]string, want int) result {
	t.Helper()
	r := do(http.DefaultClient, method, url, header)
	if r.err != nil {
		t.Fatalf("%s %s: %v", method, url, r.err)
	}
	if r.status != want {
		t.Fatalf("%s %s: status %d, want %d; body: %s", method, url, r.status, want, r.body)
	}
	return r
}

// assertLocked checks a 423 answer as a client sees it.
func assertLocked(t *testing.T, r result, wantKey string) {
	t.Helper()
	if r.err != nil || r.status != http.StatusLocked {
		t.Fatalf("status %d (err %v), want 423; body: %s", r.status, r.err, r.body)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After = %q, want whole seconds >= 1", r.header.Get("Retry-After"))
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q", ct)
	}
	if r.header.Get("X-Backend") != "" {
		t.Fatal("a 423 carries a backend header: the request reached the backend")
	}
	var p struct {
		Type, Title, Detail, Instance string
		Status                        int
		Lock                          *struct {
			Key         string  `json:"key"`
			Kind        string  `json:"kind"`
			HeldSeconds float64 `json:"held_seconds"`
		}
	}
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Type == "" || p.Title == "" || p.Status != 423 || p.Detail == "" || p.Instance == "" || p.Lock == nil {
		t.Fatalf("incomplete problem document: %s", r.body)
	}
	if p.Lock.Key != wantKey || p.Lock.Kind == "" || p.Lock.HeldSeconds <= 0 {
		t.Fatalf("problem lock member = %+v, want key %q", *p.Lock, wantKey)
	}
}

// zoneTable finds the lock table of a zone that a running config uses.
func zoneTable(t *testing.T, name string) *memLocker {
	t.Helper()
	var l *memLocker
	zones.Range(func(k, v any) bool {
		if z := v.(*zone); k == name || k == name+"\x00hierarchy" {
			l, _ = z.locker.(*memLocker)
		}
		return true
	})
	if l == nil {
		t.Fatalf("zone %q not found", name)
	}
	return l
}

func waitEmpty(t *testing.T, l *memLocker) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		held, waiting, nodes := l.Stats()
		if held == 0 && waiting == 0 && nodes == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("locks left: held=%d waiting=%d nodes=%d", held, waiting, nodes)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// panicHandler is a handler after lock that panics on requests carrying
// X-Panic, as a buggy module might. Caddy does not recover it; net/http
// does, and closes the connection.
type panicHandler struct{}

func init() {
	caddy.RegisterModule(panicHandler{})
	httpcaddyfile.RegisterHandlerDirective("lock_test_panic", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		return new(panicHandler), nil
	})
}

// probeHandler reports, for requests with X-Probe: <id>, events on
// probeEvents(id): "<name> gone" when the request's context ends while
// the rest of the route runs (placed before lock, that is the client
// leaving), and "<name> returned <err>" when the rest of the route returns.
type probeHandler struct{ Name string }

var probes sync.Map // id -> chan string

func probeEvents(id string) chan string {
	c, _ := probes.LoadOrStore(id, make(chan string, 16))
	return c.(chan string)
}

// nextProbe returns the next event of probe id.
func nextProbe(t *testing.T, id string) string {
	t.Helper()
	select {
	case ev := <-probeEvents(id):
		return ev
	case <-time.After(10 * time.Second):
		t.Fatalf("probe %s reported nothing in 10s", id)
		return ""
	}
}

// waitProbe fails t unless probe id's next event is want.
func waitProbe(t *testing.T, id, want string) {
	t.Helper()
	if ev := nextProbe(t, id); ev != want {
		t.Fatalf("probe %s: %q, want %q", id, ev, want)
	}
}

// davBackend is a real WebDAV server without locks: golang.org/x/net/webdav
// on an in-memory file system with a lock system that grants everything,
// as many legacy servers do. It records what reaches it: requests per
// method and path, writes that overlapped on one resource (see
// recordWrite), and the conditional headers it was sent.
// Every test that uses one fails at its end if writes overlapped: that is
// what the lock handler in front of it exists to prevent. A write with
// X-Delay: <duration> takes that long, so that overlaps can show.
type davBackend struct {
	*httptest.Server
	fs      webdav.FileSystem
	writing overlapRecorder
	mu      sync.Mutex
	seen    []string // "METHOD /path"
	ifSeen  []string // If headers that reached the backend
	ifMatch []string // If-Match headers that reached the backend
}

// grantAll is a webdav.LockSystem that grants every lock and confirms
// every condition: a backend with no lock support.
type grantAll struct{}

func newDAVBackend(t *testing.T) *davBackend {
	b := &davBackend{fs: webdav.NewMemFS()}
	// Registered before b.Close, so it runs after it: see assertNone.
	t.Cleanup(func() { b.writing.assertNone(t, "the WebDAV backend "+b.URL) })
	dav := &webdav.Handler{FileSystem: b.fs, LockSystem: grantAll{}}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		write := !slices.Contains([]string{"GET", "HEAD", "OPTIONS", "PROPFIND"}, r.Method)
		b.mu.Lock()
		b.seen = append(b.seen, r.Method+" "+r.URL.Path)
		if v := r.Header.Get("If"); v != "" {
			b.ifSeen = append(b.ifSeen, v)
		}
		if v := r.Header.Get("If-Match"); v != "" {
			b.ifMatch = append(b.ifMatch, v)
		}
		b.mu.Unlock()
		if write {
			defer recordWrite(&b.writing, r)()
		}
		if r.Method == "DELETE" && r.Header.Get("X-Partial") != "" {
			// A DELETE that failed on a member, as servers with
			// permissions per file answer it; nothing is deleted.
			w.Header().Set("Content-Type", "application/xml; charset=utf-8")
			w.WriteHeader(http.StatusMultiStatus)
			fmt.Fprintf(w, `<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>%s/b</D:href><D:status>HTTP/1.1 403 Forbidden</D:status></D:response></D:multistatus>`, r.URL.Path)
			return
		}
		// A request that takes a while: a write, so that overlaps can
		// show; a read, to be in flight across a reload.
		if d, err := time.ParseDuration(r.Header.Get("X-Delay")); err == nil {
			time.Sleep(d)
		}
		dav.ServeHTTP(w, r)
	}))
	t.Cleanup(b.Close)
	return b
}

// recordWrite records at o the resources a write request changes: its
// path, everything below it for DELETE and MOVE, and for MOVE and COPY
// the Destination and everything below it. The returned func records
// their end. It names them as x/net/webdav does, never with the lock
// handler's own normalisation, which would hide a bug of it: the path as
// net/http decoded it once, and the Destination's path as url.Parse gives
// it, each cleaned with path.Clean (x/net/webdav's slashClean).
func recordWrite(o *overlapRecorder, r *http.Request) (end func()) {
	ws := []write{{res: davResource(r.URL.Path), tree: r.Method == "DELETE" || r.Method == "MOVE"}}
	if r.Method == "MOVE" || r.Method == "COPY" {
		if u, err := url.Parse(r.Header.Get("Destination")); err == nil && u.Path != "" {
			ws = append(ws, write{res: davResource(u.Path), tree: true})
		}
	}
	return o.record(ws...)
}

// davResource is the resource x/net/webdav's file system opens for the
// decoded path p.
func davResource(p string) string {
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return path.Clean(p)
}

// davSite starts Caddy with the lock handler in WebDAV mode (plus extra
// lines) in front of a new davBackend, in a zone of its own.
func davSite(t *testing.T, extra string) (string, *davBackend) {
	t.Helper()
	return davSiteAfter(t, "", extra)
}

// davSiteAfter is davSite with directives (pre) before the lock handler.
func davSiteAfter(t *testing.T, pre, extra string) (string, *davBackend) {
	t.Helper()
	b := newDAVBackend(t)
	return startCaddy(t, davSiteConfig(t, b, pre, extra), nil), b
}

func davSiteConfig(t *testing.T, b *davBackend, pre, extra string) string {
	zone := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	return fmt.Sprintf("%s\nlock {\n webdav\n zone %s\n %s\n}\nreverse_proxy %s\n", pre, zone, extra, strings.TrimPrefix(b.URL, "http://"))
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

// assertLockFailure checks the answer to a LOCK that locks below its
// request URI keep from being granted (RFC 4918 sections 9.10.6 and
// 9.10.9): 207 Multi-Status, a DAV:response of 423 for each blocking lock
// root (in order), then one of 424 for the request URI, and no token.
func assertLockFailure(t *testing.T, r result, requestURI string, blocked ...string) {
	t.Helper()
	if r.status != http.StatusMultiStatus {
		t.Fatalf("status %d, want 207; body: %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/xml") {
		t.Fatalf("Content-Type = %q, want application/xml", ct)
	}
	if tok := r.header.Get("Lock-Token"); tok != "" {
		t.Fatalf("refused LOCK has Lock-Token %s", tok)
	}
	if r.header.Get("Retry-After") == "" {
		t.Fatal("refused LOCK without Retry-After")
	}
	var ms struct {
		XMLName   xml.Name `xml:"DAV: multistatus"`
		Responses []struct {
			Hrefs    []string   `xml:"DAV: href"`
			Status   string     `xml:"DAV: status"`
			Propstat []struct{} `xml:"DAV: propstat"`
		} `xml:"DAV: response"`
	}
	if err := xml.Unmarshal([]byte(r.body), &ms); err != nil {
		t.Fatalf("207 body %q: %v", r.body, err)
	}
	type response struct{ href, status string }
	var got, want []response
	for _, resp := range ms.Responses {
		if len(resp.Hrefs) != 1 || len(resp.Propstat) != 0 {
			t.Fatalf("response with %d hrefs and %d propstats, want one href and a status: %s", len(resp.Hrefs), len(resp.Propstat), r.body)
		}
		got = append(got, response{resp.Hrefs[0], resp.Status})
	}
	for _, h := range blocked {
		want = append(want, response{h, "HTTP/1.1 423 Locked"})
	}
	want = append(want, response{requestURI, "HTTP/1.1 424 Failed Dependency"})
	if !slices.Equal(got, want) {
		t.Fatalf("responses %v, want %v; body: %s", got, want, r.body)
	}
}

// inEachStore runs test as subtests "memory" and "redis", with store the
// lock block's store setting: none, then a redis-server of its own.
func inEachStore(t *testing.T, test func(t *testing.T, store string)) {
	t.Run("memory", func(t *testing.T) { test(t, "") })
	t.Run("redis", func(t *testing.T) {
		srv := startRedis(t)
		test(t, "store redis {\n address "+srv.Addr+"\n }")
	})
}

// zoneStore finds the explicit lock store of a zone that a running config
// uses.
func zoneStore(t *testing.T, name string) lockstore.LockStore {
	t.Helper()
	var s lockstore.LockStore
	zones.Range(func(k, v any) bool {
		if z := v.(*zone); z.name == name {
			s = z.explicit
		}
		return true
	})
	if s == nil {
		t.Fatalf("zone %q not found", name)
	}
	return s
}

// headETag returns the ETag the backend sends for url.
func headETag(t *testing.T, url string) string {
	t.Helper()
	etag := davMust(t, http.StatusOK, "HEAD", url, "", nil).header.Get("ETag")
	if etag == "" {
		t.Fatal("the backend sends no ETag for " + url)
	}
	return etag
}

func basicAuth(user, pw string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pw))
}

// multiStatusXML is a DAV:multistatus answer as a client reads it.
type multiStatusXML struct {
	XMLName   xml.Name `xml:"DAV: multistatus"`
	Responses []struct {
		Href     string `xml:"DAV: href"`
		Propstat []struct {
			Prop struct {
				LockDiscovery *struct {
					Locks []activeLockXML `xml:"DAV: activelock"`
				} `xml:"DAV: lockdiscovery"`
				SupportedLock []struct {
					Entries []struct {
						Exclusive *struct{} `xml:"DAV: lockscope>exclusive"`
						Shared    *struct{} `xml:"DAV: lockscope>shared"`
					} `xml:"DAV: lockentry"`
				} `xml:"DAV: supportedlock"`
				DisplayName *string `xml:"DAV: displayname"`
			} `xml:"DAV: prop"`
			Status string `xml:"DAV: status"`
		} `xml:"DAV: propstat"`
	} `xml:"DAV: response"`
}

func propfind(t *testing.T, url, depth, body string) multiStatusXML {
	t.Helper()
	r := davMust(t, http.StatusMultiStatus, "PROPFIND", url, body, map[string]string{"Depth": depth, "Content-Type": "application/xml"})
	var ms multiStatusXML
	if err := xml.Unmarshal([]byte(r.body), &ms); err != nil {
		t.Fatalf("PROPFIND answer %q: %v", r.body, err)
	}
	return ms
}

// manyTags is an If header naming n resources, each with an ETag
// condition.
func manyTags(n int) string {
	var sb strings.Builder
	for i := range n {
		fmt.Fprintf(&sb, `</r%d> (["e"]) `, i)
	}
	return sb.String()
}

func init() {
	caddy.RegisterModule(probeHandler{})
	httpcaddyfile.RegisterHandlerDirective("lock_test_probe", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		p := new(probeHandler)
		return p, p.UnmarshalCaddyfile(h.Dispenser)
	})
}
