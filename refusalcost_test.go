package caddylock

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// A 423's detail says what the conflict error says, formatted in one
// allocation.
func TestConflictDetailMatchesTheError(t *testing.T) {
	durations := []time.Duration{0, 400 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 999 * time.Millisecond,
		time.Second, 1500 * time.Millisecond, 1234567 * time.Microsecond, 59 * time.Second, time.Minute,
		61*time.Second + 20*time.Millisecond, time.Hour, 25*time.Hour + 3*time.Minute + 4*time.Millisecond, -3 * time.Millisecond}
	for _, d := range durations {
		for _, below := range []bool{false, true} {
			for _, kind := range []lockstore.Kind{lockstore.Shared, lockstore.Exclusive} {
				c := &lockstore.ConflictError{Key: "/a/\"b\"", Kind: kind, Below: below, HeldFor: d}
				want := "PUT /a/b/c " + c.Error()
				if got := conflictDetail("PUT", "/a/b/c", c); got != want {
					t.Errorf("held for %v: %q, want %q", d, got, want)
				}
			}
		}
	}
	c := &lockstore.ConflictError{Key: "/k", Kind: lockstore.Exclusive, HeldFor: 1234 * time.Millisecond}
	if n := testing.AllocsPerRun(100, func() { _ = conflictDetail("PUT", "/k", c) }); n > 1 {
		t.Fatalf("conflictDetail allocates %v times, want 1", n)
	}
}

// A 423's detail, written from its conflict straight into the problem
// document, is byte for byte what encoding/json writes for the detail
// as a string, whatever the keys and the method hold (escapes, HTML
// characters, line separators, bytes that are not UTF-8 at a piece's
// end or start), and the page for browsers gets the same text.
func TestConflictDetailWrittenInPlace(t *testing.T) {
	keys := []string{"/a", "/über/日本/😀", `/q"\\<b>&amp;`, "/nl\n\t\x00\x7f", "/\u2028\u2029", "/bad\xe2\x82", "\x82\xffstart", "/end\xc3", ""}
	for _, method := range []string{"PUT", "M&<>", "X\xc3"} {
		for _, key := range keys {
			for _, held := range keys {
				c := &lockstore.ConflictError{Key: held, Kind: lockstore.Exclusive, Below: len(held)%2 == 0, HeldFor: 1234567 * time.Microsecond}
				p := problem{Type: problemType, Title: "Resource is locked", Status: 423, Instance: "/i", conflict: c, method: method, keyFor: key}
				ref := p
				ref.conflict, ref.Detail = nil, conflictDetail(method, key, c)
				want, err := json.Marshal(ref)
				if err != nil {
					t.Fatal(err)
				}
				if got := p.appendJSON(nil); string(got) != string(want) {
					t.Errorf("%q %q, held %q:\n got %s\nwant %s", method, key, held, got, want)
				}
				if got := p.detail(); got != ref.Detail {
					t.Errorf("detail() = %q, want %q", got, ref.Detail)
				}
			}
		}
	}
}

// The handler's 423 allocates no more than the answer needs, counted on
// requests built as Caddy's server builds them (refusalBench): each
// allocation named in BenchmarkRefusalOwn's history, once removed, stays
// removed.
func TestRefusalAllocations(t *testing.T) {
	// The replacer map's first bucket, the key as a placeholder value
	// and the header values. (The body's watcher and its function took
	// two more before the grant, the locker's conflict one before the
	// handler kept it on its stack, the detail one before it was written
	// into the body.)
	const refusalAllocs = 3
	if raceEnabled() {
		// Its sync.Pool drops a put item at random, on purpose.
		t.Skip("allocations are counted without the race detector")
	}
	rb := newRefusalBench(t, "alloc-refusal")
	const runs = 2000
	// Warm both up (the pools, the map of the writer's header).
	_, _ = rb.run(t, runs, false)
	_, _ = rb.run(t, runs, true)
	prepared, _ := rb.run(t, runs, false)
	refused, boxed := rb.run(t, runs, true)
	// {http.lock.wait} is boxed when it is 256ns or more (smaller
	// integers have static boxes): those are counted apart.
	if own := refused - prepared - boxed; own > refusalAllocs+0.05 {
		t.Fatalf("a 423 allocates %.2f times beyond the request's preparation and the wait, want %d", own, refusalAllocs)
	}
}

// BenchmarkRefusalOwn measures what a 423 costs the handler in Caddy, as
// the difference of two sub-benchmarks of one run: prepare builds each
// request as Caddy's server does (a fresh replacer and context on a copy
// of a PUT with the 128-byte body bench/run sends), refuse also runs it
// through the handler, where its key is held. BenchmarkRefusal reuses one
// request, so it misses what a fresh request costs: the replacer map's
// first bucket, and whatever wraps the body.
func BenchmarkRefusalOwn(b *testing.B) {
	rb := newRefusalBench(b, "bench-refusal-own")
	for _, refuse := range []bool{false, true} {
		name := "prepare"
		if refuse {
			name = "refuse"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			_ = rb.loop(b, b.N, refuse)
			// The process's CPU time, the garbage collector's included:
			// on a shared machine steadier than ns/op.
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// refusalBench refuses PUT /hot with a body, in zone, whose key it holds.
type refusalBench struct {
	h    *Handler
	tmpl *http.Request
	w    *discardWriter
	next caddyhttp.Handler
	conn context.Context
}

func newRefusalBench(tb testing.TB, zone string) *refusalBench {
	h := provisionedHandler(tb, zone)
	// As in a Caddy that logs at INFO or above: debug lines are not written.
	h.logger = zap.NewNop()
	held, err := h.zone.locker.Acquire(context.Background(), lockstore.Request{Key: "/hot", Kind: lockstore.Exclusive})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(held.Release)
	conn, closeConn := context.WithCancel(context.Background())
	tb.Cleanup(closeConn)
	return &refusalBench{
		h:    h,
		tmpl: httptest.NewRequest(http.MethodPut, "/hot", strings.NewReader(strings.Repeat("0123456789abcdef", 8))),
		w:    &discardWriter{header: http.Header{}},
		next: caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			tb.Fatal("a refused request reached the next handler")
			return nil
		}),
		conn: conn,
	}
}

// loop prepares n requests, and refuses each when refuse is set. It
// returns how many of the refusals had a {http.lock.wait} of 256ns or
// more, which takes an allocation to box.
func (rb *refusalBench) loop(tb testing.TB, n int, refuse bool) (boxedWaits int) {
	for range n {
		ctx, cancel := context.WithCancel(rb.conn)
		r := caddyhttp.PrepareRequest(rb.tmpl.WithContext(ctx), caddy.NewReplacer(), rb.w, nil)
		if refuse {
			clear(rb.w.header)
			if err := rb.h.ServeHTTP(rb.w, r, rb.next); err != nil || rb.w.status != http.StatusLocked {
				tb.Fatalf("status %d, error %v, want 423", rb.w.status, err)
			}
			if wait, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Get("http.lock.wait"); wait.(time.Duration) >= 256 {
				boxedWaits++
			}
		}
		cancel()
	}
	return boxedWaits
}

// run is loop's allocations per request, and the share of them that
// boxed a wait.
func (rb *refusalBench) run(tb testing.TB, n int, refuse bool) (allocs, boxedWaits float64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	boxed := rb.loop(tb, n, refuse)
	runtime.ReadMemStats(&after)
	return float64(after.Mallocs-before.Mallocs) / float64(n), float64(boxed) / float64(n)
}

// A 423 whose conflict the handler kept on its stack still hands
// handle_errors the conflict error, as {http.error.message} shows it.
func TestRefusalConflictReachesHandleErrors(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone errs-kept\n use_handle_errors\n}\nreverse_proxy {backend}\nhandle_errors {\n respond \"{http.error.message}\"\n}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	r := mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusLocked)
	if want := "lock /doc: conflicts with the exclusive lock on /doc, held for "; !strings.HasPrefix(r.body, want) {
		t.Errorf("handle_errors got %q, want it to begin with %q", r.body, want)
	}
	b.open("w")
	<-done
}

// The memory table writes the conflict of a request it refuses at once
// into its caller's ConflictError, as Acquire returns it otherwise, and
// leaves Acquire's own answer a *ConflictError.
func TestAcquireIntoWritesTheConflict(t *testing.T) {
	for _, hierarchy := range []bool{false, true} {
		l := newMemLocker(hierarchy, 0, 0)
		held, err := l.Acquire(context.Background(), lockstore.Request{Key: "/a/b", Kind: lockstore.Exclusive})
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"/a/b", "/a"} {
			if key == "/a" && !hierarchy {
				continue
			}
			req := lockstore.Request{Key: key, Kind: lockstore.Shared}
			var into lockstore.ConflictError
			if lease, err := l.acquireInto(context.Background(), req, &into); lease != nil || err != errConflictInto {
				t.Fatalf("hierarchy %v, %s: acquireInto = %v, %v; want errConflictInto", hierarchy, key, lease, err)
			}
			_, err := l.Acquire(context.Background(), req)
			c, ok := err.(*lockstore.ConflictError)
			if !ok {
				t.Fatalf("hierarchy %v, %s: Acquire = %v, want a *ConflictError", hierarchy, key, err)
			}
			if into.Key != c.Key || into.Kind != c.Kind || into.Below != c.Below || into.RetryAfter != c.RetryAfter ||
				into.HeldFor <= 0 || into.HeldFor > c.HeldFor {
				t.Errorf("hierarchy %v, %s: written %+v, Acquire's %+v", hierarchy, key, into, *c)
			}
			// The exclusive lock on /a/b, or the one below /a.
			if want := key == "/a"; into.Below != want || into.Key != key || into.Kind != lockstore.Exclusive {
				t.Errorf("hierarchy %v, %s: written %+v, want the exclusive lock at or below %s, below %v", hierarchy, key, into, key, want)
			}
		}
		held.Release()
		if lease, err := l.acquireInto(context.Background(), lockstore.Request{Key: "/a/b", Kind: lockstore.Exclusive}, new(lockstore.ConflictError)); err != nil {
			t.Fatalf("a free key: %v", err)
		} else {
			lease.Release()
		}
	}
}
