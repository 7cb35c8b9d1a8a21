package caddylock

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// BenchmarkServeHTTP is the handler's own cost per request: requests are
// prepared as Caddy's server prepares them (replacer, vars), and the next
// handler returns at once, so what is measured is taking the key, the lock,
// the placeholders, metrics and the release. bench/run measures the same
// through a real Caddy and proxy; this is the close-up for profiling
// (-cpuprofile, -memprofile).
func BenchmarkServeHTTP(b *testing.B) {
	for _, c := range []struct{ name, method string }{
		{"write", http.MethodPut}, // takes and releases an exclusive lock
		{"read", http.MethodGet},  // takes none: the handler's floor
	} {
		b.Run(c.name, func(b *testing.B) {
			h := provisionedHandler(b, "bench-servehttp-"+c.name)
			w := httptest.NewRecorder()
			reqs := make([]*http.Request, 10000)
			for i := range reqs {
				r := httptest.NewRequest(c.method, "/docs/"+strconv.Itoa(i), nil)
				reqs[i] = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
			}
			served := 0
			next := transportNext(&served)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := h.ServeHTTP(w, reqs[i%len(reqs)], next); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			// Keys come round again after len(reqs) requests: a lock
			// left held would refuse them, and they would not be served.
			if served != b.N {
				b.Fatalf("%d of %d requests reached the next handler", served, b.N)
			}
		})
	}
}

// BenchmarkRefusal is the handler's cost of a 423: the key is held, so
// every request is refused with a problem document and never reaches the
// next handler. bench/run's scenario 4 measures the same through Caddy.
func BenchmarkRefusal(b *testing.B) { benchRefusal(b, "bench-refusal", "") }

// benchRefusal measures 423s for PUT /hot, held in zone, to a client
// sending accept ("" sends no Accept header).
func benchRefusal(b *testing.B, zone, accept string) {
	h := provisionedHandler(b, zone)
	// As in a Caddy that logs at INFO or above: debug lines are not written.
	h.logger = zap.NewNop()
	held, err := h.zone.locker.Acquire(context.Background(), lockstore.Request{Key: "/hot", Kind: lockstore.Exclusive})
	if err != nil {
		b.Fatal(err)
	}
	defer held.Release()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPut, "/hot", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	r := caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, nil)
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		b.Fatal("a refused request reached the next handler")
		return nil
	})
	w := &discardWriter{header: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		clear(w.header)
		if err := h.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
		if w.status != http.StatusLocked {
			b.Fatalf("status %d, want 423", w.status)
		}
	}
}

// discardWriter is a ResponseWriter that keeps the status and drops the
// body, so that BenchmarkRefusal measures the handler, not a recorder.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
