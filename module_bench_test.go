package caddylock

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
			h := &Handler{Zone: "bench-servehttp-" + c.name}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := h.Provision(ctx); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = h.Cleanup() }()
			w := httptest.NewRecorder()
			reqs := make([]*http.Request, 10000)
			for i := range reqs {
				r := httptest.NewRequest(c.method, "/docs/"+strconv.Itoa(i), nil)
				reqs[i] = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
			}
			// The next handler does to the request's context what
			// reverse_proxy's transport does (a cancellable child,
			// watched through Done), so that costs the context would
			// incur there anyway are not counted as the lock's.
			served := 0
			next := caddyhttp.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error {
				ctx, cancel := context.WithCancel(r.Context())
				defer cancel()
				select {
				case <-ctx.Done():
					return ctx.Err()
				default:
				}
				served++
				return nil
			})
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
