package caddylock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/fcgi"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type holdKey struct{}

// holdFixture is a lock table, a reaper with maxHold and its gauge.
func holdFixture(t *testing.T, maxHold time.Duration) (*memLocker, *holdReaper, prometheus.Gauge) {
	t.Helper()
	held := prometheus.NewGauge(prometheus.GaugeOpts{Name: "held"})
	return newMemLocker(false, 0, 0), newHoldReaper(maxHold, held), held
}

// gauge reads g's value.
func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func isFree(l lockstore.Locker, key string) bool {
	lease, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: lockstore.Exclusive})
	if err != nil {
		return false
	}
	lease.Release()
	return true
}

// countedLease is a Lease that counts its releases. The synctest tests
// use it rather than a lock table, whose coarse clock (shared by the
// whole process) must not start its timer inside a bubble.
type countedLease struct{ releases atomic.Int32 }

func (l *countedLease) Release()                  { l.releases.Add(1) }
func (l *countedLease) Queued() bool              { return false }
func (l *countedLease) ExplicitLocksInZone() bool { return true }

// The route's context keeps the request's values but not its
// cancellation; finishing the route ends it and releases the lock once.
// It runs in a synctest bubble: synctest.Wait returns once every
// goroutine that the client's departure set off (an AfterFunc, a watcher
// of the request's context) has run and blocked again, so a cancellation
// that reaches the route's context a moment late is seen as well.
func TestHoldContextOutlivesTheClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		held := prometheus.NewGauge(prometheus.GaugeOpts{Name: "held"})
		rp := newHoldReaper(time.Minute, held)
		lease := new(countedLease)
		parent, cancelClient := context.WithCancelCause(context.WithValue(context.Background(), holdKey{}, "v"))
		hc := rp.hold(nil, parent, time.Now(), lease)
		child, cancelChild := context.WithCancel(hc)
		defer cancelChild()

		cancelClient(errors.New("client went away"))
		synctest.Wait()
		if hc.Err() != nil || child.Err() != nil || context.Cause(hc) != nil {
			t.Fatalf("a departing client ended the route's context: %v / %v / cause %v", hc.Err(), child.Err(), context.Cause(hc))
		}
		if hc.Value(holdKey{}) != "v" || child.Value(holdKey{}) != "v" {
			t.Fatal("the request's values are lost")
		}
		if d, ok := hc.Deadline(); !ok || !d.Equal(time.Now().Add(time.Minute)) {
			t.Fatalf("deadline %v %v, want max_hold from now", d, ok)
		}
		if lease.releases.Load() != 0 || gauge(t, held) != 1 {
			t.Fatal("the lock is not held while the route runs")
		}
		// Half of max_hold later (in the bubble's time), still held.
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if hc.Err() != nil || lease.releases.Load() != 0 {
			t.Fatalf("the route's context ended before max_hold: %v, %d releases", hc.Err(), lease.releases.Load())
		}

		hc.finish()
		<-child.Done()
		if !errors.Is(hc.Err(), context.Canceled) || !errors.Is(child.Err(), context.Canceled) {
			t.Fatalf("after the route: %v / %v, want Canceled", hc.Err(), child.Err())
		}
		if lease.releases.Load() != 1 || gauge(t, held) != 0 {
			t.Fatal("the lock is not released when the route is done")
		}
		// A second finish releases nothing more, and nor does the
		// reaper's timer when max_hold comes.
		hc.finish()
		time.Sleep(time.Minute)
		synctest.Wait()
		if lease.releases.Load() != 1 || gauge(t, held) != 0 {
			t.Fatalf("%d releases, gauge %v after finishing twice and max_hold passing, want 1 and 0", lease.releases.Load(), gauge(t, held))
		}
	})
}

// At max_hold the context ends with DeadlineExceeded (reverse_proxy then
// answers 504), contexts derived from it end too, and reads of the
// client's body are cut off; the lock stays held until the route
// returns, since the exchange with the backend may still run.
func TestHoldContextMaxHold(t *testing.T) {
	l, rp, held := holdFixture(t, 50*time.Millisecond)
	aborted := make(chan struct{})
	hc := rp.hold(&holdContext{abort: abortFunc(func() { close(aborted) })}, context.Background(), time.Now(), mustAcquire(t, l, "/doc", lockstore.Exclusive))
	child, cancel := context.WithCancel(hc)
	defer cancel()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("max_hold did not end the route's context")
	}
	// A derived context ends with Canceled (the context package gives
	// DeadlineExceeded only to its own timers) and max_hold's cause, which
	// is what the HTTP transport returns and reverse_proxy answers 504 to.
	if !errors.Is(hc.Err(), context.DeadlineExceeded) || child.Err() == nil ||
		!errors.Is(context.Cause(child), context.DeadlineExceeded) {
		t.Fatalf("at max_hold: %v / %v / cause %v, want DeadlineExceeded", hc.Err(), child.Err(), context.Cause(child))
	}
	select {
	case <-aborted:
	case <-time.After(5 * time.Second):
		t.Fatal("max_hold did not cut off the client's body")
	}
	// The abort runs after the context ended, in the same goroutine: by
	// now expire is done, and the lock must still be held.
	if isFree(l, "/doc") || gauge(t, held) != 1 {
		t.Fatal("max_hold released the lock while the route still runs")
	}
	hc.finish()
	if !isFree(l, "/doc") || gauge(t, held) != 0 || !errors.Is(hc.Err(), context.DeadlineExceeded) {
		t.Fatal("the route's end after max_hold did not release the lock, or changed its error")
	}
	// A second holder is not released by a second finish.
	other := mustAcquire(t, l, "/doc", lockstore.Exclusive)
	defer other.Release()
	hc.finish()
	if isFree(l, "/doc") || gauge(t, held) != 0 {
		t.Fatal("finishing twice released another holder's lock or counted twice")
	}
}

// max_hold never touches the client's connection once the route has
// returned: it may be serving the client's next request.
func TestHoldContextNoAbortAfterFinish(t *testing.T) {
	l, rp, _ := holdFixture(t, 20*time.Millisecond)
	aborted := make(chan struct{}, 1)
	hc := rp.hold(&holdContext{abort: abortFunc(func() { aborted <- struct{}{} })}, context.Background(), time.Now(), mustAcquire(t, l, "/doc", lockstore.Exclusive))
	hc.finish()
	hc.expire() // as a reaper that fired just before finish removed it would
	select {
	case <-aborted:
		t.Fatal("max_hold cut off the body reads of a route that had returned")
	default:
	}
}

// Contexts derived from the route's context register with it rather
// than start a goroutine each, also behind a value context, as
// reverse_proxy derives its upstream request's context (the context
// package starts a watching goroutine for a parent it cannot find a
// cancelCtx in, and looks for an AfterFunc method only on the direct
// parent).
func TestHoldContextChildrenNeedNoGoroutine(t *testing.T) {
	for _, through := range []string{"direct", "value"} {
		t.Run(through, func(t *testing.T) {
			l, rp, _ := holdFixture(t, time.Minute)
			hc := rp.hold(nil, context.Background(), time.Now(), mustAcquire(t, l, "/doc", lockstore.Exclusive))
			before := runtime.NumGoroutine()
			cancels := make([]context.CancelFunc, 100)
			children := make([]context.Context, 100)
			for i := range cancels {
				var parent context.Context = hc
				if through == "value" {
					parent = context.WithValue(hc, holdKey{}, i)
				}
				children[i], cancels[i] = context.WithCancel(parent)
			}
			if n := runtime.NumGoroutine(); n > before+5 {
				t.Fatalf("100 derived contexts started %d goroutines", n-before)
			}
			// Half cancel themselves (and unregister); the rest end with hc.
			for i := 0; i < 50; i++ {
				cancels[i]()
			}
			for i, c := range children[50:] {
				if c.Err() != nil {
					t.Fatalf("child %d ended before the route's context", 50+i)
				}
			}
			hc.finish()
			for i, c := range children[50:] {
				select {
				case <-c.Done():
				case <-time.After(5 * time.Second):
					t.Fatalf("child %d did not end with the route's context", 50+i)
				}
			}
			for _, cancel := range cancels {
				cancel()
			}
		})
	}
}

// Looking up a value through the route's context allocates nothing:
// reverse_proxy and Caddy's handlers look up the replacer, vars and
// server about ten times per proxied write.
func TestHoldContextValueAllocates(t *testing.T) {
	rp := newHoldReaper(time.Minute, prometheus.NewGauge(prometheus.GaugeOpts{Name: "held"}))
	parent := context.WithValue(context.Background(), holdKey{}, "v")
	hc := rp.hold(nil, parent, time.Now(), new(countedLease))
	defer hc.finish()
	var v any
	if n := testing.AllocsPerRun(100, func() { v = hc.Value(holdKey{}) }); n != 0 || v != "v" {
		t.Fatalf("a value lookup allocated %v times and found %v, want 0 and v", n, v)
	}
	if hc.Value(heldLockKey{}) != hc {
		t.Fatal("the route's context does not answer heldLockKey with itself")
	}
}

// In a synctest bubble, so that "the stopped function never ran" is
// checked once every goroutine has run (synctest.Wait), not after a
// pause that might be too short.
func TestHoldContextAfterFunc(t *testing.T) {
	synctest.Test(t, testHoldContextAfterFunc)
}

func testHoldContextAfterFunc(t *testing.T) {
	rp := newHoldReaper(time.Minute, prometheus.NewGauge(prometheus.GaugeOpts{Name: "held"}))
	hc := rp.hold(nil, context.Background(), time.Now(), new(countedLease))
	ran := make(chan string, 3)
	stopped := context.AfterFunc(hc, func() { ran <- "stopped" })
	kept := context.AfterFunc(hc, func() { ran <- "kept" })
	if !stopped() || stopped() {
		t.Fatal("stop before the end: want true once, then false")
	}
	hc.finish()
	if got := <-ran; got != "kept" {
		t.Fatalf("ran %q, want kept", got)
	}
	if kept() {
		t.Fatal("stop after the function ran reported true")
	}
	_ = context.AfterFunc(hc, func() { ran <- "late" })
	if got := <-ran; got != "late" {
		t.Fatalf("AfterFunc on an ended context ran %q, want late", got)
	}
	synctest.Wait()
	select {
	case got := <-ran:
		t.Fatalf("%q ran after it was stopped", got)
	default:
	}
}

// The reaper ends contexts in deadline order, whatever order the routes
// finish in, and its timer stops once nothing is held.
func TestHoldReaper(t *testing.T) {
	l, rp, held := holdFixture(t, 100*time.Millisecond)
	var hcs []*holdContext
	for i := range 40 {
		key := "/d/" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		hcs = append(hcs, rp.hold(nil, context.Background(), time.Now(), mustAcquire(t, l, key, lockstore.Exclusive)))
	}
	for i := 0; i < len(hcs); i += 2 {
		hcs[i].finish() // every other route ends in time
	}
	for i, hc := range hcs {
		select {
		case <-hc.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("context %d was not ended", i)
		}
		want := context.DeadlineExceeded
		if i%2 == 0 {
			want = context.Canceled
		}
		if !errors.Is(hc.Err(), want) {
			t.Fatalf("context %d: %v, want %v", i, hc.Err(), want)
		}
	}
	if got := gauge(t, held); got != 20 {
		t.Fatalf("%v locks held, want the 20 whose routes have not returned (max_hold does not release them)", got)
	}
	for i := 1; i < len(hcs); i += 2 {
		hcs[i].finish() // the routes ended at max_hold return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		rp.mu.Lock()
		idle := rp.head == nil && rp.tail == nil && !rp.armed
		rp.mu.Unlock()
		if idle && gauge(t, held) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reaper not idle after every route ended (idle %v, held %v)", idle, gauge(t, held))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// It starts again for the next route.
	hc := rp.hold(nil, context.Background(), time.Now(), mustAcquire(t, l, "/again", lockstore.Exclusive))
	select {
	case <-hc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a route held after the reaper went idle was not ended at max_hold")
	}
}

// recBackend is a backend that records what reaches it, for the tests of
// this file: each request's X-Id, body and Content-Length as it arrives
// (body read), and overlapping writes like newBackend's. A request with
// X-Gate is then held until the test opens its gate, whatever happens
// to its connection: a backend still busy with a write. It serves HTTP
// (http) or FastCGI (fcgiAddr).
type recBackend struct {
	writing overlapRecorder
	mu      sync.Mutex
	gateSet
	arrived chan arrival
	closed  chan struct{}
}

type arrival struct {
	id     string
	body   string
	length int64
	err    error
}

func newRecBackend(t *testing.T) *recBackend {
	b := &recBackend{arrived: make(chan arrival, 100), closed: make(chan struct{})}
	t.Cleanup(func() { b.writing.assertNone(t, "the recording backend") }) // runs last
	return b
}

// release lets every held request go, before the server closes (which
// waits for them): register it after the server's Close.
func (b *recBackend) release(t *testing.T) {
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		select {
		case <-b.closed:
		default:
			close(b.closed)
		}
	})
}

func (b *recBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Id")
	defer b.writing.begin(r.URL.Path)()
	body, err := io.ReadAll(r.Body)
	b.arrived <- arrival{id, string(body), r.ContentLength, err}
	if r.Header.Get("X-Gate") != "" {
		select {
		case <-b.gate(id):
		case <-b.closed:
		}
	}
	fmt.Fprintf(w, "ok %s", id)
}

// http serves b over HTTP and returns its host:port.
func (b *recBackend) http(t *testing.T) string {
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	b.release(t)
	return strings.TrimPrefix(srv.URL, "http://")
}

// fcgi serves b over FastCGI (Go's net/http/fcgi) and returns its
// host:port.
func (b *recBackend) fcgi(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	b.release(t)
	go func() { _ = fcgi.Serve(ln, b) }()
	return ln.Addr().String()
}

// next returns the next request to reach b.
func (b *recBackend) next(t *testing.T) arrival {
	t.Helper()
	select {
	case a := <-b.arrived:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the backend in 10s")
		return arrival{}
	}
}

// holdProbeHandler reports when the context of a request with X-Id ends
// while the request is in it: placed after lock, that is the route's
// context ending at max_hold.
type holdProbeHandler struct{}

var probeEnded sync.Map // X-Id -> chan error (the context's cause)

func probeChan(id string) chan error {
	ch, _ := probeEnded.LoadOrStore(id, make(chan error, 1))
	return ch.(chan error)
}

func (holdProbeHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.lock_test_hold_probe", New: func() caddy.Module { return new(holdProbeHandler) }}
}

func (holdProbeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if id := r.Header.Get("X-Id"); id != "" {
		ctx := r.Context()
		stop := context.AfterFunc(ctx, func() { probeChan(id) <- context.Cause(ctx) })
		defer stop()
	}
	return next.ServeHTTP(w, r)
}

func (*holdProbeHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error { return nil }

func init() {
	caddy.RegisterModule(holdProbeHandler{})
	httpcaddyfile.RegisterHandlerDirective("lock_test_hold_probe", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		return new(holdProbeHandler), nil
	})
}

// rawRequest sends the head of a request and the given part of its body
// on a connection of its own, and returns the connection.
func rawRequest(t *testing.T, url, head, body string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head+"\r\n"+body); err != nil {
		t.Fatal(err)
	}
	return conn
}

// readResponse reads the answer to the request on conn.
func readResponse(t *testing.T, conn net.Conn) *http.Response {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp
}

// h2cClient speaks HTTP/2 without TLS, as a Caddy with protocols h2c
// accepts.
func h2cClient(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// A write queued behind another (wait) whose client goes away while it
// waits never reaches the backend: with its whole body sent or part of
// it, over HTTP/1.1 (where net/http notices the departure only once the
// body has been read) and HTTP/2. The waiter leaves the queue when its
// client leaves; the next write after the first goes through, and the
// departed one is never seen at the backend.
func TestQueuedWriteWhoseClientLeaves(t *testing.T) {
	b := newBackend(t)
	port := freePort(t)
	url := loadCaddy(t, port, "admin off\nservers {\n protocols h1 h2c\n}",
		"lock {\n zone leaves\n wait 30s\n}\nreverse_proxy {backend}", b)
	t.Cleanup(func() { _ = caddy.Stop() })
	l := zoneTable(t, "leaves")
	host := strings.TrimPrefix(url, "http://")
	h1 := func(length int, body string) func(t *testing.T, path, id string) func() {
		return func(t *testing.T, path, id string) func() {
			conn := rawRequest(t, url, fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: %s\r\nX-Hold: %s\r\nContent-Length: %d\r\n", path, host, id, length), body)
			return func() { conn.Close() }
		}
	}
	h1chunked := func(t *testing.T, path, id string) func() {
		conn := rawRequest(t, url, fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: %s\r\nX-Hold: %s\r\nTransfer-Encoding: chunked\r\n", path, host, id), "7\r\npayload\r\n")
		return func() { conn.Close() }
	}
	h2 := func(full bool) func(t *testing.T, path, id string) func() {
		return func(t *testing.T, path, id string) func() {
			ctx, cancel := context.WithCancel(context.Background())
			pr, pw := io.Pipe()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPut, url+path, pr)
			req.ContentLength = 100
			req.Header.Set("X-Hold", id)
			client := h2cClient(t)
			done := make(chan result, 1)
			go func() { done <- doRequest(client, req) }()
			part := "0123456789"
			if full {
				part = strings.Repeat("x", 100)
			}
			go func() {
				_, _ = io.WriteString(pw, part)
				if full {
					pw.Close()
				}
			}()
			return func() {
				cancel()
				pw.CloseWithError(context.Canceled)
				if r := <-done; r.err == nil {
					t.Errorf("the departed HTTP/2 client got an answer: %d", r.status)
				}
			}
		}
	}
	for _, c := range []struct {
		name  string
		start func(t *testing.T, path, id string) (leave func())
	}{
		{"http1-whole-body", h1(7, "payload")},
		{"http1-part-of-body", h1(100, "0123456789")},
		{"http1-chunked", h1chunked},
		{"http2-whole-body", h2(true)},
		{"http2-part-of-body", h2(false)},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := "/" + c.name
			writesBefore, _, _ := b.counts()
			first := holdWrite(t, b, http.MethodPut, url+path, c.name+"-first")
			leave := c.start(t, path, c.name+"-departed")
			waitForQueue(t, l, 1)
			leave()
			// The departure takes the waiter out of the queue; without
			// that it would be granted when the first write ends.
			waitForQueue(t, l, 0)
			b.open(c.name + "-first")
			if r := <-first; r.status != http.StatusOK {
				t.Fatalf("the first write: %d %v", r.status, r.err)
			}
			// The next write to reach the backend is the third, not the
			// departed one (holdWrite fails on any other).
			third := holdWrite(t, b, http.MethodPut, url+path, c.name+"-third")
			b.open(c.name + "-third")
			if r := <-third; r.status != http.StatusOK {
				t.Fatalf("the third write: %d %v", r.status, r.err)
			}
			waitEmpty(t, l)
			if writes, _, _ := b.counts(); writes != writesBefore+2 {
				t.Fatalf("the backend saw %d writes, want the first and the third", writes-writesBefore)
			}
		})
	}
}

// The same in a webdav zone, whose writes take their locks in
// (*davRequest).hold.
func TestQueuedDAVWriteWhoseClientLeaves(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone leavesdav\n webdav\n wait 30s\n}\nreverse_proxy {backend}", b)
	l := zoneTable(t, "leavesdav")
	host := strings.TrimPrefix(url, "http://")
	for _, c := range []struct{ name, length, body string }{
		{"whole-body", "7", "payload"},
		{"part-of-body", "100", "0123456789"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := "/" + c.name
			first := holdWrite(t, b, http.MethodPut, url+path, c.name+"-first")
			conn := rawRequest(t, url, "PUT "+path+" HTTP/1.1\r\nHost: "+host+"\r\nX-Hold: "+c.name+"-departed\r\nContent-Length: "+c.length+"\r\n", c.body)
			waitForQueue(t, l, 1)
			conn.Close()
			waitForQueue(t, l, 0)
			b.open(c.name + "-first")
			<-first
			third := holdWrite(t, b, http.MethodPut, url+path, c.name+"-third")
			b.open(c.name + "-third")
			if r := <-third; r.status/100 != 2 {
				t.Fatalf("the third write: %d %v", r.status, r.err)
			}
			waitEmpty(t, l)
		})
	}
}

// A queued write reaches the backend with its whole body once granted:
// the body read while it waited, with its length (a chunked one's too).
// A body longer than max_wait_body does not queue: it is refused at once
// while the lock is held, and one of unknown length that grows past it
// while queued is refused then, leaving the queue.
func TestQueuedWriteBody(t *testing.T) {
	rb := newRecBackend(t)
	url := startCaddy(t, "lock {\n zone qbody\n wait 30s\n max_wait_body 16\n}\nreverse_proxy "+rb.http(t), nil)
	l := zoneTable(t, "qbody")
	host := strings.TrimPrefix(url, "http://")
	client := &http.Client{Timeout: 10 * time.Second} // a queued request would wait 30s

	holdFirst := func(id string) <-chan result {
		done := make(chan result, 1)
		go func() {
			done <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Id": id, "X-Gate": "1"})
		}()
		if a := rb.next(t); a.id != id {
			t.Fatalf("%q reached the backend, want %q", a.id, id)
		}
		return done
	}

	// Queued with a known length, and chunked.
	first := holdFirst("first")
	sized := rawRequest(t, url, "PUT /doc HTTP/1.1\r\nHost: "+host+"\r\nX-Id: sized\r\nContent-Length: 11\r\n", "hello world")
	waitForQueue(t, l, 1)
	chunked := rawRequest(t, url, "PUT /doc HTTP/1.1\r\nHost: "+host+"\r\nX-Id: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
	waitForQueue(t, l, 2)
	// Too long to queue: 423 at once, with the lock still held.
	r := doRequest(client, func() *http.Request {
		req, _ := http.NewRequest(http.MethodPut, url+"/doc", strings.NewReader(strings.Repeat("x", 17)))
		req.Header.Set("X-Id", "large")
		return req
	}())
	assertLocked(t, r, "/doc")
	// Chunked, past the bound while queued: refused then, out of the queue.
	grows := rawRequest(t, url, "PUT /doc HTTP/1.1\r\nHost: "+host+"\r\nX-Id: grows\r\nTransfer-Encoding: chunked\r\n", "a\r\n0123456789\r\n")
	waitForQueue(t, l, 3)
	if _, err := io.WriteString(grows, "a\r\n0123456789\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp := readResponse(t, grows); resp.StatusCode != http.StatusLocked || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a queued body that grew past max_wait_body: %d, Retry-After %q; want 423 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	waitForQueue(t, l, 2)

	rb.open("first")
	if r := <-first; r.status != http.StatusOK {
		t.Fatalf("first: %d %v", r.status, r.err)
	}
	for _, want := range []arrival{{id: "sized", body: "hello world", length: 11}, {id: "chunked", body: "hello world", length: 11}} {
		if a := rb.next(t); a.id != want.id || a.body != want.body || a.length != want.length || a.err != nil {
			t.Fatalf("at the backend: %+v, want %+v", a, want)
		}
	}
	for _, c := range []net.Conn{sized, chunked} {
		if resp := readResponse(t, c); resp.StatusCode != http.StatusOK {
			t.Fatalf("a queued write: %d", resp.StatusCode)
		}
	}
	waitEmpty(t, l)
	if n := waitBodyBytes.Load(); n != 0 {
		t.Fatalf("%d bytes of queued bodies still reserved", n)
	}
}

// max_hold ends the exchange but the lock is released only when the
// route has returned. A route that goes on after max_hold (the fastcgi
// transport ignores the cancellation and waits for its backend) keeps the
// lock: a second write queued after max_hold reaches the backend only
// once the first is done there, not beside it.
func TestMaxHoldReleasesWhenTheRouteReturns(t *testing.T) {
	rb := newRecBackend(t)
	url := startCaddy(t, "route {\n lock {\n  zone holdroute\n  max_hold 300ms\n  wait 30s\n }\n lock_test_hold_probe\n"+
		" reverse_proxy "+rb.fcgi(t)+" {\n  transport fastcgi\n }\n}", nil)
	l := zoneTable(t, "holdroute")
	first := make(chan result, 1)
	go func() {
		first <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Id": "holdroute-a", "X-Gate": "1"})
	}()
	if a := rb.next(t); a.id != "holdroute-a" {
		t.Fatalf("%q reached the backend first", a.id)
	}
	select {
	case cause := <-probeChan("holdroute-a"):
		if !errors.Is(cause, context.DeadlineExceeded) {
			t.Fatalf("the route's context ended with %v, want max_hold's DeadlineExceeded", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("max_hold did not end the route's context")
	}
	// max_hold has passed; the first write is still at the backend.
	second := make(chan result, 1)
	go func() {
		second <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Id": "holdroute-b"})
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		select {
		case a := <-rb.arrived:
			t.Fatalf("%q reached the backend while the first write, past max_hold, was still there: the lock was released before its route returned", a.id)
		default:
		}
		if _, waiting, _ := l.Stats(); waiting == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second write neither queued nor reached the backend")
		}
	}
	rb.open("holdroute-a")
	if a := rb.next(t); a.id != "holdroute-b" || a.body != "payload" {
		t.Fatalf("next at the backend: %+v, want the second write", a)
	}
	<-first
	if r := <-second; r.status != http.StatusOK {
		t.Fatalf("second: %d %v", r.status, r.err)
	}
	waitEmpty(t, l)
}

// A client that trickles its body does not keep the lock past max_hold:
// at max_hold the upstream request is cancelled and reads of the body
// are cut off, so the route returns (reverse_proxy would otherwise wait
// for the client's next bytes) and the lock is released; the next write
// goes through while the first client is still connected and silent.
// With wait, the body is watched from the start (a write that queues
// reads it); without, from the grant (a refusal does not watch it).
func TestMaxHoldEndsATrickledBody(t *testing.T) {
	for _, c := range []struct{ name, wait string }{{"wait", "\n wait 30s"}, {"nowait", ""}} {
		t.Run(c.name, func(t *testing.T) { testMaxHoldEndsATrickledBody(t, "trickle-"+c.name, c.wait) })
	}
}

func testMaxHoldEndsATrickledBody(t *testing.T, zone, wait string) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone "+zone+"\n max_hold 300ms"+wait+"\n}\nreverse_proxy {backend}", b)
	l := zoneTable(t, zone)
	conn := rawRequest(t, url, "PUT /doc HTTP/1.1\r\nHost: "+strings.TrimPrefix(url, "http://")+"\r\nX-Hold: trickle-a\r\nContent-Length: 100\r\n", "0123456789")
	// The backend gets the head and part of the body; at max_hold the
	// upstream request is cancelled and its body read fails there.
	b.waitStarted(t, "trickle-a")
	// Wait for the backend to be done with it, so that the next write
	// cannot overlap it there whatever the lock does.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b.writing.mu.Lock()
		n := b.writing.inflight["/doc"]
		b.writing.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the backend did not see the first write end at max_hold")
		}
	}
	if wait == "" {
		// Without wait a second write arriving before the first's route
		// has returned would be refused: the route returns, releasing
		// the lock, only because its client's body reads were cut off.
		waitEmpty(t, l)
	}
	second := holdWrite(t, b, http.MethodPut, url+"/doc", "trickle-b")
	b.open("trickle-b")
	if r := <-second; r.status != http.StatusOK {
		t.Fatalf("second: %d %v", r.status, r.err)
	}
	if resp := readResponse(t, conn); resp.StatusCode < 500 {
		t.Fatalf("the trickling client: %d, want a 5xx for the cancelled upstream request", resp.StatusCode)
	}
	waitEmpty(t, l)
}

// A queued write granted while its body is still arriving waits for the
// rest of it before it goes on: its client leaving then (the lock already
// granted) ends it there, and it never reaches the backend.
func TestGrantedWriteWhoseClientLeavesBeforeItsBody(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone leavesgranted\n wait 30s\n}\nreverse_proxy {backend}", b)
	l := zoneTable(t, "leavesgranted")
	first := holdWrite(t, b, http.MethodPut, url+"/doc", "granted-first")
	conn := rawRequest(t, url, "PUT /doc HTTP/1.1\r\nHost: "+strings.TrimPrefix(url, "http://")+"\r\nX-Hold: granted-departed\r\nContent-Length: 100\r\n", "0123456789")
	waitForQueue(t, l, 1)
	b.open("granted-first")
	if r := <-first; r.status != http.StatusOK {
		t.Fatalf("the first write: %d %v", r.status, r.err)
	}
	// The first is done and the second no longer waits: it holds the
	// lock, waiting for its body.
	waitForQueue(t, l, 0)
	if held, _, _ := l.Stats(); held != 1 {
		t.Fatalf("%d locks held, want the queued write's", held)
	}
	conn.Close()
	third := holdWrite(t, b, http.MethodPut, url+"/doc", "granted-third") // fails if the departed one comes first
	b.open("granted-third")
	if r := <-third; r.status != http.StatusOK {
		t.Fatalf("the third write: %d %v", r.status, r.err)
	}
	waitEmpty(t, l)
	if writes, _, _ := b.counts(); writes != 2 {
		t.Fatalf("the backend saw %d writes, want the first and the third", writes)
	}
}

// abortFunc is an aborter that calls itself.
type abortFunc func()

func (f abortFunc) abort() { f() }
