package caddylock

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// begin records a write to res; the returned func records its end and
// must be called once.
func (o *overlapRecorder) begin(res string) (end func()) { return o.record(write{res: res}) }

// record records the writes of one request, as begin: each is checked
// against the writes of other requests in flight, not against its own.
func (o *overlapRecorder) record(ws ...write) (end func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.inflight == nil {
		o.inflight, o.trees, o.overlapped = map[string]int{}, map[string]int{}, map[string]int{}
	}
	for _, w := range ws {
		if o.clashes(w.res, w.tree) {
			o.overlaps++
			o.overlapped[w.res]++
		}
	}
	for _, w := range ws {
		o.inflight[w.res]++
		if w.tree {
			o.trees[w.res]++
		}
	}
	return func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, w := range ws {
			o.inflight[w.res]--
			if w.tree {
				o.trees[w.res]--
			}
		}
	}
}

// clashes reports whether a write to res (and below it, if tree) beginning
// now overlaps one in flight: one to res, one to an ancestor of res that
// changes everything below it, or, for a tree write, one below res.
func (o *overlapRecorder) clashes(res string, tree bool) bool {
	if o.inflight[res] > 0 {
		return true
	}
	// Resources need not be paths (X-Resource): path.Dir ends at "/" or ".".
	for a, up := res, path.Dir(res); up != a; a, up = up, path.Dir(up) {
		if o.trees[up] > 0 {
			return true
		}
	}
	if tree {
		prefix := strings.TrimSuffix(res, "/") + "/"
		for r, n := range o.inflight {
			if n > 0 && strings.HasPrefix(r, prefix) {
				return true
			}
		}
	}
	return false
}

// count is how many writes began while another to their resource was in
// flight.
func (o *overlapRecorder) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.overlaps
}

// assertNone fails t if any write overlapped another on its resource,
// naming each such resource with its count of overlapping writes. Run
// it once the backend has finished every request: from a cleanup
// registered before the backend is started, since cleanups run
// last-registered first, it runs after the backend's Close (which waits
// for every request at it) and after Caddy, started later still, stopped.
func (o *overlapRecorder) assertNone(t testing.TB, backend string) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.overlaps == 0 {
		return
	}
	var list []string
	for _, res := range slices.Sorted(maps.Keys(o.overlapped)) {
		list = append(list, fmt.Sprintf("%s (%d)", res, o.overlapped[res]))
	}
	t.Errorf("%d writes at %s began while another write to their resource (or to a collection above it, or below it) was in flight: %s",
		o.overlaps, backend, strings.Join(list, ", "))
}

func (s *gateSet) gate(id string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gates == nil {
		s.gates = map[string]chan struct{}{}
	}
	g, ok := s.gates[id]
	if !ok {
		g = make(chan struct{})
		s.gates[id] = g
	}
	return g
}

func (s *gateSet) open(id string) { close(s.gate(id)) }

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	res := r.Header.Get("X-Resource")
	if res == "" {
		res = r.URL.Path
	}
	write := r.Method != http.MethodGet && r.Method != http.MethodHead
	b.mu.Lock()
	if write {
		b.writes++
		defer b.writing.begin(res)()
	} else {
		b.reads++
	}
	b.mu.Unlock()
	// Read the body first: Go's server only notices a dropped
	// connection (and cancels the request) once the body is read.
	_, _ = io.Copy(io.Discard, r.Body)
	if d, err := time.ParseDuration(r.Header.Get("X-Delay")); err == nil {
		time.Sleep(d) // a write that takes a while, so overlaps can show
	}
	if id := r.Header.Get("X-Hold"); id != "" {
		g := b.gate(id)
		b.started <- id
		select {
		case <-g:
		case <-r.Context().Done():
			b.mu.Lock()
			b.cancelled[id] = true
			b.mu.Unlock()
			return
		case <-b.closed:
			return
		}
	}
	if strings.HasPrefix(r.URL.Path, "/fail") {
		http.Error(w, "backend failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("X-Backend", "yes")
	// What the lock told the backend, for the fencing tests.
	w.Header().Set("X-Got-Fence", r.Header.Get("X-Lock-Fence"))
	fmt.Fprintf(w, "ok %s %s", r.Method, r.URL.EscapedPath())
}

func (b *backend) counts() (writes, reads, overlaps int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.writes, b.reads, b.writing.count()
}

// waitStarted waits until a held request with id has reached the backend.
func (b *backend) waitStarted(t *testing.T, id string) {
	t.Helper()
	select {
	case got := <-b.started:
		if got != id {
			t.Fatalf("backend started %q, want %q", got, id)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("request %q never reached the backend", id)
	}
}

func TestConcurrentWritesSamePath(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone same\n}\nreverse_proxy {backend}", b)

	const n = 20
	results := make(chan result, n)
	for range n {
		go func() {
			results <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold": "w"})
		}()
	}
	b.waitStarted(t, "w")
	// While the first write is held at the backend, every other one is
	// refused without reaching it.
	for range n - 1 {
		select {
		case r := <-results:
			assertLocked(t, r, "/doc")
		case <-time.After(10 * time.Second):
			t.Fatal("a conflicting write was not answered while the first was in flight")
		}
	}
	b.open("w")
	if r := <-results; r.status != http.StatusOK {
		t.Fatalf("the first write: %d %s", r.status, r.body)
	}
	writes, _, overlaps := b.counts()
	if writes != 1 || overlaps != 0 {
		t.Fatalf("backend saw %d writes, %d overlapping; want 1 and 0", writes, overlaps)
	}
	waitEmpty(t, zoneTable(t, "same"))
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
}

func TestDistinctPathsAllPass(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone distinct\n}\nreverse_proxy {backend}", b)
	const n = 20
	results := make(chan result, n)
	for i := range n {
		go func() {
			results <- do(http.DefaultClient, http.MethodPost, fmt.Sprintf("%s/docs/%d", url, i), map[string]string{"X-Hold": "all"})
		}()
	}
	for range n {
		b.waitStarted(t, "all") // all n are in flight at the backend at once
	}
	b.open("all")
	for range n {
		if r := <-results; r.status != http.StatusOK {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	}
	if writes, _, overlaps := b.counts(); writes != n || overlaps != 0 {
		t.Fatalf("writes=%d overlaps=%d", writes, overlaps)
	}
}

func TestReadsDuringWrite(t *testing.T) {
	for _, tc := range []struct {
		name, config string
		readStatus   int
	}{
		{"default", "lock {\n zone reads1\n}", http.StatusOK},
		{"shared", "lock {\n zone reads2\n shared GET HEAD\n}", http.StatusLocked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			url := startCaddy(t, tc.config+"\nreverse_proxy {backend}", b)
			done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
			r := do(http.DefaultClient, http.MethodGet, url+"/doc", nil)
			if tc.readStatus == http.StatusLocked {
				assertLocked(t, r, "/doc")
			} else if r.status != http.StatusOK {
				t.Fatalf("GET during write: %d", r.status)
			}
			mustDo(t, http.MethodGet, url+"/other", nil, http.StatusOK)
			b.open("w")
			<-done
			if tc.readStatus == http.StatusLocked {
				// Shared readers coexist, and exclude a writer.
				r1 := holdWrite(t, b, http.MethodGet, url+"/doc", "r1")
				mustDo(t, http.MethodGet, url+"/doc", nil, http.StatusOK)
				assertLocked(t, do(http.DefaultClient, http.MethodDelete, url+"/doc", nil), "/doc")
				b.open("r1")
				<-r1
			}
		})
	}
}

// TestAliasesConflict sends other spellings of a path that a backend would
// take for the same resource, while a write to it is in flight.
func TestAliasesConflict(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone alias\n case_insensitive\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/files/report.txt", "w", "X-Resource", "r")
	for _, alias := range []string{
		"/files//report.txt",
		"//files/report.txt",
		"/files/./report.txt",
		"/files/x/../report.txt",
		"/x/../../files/report.txt",
		"/files/report.txt/",
		"/files%2Freport.txt",
		"/files%2freport.txt",
		"/%66iles/report.txt",
		"/files/report%2Etxt",
		"/files/report.txt;jsessionid=abc",
		"/files;v=1/report.txt",
		"/files/report.txt%3Bx",
		"/files%252Freport.txt",
		"/files%5Creport.txt",
		"/FILES/Report.TXT",
		"/files/%2e/report.txt",
		"/files/%2e%2e/files/report.txt",
		"/file%C5%BF/report.txt", // ſ, a lower-case s
		"/f%C4%B1les/report.txt", // ı, a lower-case i
	} {
		r := do(http.DefaultClient, http.MethodPut, url+alias, map[string]string{"X-Resource": "r"})
		if r.status != http.StatusLocked {
			t.Errorf("PUT %s: %d, want 423 (it is /files/report.txt)", alias, r.status)
			continue
		}
		assertLocked(t, r, "/files/report.txt")
	}
	b.open("w")
	<-done
	if writes, _, overlaps := b.counts(); writes != 1 || overlaps != 0 {
		t.Fatalf("backend saw %d writes, %d overlapping", writes, overlaps)
	}
}

// An absolute-form request target without a path ("PUT http://host
// HTTP/1.1") has an empty URL path, which goes upstream as "/": it locks
// "/". With hierarchy, "/" is above every other key.
func TestEmptyPathLocksRoot(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone emptypath\n hierarchy\n}\nreverse_proxy {backend}", b)
	addr := strings.TrimPrefix(url, "http://")
	absolute := func(target string) result {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", target, addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("PUT %s: %v", target, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return result{status: resp.StatusCode, header: resp.Header, body: string(body), err: err}
	}
	done := holdWrite(t, b, http.MethodPut, url+"/", "root")
	for _, target := range []string{"http://" + addr, "http://" + addr + "?v=2"} {
		assertLocked(t, absolute(target), "/")
	}
	b.open("root")
	<-done
	done = holdWrite(t, b, http.MethodPut, url+"/a/b", "below")
	r := absolute("http://" + addr)
	assertLocked(t, r, "/")
	if !strings.Contains(r.body, `"below":true`) {
		t.Fatalf("the refusal does not name the write below: %s", r.body)
	}
	b.open("below")
	<-done
	if r := absolute("http://" + addr); r.status != http.StatusOK || !strings.Contains(r.body, "ok PUT /") {
		t.Fatalf("PUT without a path, nothing held: %d %q", r.status, r.body)
	}
}

// Two lock handlers of one zone on a request's way (one for the whole
// site, one for a part of it) take its lock once: the second does not
// refuse the request for the lock the first took for it, and the lock
// still refuses another write until the request is done.
func TestNestedLockHandlers(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, `route {
	lock {
		zone nested
	}
	handle /docs/* {
		lock {
			zone nested
			max_hold 1m
		}
		reverse_proxy {backend}
	}
}`, b)
	mustDo(t, http.MethodPut, url+"/docs/a", nil, http.StatusOK)
	done := holdWrite(t, b, http.MethodPut, url+"/docs/a", "w")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/docs/a", nil), "/docs/a")
	b.open("w")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the held write: %d %s", r.status, r.body)
	}
	mustDo(t, http.MethodPut, url+"/docs/a", nil, http.StatusOK)
}

// A key with a NUL byte is refused with 400 before the backend, in both
// stores: a backend written in C may read /doc%00.txt as /doc.
func TestNULKeyRefused(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		testNULKeyRefused(t, "lock {\n zone nulkey\n}\nreverse_proxy {backend}")
	})
	t.Run("redis", func(t *testing.T) {
		testNULKeyRefused(t, redisSite(startRedis(t), "nulkey_redis", "", ""))
	})
}

func testNULKeyRefused(t *testing.T, site string) {
	b := newBackend(t)
	url := startCaddy(t, site, b)
	r := mustDo(t, http.MethodPut, url+"/doc%00.txt", nil, http.StatusBadRequest)
	if !strings.Contains(r.body, `"title":"Path cannot be locked"`) || r.header.Get("Retry-After") != "" {
		t.Fatalf("refusal of a NUL byte: Retry-After %q, body %s", r.header.Get("Retry-After"), r.body)
	}
	if writes, _, _ := b.counts(); writes != 0 {
		t.Fatalf("%d writes with a NUL byte reached the backend", writes)
	}
	mustDo(t, http.MethodPut, url+"/doc.txt", nil, http.StatusOK)
}

// A method spelled in lower case takes the lock its upper-case spelling
// takes: a backend that upper-cases methods writes on "put" too.
func TestMethodCaseDoesNotEscape(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone mcase\n exclusive PUT DELETE\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, "put", url+"/doc", "w")
	for _, m := range []string{"PUT", "put", "Put", "delete"} {
		assertLocked(t, do(http.DefaultClient, m, url+"/doc", nil), "/doc")
	}
	b.open("w")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the held write: %d", r.status)
	}
	mustDo(t, "get", url+"/doc", nil, http.StatusOK)
}

func TestHierarchyEndToEnd(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone tree\n hierarchy\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/a/b", "w")
	assertLocked(t, do(http.DefaultClient, http.MethodDelete, url+"/a", nil), "/a")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/a/b/c", nil), "/a/b")
	mustDo(t, http.MethodPut, url+"/a/c", nil, http.StatusOK)
	b.open("w")
	<-done
	mustDo(t, http.MethodDelete, url+"/a", nil, http.StatusOK)
}

func TestPlaceholdersAndRoutes(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, `route /r/* {
	lock {
		zone ph
	}
	respond "{http.lock.key} {http.lock.result}"
}
handle /h/* {
	@put method PUT
	lock @put {
		zone ph
		key {http.request.header.X-Doc}
	}
	header >X-Lock "{http.lock.key}|{http.lock.result}"
	reverse_proxy {backend}
}`, b)
	if r := mustDo(t, http.MethodPut, url+"/r//x/", nil, 200); r.body != "/r/x acquired" {
		t.Fatalf("body %q", r.body)
	}
	if r := mustDo(t, http.MethodGet, url+"/r/x", nil, 200); r.body != " none" {
		t.Fatalf("body %q", r.body)
	}
	if r := mustDo(t, http.MethodPut, url+"/h/x", map[string]string{"X-Doc": "invoice-7"}, 200); r.header.Get("X-Lock") != "invoice-7|acquired" {
		t.Fatalf("X-Lock %q", r.header.Get("X-Lock"))
	}
	// The matcher: POST is not matched, so the handler does not run at
	// all and its placeholders stay unknown.
	if r := mustDo(t, http.MethodPost, url+"/h/x", map[string]string{"X-Doc": "invoice-7"}, 200); r.header.Get("X-Lock") != "{http.lock.key}|{http.lock.result}" {
		t.Fatalf("X-Lock %q", r.header.Get("X-Lock"))
	}
	if writes, _, _ := b.counts(); writes != 2 {
		t.Fatalf("backend writes = %d, want 2", writes)
	}
}

// A key template whose result starts with "/" is normalised as a path,
// as documented: spellings of one path in the header lock one key. A
// result without the leading "/" is used as it is.
func TestKeyTemplateNormalisedAsPath(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone keynorm\n key {http.request.header.X-Doc}\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/a", "w", "X-Doc", "/docs/7")
	for _, spelling := range []string{"//docs/./7/", "/docs/x/../7", "/docs%2F7", "/docs/7;v=2"} {
		assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/b", map[string]string{"X-Doc": spelling}), "/docs/7")
	}
	mustDo(t, http.MethodPut, url+"/c", map[string]string{"X-Doc": "docs/7"}, http.StatusOK)
	b.open("w")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the held write: %d %v", r.status, r.err)
	}
}

func TestUseHandleErrors(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone errs\n use_handle_errors\n}\nreverse_proxy {backend}\nhandle_errors {\n respond \"custom {err.status_code}\"\n}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	r := mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusLocked)
	if r.body != "custom 423" || r.header.Get("Retry-After") == "" {
		t.Fatalf("handle_errors page: %q, Retry-After %q", r.body, r.header.Get("Retry-After"))
	}
	b.open("w")
	<-done
}

func (panicHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.lock_test_panic", New: func() caddy.Module { return new(panicHandler) }}
}

func (panicHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Header.Get("X-Panic") != "" {
		panic("a later handler fails")
	}
	return next.ServeHTTP(w, r)
}

func (*panicHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error { return nil }

func (probeHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.lock_test_probe", New: func() caddy.Module { return new(probeHandler) }}
}

func (p probeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	id := r.Header.Get("X-Probe")
	if id == "" {
		return next.ServeHTTP(w, r)
	}
	events := probeEvents(id)
	stop := context.AfterFunc(r.Context(), func() { events <- p.Name + " gone" })
	err := next.ServeHTTP(w, r)
	stop()
	events <- fmt.Sprintf("%s returned %v", p.Name, err)
	return err
}

func (p *probeHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.Args(&p.Name) {
		return d.ArgErr()
	}
	return nil
}

// A panic in a handler after lock releases the lock: the next write to
// the path goes through.
func TestPanicInLaterHandlerReleases(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "route {\n lock {\n  zone panic\n }\n lock_test_panic\n reverse_proxy {backend}\n}", b)
	if r := do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Panic": "1"}); r.err == nil {
		t.Fatalf("the panicking request was answered: %d", r.status)
	}
	waitEmpty(t, zoneTable(t, "panic"))
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	if writes, _, _ := b.counts(); writes != 1 {
		t.Fatalf("backend saw %d writes, want the one after the panic", writes)
	}
}

// Through Caddy: a write on a path too deep for hierarchy gets 400 with a
// problem document, no Retry-After (retrying cannot help), and never
// reaches the backend; one just at the bound goes through.
func TestHierarchyTooDeepEndToEnd(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone deep\n hierarchy\n}\nreverse_proxy {backend}", b)
	r := mustDo(t, http.MethodPut, url+deepKey(300), nil, http.StatusBadRequest)
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q; body %s", ct, r.body)
	}
	if ra := r.header.Get("Retry-After"); ra != "" {
		t.Fatalf("Retry-After = %q on a refusal that retrying cannot help", ra)
	}
	var p problem
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Status != http.StatusBadRequest || p.Type != problemType || p.Title == "" || p.Lock != nil ||
		!strings.Contains(p.Detail, "300 segments") || !strings.Contains(p.Detail, "255") {
		t.Fatalf("problem document: %s", r.body)
	}
	if writes, _, _ := b.counts(); writes != 0 {
		t.Fatalf("backend writes = %d: the refused write reached the backend", writes)
	}
	mustDo(t, http.MethodPut, url+deepKey(lockstore.MaxHierarchyDepth), nil, http.StatusOK)
	waitEmpty(t, zoneTable(t, "deep"))
}

// A lock handler of the zone whose methods leave a request unlocked does
// not wipe the placeholders of the lock an earlier handler of the zone
// holds for it, nor count it a second time.
func TestNestedLockHandlerWithoutLockKeepsPlaceholders(t *testing.T) {
	b := newBackend(t)
	zone := fmt.Sprintf("nestednone%d", meteredRuns.Add(1))
	url, admin := startCaddyAdmin(t, "metrics", `route {
	lock {
		zone `+zone+`
	}
	handle /docs/* {
		lock {
			zone `+zone+`
			exclusive PUT
		}
		reverse_proxy {backend} {
			header_down X-Result {http.lock.result}
			header_down X-Key {http.lock.key}
		}
	}
}`, b)
	r := mustDo(t, http.MethodPost, url+"/docs/a", nil, http.StatusOK)
	if r.header.Get("X-Result") != resultAcquired || r.header.Get("X-Key") != "/docs/a" {
		t.Fatalf("POST under the outer lock: result %q, key %q", r.header.Get("X-Result"), r.header.Get("X-Key"))
	}
	metrics := admin + "/metrics"
	if v := metricValue(t, metrics, `caddy_lock_requests_total{result="none",zone="`+zone+`"}`); v != 0 {
		t.Fatalf("the locked POST was counted %v times as none as well", v)
	}
}

// A lock handler of a zone that an earlier handler of the route holds
// the request's lock in lets it pass, also when a handler of another zone
// took a lock in between: the hold it finds first is the other zone's,
// and the one of its own zone is behind it. It answered 423, conflicting
// with the request's own lock. The lock is held meanwhile: a second write
// to the key is refused.
func TestLockHandlerOfAZoneHeldBeforeAnotherZone(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, `route {
	lock {
		zone abaA
	}
	lock {
		zone abaB
	}
	lock {
		zone abaA
	}
	reverse_proxy {backend}
}`, b)
	done := holdWrite(t, b, http.MethodPut, url+"/x", "w")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/x", nil), "/x")
	b.open("w")
	if r := <-done; r.err != nil || r.status != http.StatusOK {
		t.Fatalf("a write through zones A, B and A again: %d %v %s, want 200", r.status, r.err, r.body)
	}
	if writes, _, _ := b.counts(); writes != 1 {
		t.Fatalf("backend writes = %d, want 1", writes)
	}
	mustDo(t, http.MethodPut, url+"/x", nil, http.StatusOK)
}

// The rest of the route runs on the hold context, with the key as its
// placeholder; once the route has returned the request has its own
// context again, for the handlers before the lock.
func TestServeOnRestoresTheRequest(t *testing.T) {
	h := provisionedHandler(t, "serve-on")
	repl := caddy.NewReplacer()
	r := caddyhttp.PrepareRequest(httptest.NewRequest(http.MethodPut, "/docs/a", nil), repl, &discardWriter{header: http.Header{}}, nil)
	orig := r.Context()
	var during context.Context
	next := caddyhttp.HandlerFunc(func(_ http.ResponseWriter, got *http.Request) error {
		if got != r {
			t.Error("the next handler got a copy of the request, not the request")
		}
		during = got.Context()
		if _, ok := during.Value(heldLockKey{}).(*holdContext); !ok {
			t.Error("the route does not run on the hold context")
		}
		if key := repl.ReplaceAll("{http.lock.key}", ""); key != "/docs/a" {
			t.Errorf("{http.lock.key} = %q during the route, want /docs/a", key)
		}
		return nil
	})
	if err := h.ServeHTTP(&discardWriter{header: http.Header{}}, r, next); err != nil {
		t.Fatal(err)
	}
	if r.Context() != orig {
		t.Fatal("after the route the request still has the hold context")
	}
	if during.Err() == nil {
		t.Fatal("the hold context did not end with the route")
	}
	if key := repl.ReplaceAll("{http.lock.key}", ""); key != "/docs/a" {
		t.Fatalf("{http.lock.key} = %q after the route, want /docs/a", key)
	}
}
