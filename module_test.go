package caddylock

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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

// TestClientAbortDuringWrite: a client that goes away does not cut the
// write off at the backend, and the lock holds until the backend answers.
// Probes around the lock handler report the events: the outer one when
// Caddy has seen the client leave (its request context ended), the inner
// one what the rest of the route (reverse_proxy) returned, which is an
// error if the upstream request was cancelled at any point before the
// backend's answer arrived.
func TestClientAbortDuringWrite(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "route {\n lock_test_probe outer\n lock {\n  zone abort\n }\n lock_test_probe inner\n reverse_proxy {backend}\n}", b)
	ctx, cancel := context.WithCancel(context.Background())
	aborted := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, url+"/doc", strings.NewReader("x"))
		req.Header.Set("X-Hold", "w")
		req.Header.Set("X-Probe", "abort")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		aborted <- err
	}()
	b.waitStarted(t, "w")
	cancel()
	if err := <-aborted; !errors.Is(err, context.Canceled) {
		t.Fatalf("client request: %v, want cancelled", err)
	}
	waitProbe(t, "abort", "outer gone")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	b.open("w")
	if ev := nextProbe(t, "abort"); ev != "inner returned <nil>" {
		t.Fatalf("the rest of the route after the client left: %s, want it to return nil with the backend's answer", ev)
	}
	waitEmpty(t, zoneTable(t, "abort"))
	b.mu.Lock()
	cut := b.cancelled["w"]
	b.mu.Unlock()
	if cut {
		t.Fatal("the backend saw the write cancelled when the client left")
	}
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	if _, _, overlaps := b.counts(); overlaps != 0 {
		t.Fatalf("%d overlapping writes", overlaps)
	}
}

func TestLockReleasedOnUpstreamFailure(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone fail\n}\nreverse_proxy {backend}", b)
	for range 3 {
		mustDo(t, http.MethodPut, url+"/fail", nil, http.StatusInternalServerError)
	}
	waitEmpty(t, zoneTable(t, "fail"))

	down := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens there
	url = startCaddy(t, "lock {\n zone down\n}\nreverse_proxy "+down, nil)
	for range 3 {
		mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusBadGateway)
	}
	waitEmpty(t, zoneTable(t, "down"))
}

func TestMaxHold(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone hold\n max_hold 300ms\n}\nreverse_proxy {backend}", b)
	r := do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold": "stuck"})
	if r.status < 500 {
		t.Fatalf("a write past max_hold: %d, want a 5xx from the cancelled upstream request", r.status)
	}
	waitEmpty(t, zoneTable(t, "hold"))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b.mu.Lock()
		cut := b.cancelled["stuck"]
		b.mu.Unlock()
		if cut {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upstream request was not cancelled at max_hold")
		}
	}
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
}

// max_hold counts from the grant, not from the request's arrival: time
// spent queued does not shorten the hold. A write queues for longer than
// its max_hold of 1s behind one from a handler of the zone with a longer
// one; once granted, it still runs its full second at the backend before
// max_hold cuts it off. Counted from arrival, it would be cut off at once.
func TestMaxHoldCountsFromGrant(t *testing.T) {
	for _, mode := range []string{"", "webdav"} {
		t.Run("mode="+mode, func(t *testing.T) {
			b := newBackend(t)
			zone := "holdfromgrant" + mode
			handler := func(matcher, maxHold string) string {
				return fmt.Sprintf("lock %s {\n zone %s\n max_hold %s\n wait 30s\n %s\n}\n", matcher, zone, maxHold, mode)
			}
			url := startCaddy(t, "@slow header X-Slow 1\n"+handler("@slow", "1m")+
				"@quick not header X-Slow 1\n"+handler("@quick", "1s")+"reverse_proxy {backend}", b)
			first := holdWrite(t, b, http.MethodPut, url+"/doc", "first", "X-Slow", "1")
			second := make(chan result, 1)
			go func() {
				second <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold": "second"})
			}()
			waitForQueue(t, zoneTable(t, zone), 1)
			// Not synchronisation: the time queued is what is tested.
			time.Sleep(1500 * time.Millisecond)
			b.open("first")
			if r := <-first; r.status != http.StatusOK {
				t.Fatalf("first: %d %v", r.status, r.err)
			}
			select {
			case got := <-b.started:
				if got != "second" {
					t.Fatalf("backend started %q, want second", got)
				}
			case r := <-second:
				t.Fatalf("the write was cut off before it reached the backend (%d %s): its max_hold ran from its arrival", r.status, r.body)
			case <-time.After(10 * time.Second):
				t.Fatal("the queued write neither reached the backend nor was answered")
			}
			granted := time.Now()
			r := <-second
			if held := time.Since(granted); held < 800*time.Millisecond {
				t.Fatalf("the write was cut off %v after its grant (status %d), before its max_hold of 1s", held, r.status)
			}
			if r.status < 500 {
				t.Fatalf("the write past max_hold: %d, want a 5xx from the cancelled upstream request", r.status)
			}
		})
	}
}

func TestWait(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone wait\n wait 10s\n max_waiters 1\n}\n"+
		"reverse_proxy {backend} {\n header_down X-Result {http.lock.result}\n header_down X-Wait {http.lock.wait}\n}", b)
	first := holdWrite(t, b, http.MethodPut, url+"/doc", "w1")
	second := make(chan result, 1)
	go func() {
		second <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold": "w2"})
	}()
	l := zoneTable(t, "wait")
	waitForQueue(t, l, 1)
	// The queue holds one: a third is refused at once.
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	b.open("w1")
	b.waitStarted(t, "w2") // the waiter went through once the first was done
	if _, _, overlaps := b.counts(); overlaps != 0 {
		t.Fatalf("%d overlapping writes", overlaps)
	}
	b.open("w2")
	if r := <-first; r.status != 200 || r.header.Get("X-Result") != "acquired" {
		t.Fatalf("first: %d, result %q", r.status, r.header.Get("X-Result"))
	}
	r := <-second
	if r.status != 200 || r.header.Get("X-Result") != "waited" {
		t.Fatalf("second: %d, result %q", r.status, r.header.Get("X-Result"))
	}
	if d, err := time.ParseDuration(r.header.Get("X-Wait")); err != nil || d <= 0 {
		t.Fatalf("second: waited %q (%v), want the time it queued", r.header.Get("X-Wait"), err)
	}
	if r := do(http.DefaultClient, http.MethodGet, url+"/doc", nil); r.header.Get("X-Result") != "none" || r.header.Get("X-Wait") != "0s" {
		t.Fatalf("a read: result %q, wait %q", r.header.Get("X-Result"), r.header.Get("X-Wait"))
	}
	waitEmpty(t, l)

	// A waiter that waits too long gets 423.
	url = startCaddy(t, "lock {\n zone wait2\n wait 200ms\n}\nreverse_proxy {backend}", b)
	first = holdWrite(t, b, http.MethodPut, url+"/doc", "w3")
	start := time.Now()
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Fatalf("refused after %v, before the wait of 200ms", waited)
	}
	b.open("w3")
	<-first
}

func TestReloadKeepsLocks(t *testing.T) {
	b := newBackend(t)
	port := freePort(t)
	site := "lock {\n zone reload\n}\nreverse_proxy {backend}"
	url := loadCaddy(t, port, "", site, b)
	t.Cleanup(func() { _ = caddy.Stop() })
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	// A new config (changed, so Caddy really reloads) while the write is
	// in flight under the old one.
	loadCaddy(t, port, "", site+"\nheader X-Config two", b)
	// A fresh connection each time: an idle keep-alive connection to the
	// old server would still be answered by the old config while it
	// shuts down.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	r := do(fresh, http.MethodPut, url+"/doc", nil)
	for deadline := time.Now().Add(5 * time.Second); r.header.Get("X-Config") != "two" && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		r = do(fresh, http.MethodPut, url+"/doc", nil)
	}
	if r.header.Get("X-Config") != "two" {
		t.Fatalf("the new config is not serving: %d %v", r.status, r.header)
	}
	assertLocked(t, r, "/doc")
	b.open("w")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the write under the old config: %d", r.status)
	}
	waitEmpty(t, zoneTable(t, "reload"))
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
}

// Two handlers of one config that name one zone but would get separate
// tables, or fold case differently, do not load: webdav turns hierarchy
// on, so a WebDAV route and a plain one on the default zone would not see
// each other's locks, nor would /Doc and /doc through handlers that fold
// case and do not. The
// same zone under a new config with another setting does load (a reload
// starts a new table, as README.md says).
func TestZoneSettingsMustAgree(t *testing.T) {
	b := newBackend(t)
	for _, site := range []string{
		"route /dav/* {\n lock {\n  webdav\n }\n reverse_proxy {backend}\n}\nroute {\n lock\n reverse_proxy {backend}\n}",
		"@put method PUT\nlock @put {\n zone mixed\n}\nlock {\n zone mixed\n hierarchy\n}\nreverse_proxy {backend}",
		"@put method PUT\nlock @put {\n zone mixedcase\n case_insensitive\n}\nlock {\n zone mixedcase\n}\nreverse_proxy {backend}",
	} {
		site = strings.ReplaceAll(site, "{backend}", strings.TrimPrefix(b.URL, "http://"))
		caddyfile := fmt.Sprintf("{\nadmin off\npersist_config off\nauto_https off\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", freePort(t), site)
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = caddy.Load(cfg, true)
		if err == nil {
			_ = caddy.Stop()
			t.Fatalf("loaded a config whose handlers of one zone keep separate tables:\n%s", caddyfile)
		}
		if !strings.Contains(err.Error(), "would keep separate lock tables") && !strings.Contains(err.Error(), "neither would see the other's lock") {
			t.Fatalf("error %q does not say why", err)
		}
	}
	port := freePort(t)
	url := loadCaddy(t, port, "", "lock {\n zone changing\n}\nreverse_proxy {backend}", b)
	t.Cleanup(func() { _ = caddy.Stop() })
	loadCaddy(t, port, "", "lock {\n zone changing\n hierarchy\n}\nreverse_proxy {backend}", b)
	// The old server may still accept a connection while it shuts down.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, 5*time.Second, "a write under the new config", func() bool {
		return do(fresh, http.MethodPut, url+"/doc", nil).status == http.StatusOK
	})
}

// A reload that fails leaves the running config as it was: the limits of
// a zone stay those of the config that serves it, not those of a handler
// of the failed config that was provisioned before another one failed.
func TestFailedReloadKeepsZoneLimits(t *testing.T) {
	b := newBackend(t)
	port := freePort(t)
	url := loadCaddy(t, port, "", "lock {\n zone keeplimits\n max_locks 2\n}\nreverse_proxy {backend}", b)
	t.Cleanup(func() { _ = caddy.Stop() })

	// The same zone with max_locks 1, then a handler that cannot be
	// provisioned (a store whose password resolves to nothing; adapting
	// cannot tell).
	bad := fmt.Sprintf("{\nadmin off\npersist_config off\nauto_https off\nlog {\n output discard\n}\n}\nhttp://127.0.0.1:%d {\n"+
		"route /x/* {\n lock {\n  zone keeplimits\n  max_locks 1\n }\n}\n"+
		"lock {\n zone keeplimits_other\n store redis {\n  address 127.0.0.1:1\n  password {env.CADDY_LOCK_UNSET_VARIABLE}\n }\n}\nreverse_proxy %s\n}\n",
		port, strings.TrimPrefix(b.URL, "http://"))
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(bad), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err == nil || !strings.Contains(err.Error(), "resolves to an empty value") {
		t.Fatalf("loading a config with a handler that cannot be provisioned: %v", err)
	}

	// The running config still lets two writes run at once.
	done := holdWrite(t, b, http.MethodPut, url+"/a", "a")
	mustDo(t, http.MethodPut, url+"/b", nil, http.StatusOK)
	b.open("a")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the held write: %d %v", r.status, r.err)
	}
}

// Each config records the table keys of its zones while it loads; the
// record goes when the config is unloaded, so reloads do not pile up.
func TestReloadsForgetZoneRecords(t *testing.T) {
	b := newBackend(t)
	port := freePort(t)
	records := func() int {
		n := 0
		configZones.Range(func(any, any) bool { n++; return true })
		return n
	}
	before := records()
	for i := range 5 {
		loadCaddy(t, port, "", fmt.Sprintf("lock {\n zone records\n}\nheader X-Config %d\nreverse_proxy {backend}", i), b)
	}
	_ = caddy.Stop()
	waitFor(t, 5*time.Second, "the records of the unloaded configs to go", func() bool { return records() <= before })
}

func TestMaxLocksGives503(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone full\n max_locks 2\n}\nreverse_proxy {backend}", b)
	var held [2]<-chan result
	for i := range held {
		held[i] = holdWrite(t, b, http.MethodPut, fmt.Sprintf("%s/d%d", url, i), "h")
	}
	r := do(http.DefaultClient, http.MethodPut, url+"/d3", nil)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" ||
		r.header.Get("Content-Type") != "application/problem+json" || !strings.Contains(r.body, `"status":503`) {
		t.Fatalf("a write past max_locks: %d %v %s", r.status, r.header, r.body)
	}
	// The held locks were not evicted.
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/d0", nil), "/d0")
	b.open("h")
	<-held[0]
	<-held[1]
	mustDo(t, http.MethodPut, url+"/d3", nil, http.StatusOK)
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

func TestRetryAfterConfigured(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone ra\n retry_after 1m30s\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	r := do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
	assertLocked(t, r, "/doc")
	if r.header.Get("Retry-After") != "90" {
		t.Fatalf("Retry-After = %q, want 90", r.header.Get("Retry-After"))
	}
	b.open("w")
	<-done
}

// Retry-After is rounded up to whole seconds, never down: told 1 for a
// retry_after of 1.5s, a client comes back into the same lock. Each way a
// refusal is written: the problem body, handle_errors, and WebDAV mode.
func TestRetryAfterRoundedUp(t *testing.T) {
	for name, settings := range map[string]string{
		"problem":       "",
		"handle_errors": "use_handle_errors",
		"webdav":        "webdav",
	} {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t)
			url := startCaddy(t, fmt.Sprintf("lock {\n zone raup%s\n retry_after 1500ms\n %s\n}\nreverse_proxy {backend}", name, settings), b)
			done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
			r := do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
			if r.status != http.StatusLocked || r.header.Get("Retry-After") != "2" {
				t.Fatalf("a refusal with retry_after 1500ms: %d, Retry-After %q, want 423 with 2", r.status, r.header.Get("Retry-After"))
			}
			b.open("w")
			<-done
		})
	}
}

// meteredRuns names each run's zone afresh: the metrics registry outlives
// a run, so with -count above 1 a fixed zone would carry earlier counts.
var meteredRuns atomic.Int64

func TestMetricsExposed(t *testing.T) {
	b := newBackend(t)
	admin := freePort(t)
	zone := fmt.Sprintf("metered%d", meteredRuns.Add(1))
	url := loadCaddy(t, freePort(t), fmt.Sprintf("admin 127.0.0.1:%d\nmetrics", admin), "lock {\n zone "+zone+"\n wait 100ms\n}\nreverse_proxy {backend}", b)
	t.Cleanup(func() { _ = caddy.Stop() })
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	m := mustDo(t, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", admin), nil, 200).body
	for _, want := range []string{
		`caddy_lock_requests_total{result="acquired",zone="` + zone + `"} 1`,
		`caddy_lock_requests_total{result="conflict",zone="` + zone + `"} 1`,
		`caddy_lock_held{zone="` + zone + `"} 1`,
		`caddy_lock_wait_seconds_bucket{zone="` + zone + `"`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
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
