package caddylock

import (
	"context"
	"net/http"
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
