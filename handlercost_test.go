package caddylock

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A locked write costs the handler three allocations of its own: the hold
// context, the context package's cancelCtx under it and that one's cancel
// function (see holdContext). The request is not copied (serveOn) and the
// key is not boxed as a placeholder (heldKey).
func TestLockedWriteAllocations(t *testing.T) {
	if own := handlerOwnAllocs(t, "alloc-write", http.MethodPut); own > 3 {
		t.Fatalf("a locked write: the handler's own allocations %v, want at most 3", own)
	}
}

// handlerOwnAllocs is what BenchmarkHandlerOwn measures, as a count: the
// allocations of a request of method through a lock handler of zone,
// less those of the same request straight to the next handler.
func handlerOwnAllocs(t *testing.T, zone, method string) float64 {
	t.Helper()
	if raceEnabled() {
		// The race detector changes what allocates (sync.Pool drops
		// items on purpose); .ci/run counts without it.
		t.Skip("allocations are counted without the race detector")
	}
	h := provisionedHandler(t, zone)
	tmpl := ownRequest(method, "/docs/a")
	w := &discardWriter{header: http.Header{}}
	served := 0
	next := proxyNext(&served)
	// As net/http does: every request's context is cancellable, a child
	// of its connection's.
	conn, closeConn := context.WithCancel(context.Background())
	defer closeConn()
	serve := func(withLock bool) func() {
		return func() {
			ctx, cancel := context.WithCancel(conn)
			defer cancel()
			r := caddyhttp.PrepareRequest(tmpl.WithContext(ctx), caddy.NewReplacer(), w, nil)
			var err error
			if withLock {
				err = h.ServeHTTP(w, r, next)
			} else {
				err = next.ServeHTTP(w, r)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	route := testing.AllocsPerRun(200, serve(false))
	lock := testing.AllocsPerRun(200, serve(true))
	t.Logf("%s: %v allocations through the lock handler, %v straight to the next handler", method, lock, route)
	return lock - route
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
