package caddylock

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkHandlerOwn measures what the lock handler adds to a request and
// nothing else, as the difference between two sub-benchmarks of one run:
// <method>/lock runs a request through the handler and on to a next
// handler, <method>/route runs the same request straight to the same next
// handler. Both build every request alike, the way Caddy's server prepares
// it (a fresh replacer, vars and context per request, since the handler
// writes its placeholders there) on a context that net/http gives every
// request (cancelled when the request ends, a child of its connection's),
// and the next handler uses the context as reverse_proxy does
// (proxyNext); so lock minus route, in
// ns/op and allocs/op, is the handler's own cost, apart from Caddy's
// request set-up and from the benchmark's. bench/run reports the
// differences as goal 2 of BENCHMARKS.md. write is a PUT with a body,
// which takes and releases an exclusive lock; read a GET, which with the
// defaults takes none.
func BenchmarkHandlerOwn(b *testing.B) {
	for _, c := range []struct{ name, method string }{
		{"write", http.MethodPut},
		{"read", http.MethodGet},
	} {
		for _, through := range []string{"route", "lock"} {
			b.Run(c.name+"/"+through, func(b *testing.B) {
				benchHandlerOwn(b, "bench-own-"+c.name, c.method, through == "lock")
			})
		}
	}
}

func benchHandlerOwn(b *testing.B, zone, method string, withLock bool) {
	h := provisionedHandler(b, zone)
	// Templates, never served themselves: PrepareRequest serves a copy.
	tmpl := make([]*http.Request, 10000)
	for i := range tmpl {
		tmpl[i] = ownRequest(method, "/docs/"+strconv.Itoa(i))
	}
	w := &discardWriter{header: http.Header{}}
	served := 0
	next := proxyNext(&served)
	// The connection's context: net/http cancels a request's context when
	// the request ends, and the transport of reverse_proxy derives its own
	// from it (or from the lock's, with the lock).
	conn, closeConn := context.WithCancel(context.Background())
	defer closeConn()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ctx, cancel := context.WithCancel(conn)
		r := caddyhttp.PrepareRequest(tmpl[i%len(tmpl)].WithContext(ctx), caddy.NewReplacer(), w, nil)
		var err error
		if withLock {
			err = h.ServeHTTP(w, r, next)
		} else {
			err = next.ServeHTTP(w, r)
		}
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// A lock left held would refuse the key when it comes round again.
	if served != b.N {
		b.Fatalf("%d of %d requests reached the next handler", served, b.N)
	}
}

// provisionedHandler returns a lock handler of zone with its defaults,
// provisioned, and cleaned up when b ends.
func provisionedHandler(b testing.TB, zone string) *Handler {
	h := &Handler{Zone: zone}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// transportNext is a next handler that does to the request's context what
// reverse_proxy's transport does (a cancellable child, watched through
// Done), so that costs the context would incur there anyway are not
// counted as the lock's. It counts the requests it served in served.
func transportNext(served *int) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		select {
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		*served++
		return nil
	})
}

// proxyValueKeys are the context keys reverse_proxy looks up for every
// request it proxies, each about twice (ten lookups in a CPU profile of a
// proxied PUT): its replacer, vars, server, original request and log
// fields.
var proxyValueKeys = []any{caddy.ReplacerCtxKey, caddyhttp.VarsCtxKey, caddyhttp.ServerCtxKey,
	caddyhttp.OriginalRequestCtxKey, caddyhttp.ExtraLogFieldsCtxKey}

// proxyNext is transportNext behind what reverse_proxy does to the
// request's context first: it looks up proxyValueKeys twice each, sets
// its placeholders of the upstream, and adds a value (the dial information) that the transport's cancellable context
// then derives from. A lock handler whose context makes those lookups
// cost more, or makes the context package watch it with a goroutine of
// its own (which it does for a parent it cannot find a cancelCtx or an
// AfterFunc method on, as behind a value), costs that much more per
// request.
func proxyNext(served *int) caddyhttp.Handler {
	transport := transportNext(served)
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		ctx := r.Context()
		for range 2 {
			for _, k := range proxyValueKeys {
				if ctx.Value(k) == nil && k != caddyhttp.ServerCtxKey {
					return fmt.Errorf("no %v in the request's context", k)
				}
			}
		}
		// Its placeholders of the upstream, set for every request: the
		// first Set of a request gives the replacer's map its first
		// bucket, whichever handler makes it.
		ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Set("http.reverse_proxy.upstream.hostport", "127.0.0.1:80")
		ctx = context.WithValue(ctx, dialInfoKey{}, r.URL.Path)
		return transport.ServeHTTP(w, r.WithContext(ctx))
	})
}

// dialInfoKey stands for reverse_proxy's context key of its dial
// information.
type dialInfoKey struct{}

// ownRequest is a request of BenchmarkHandlerOwn: a PUT has a body, as a
// write does (the handler watches it for max_hold), one that reads as
// empty every time without allocating.
func ownRequest(method, target string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	if method == http.MethodPut {
		r.Body, r.ContentLength = emptyBody{}, 4
	}
	return r
}

// emptyBody is a request body that ends at once.
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }
