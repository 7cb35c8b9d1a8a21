package caddylock

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A read that takes no lock costs the handler no allocation: the same
// request through the handler and straight to the next handler allocate
// alike (goal 2 of BENCHMARKS.md). Setting the placeholders would
// allocate the replacer map's first bucket.
func TestReadWithoutLockAllocatesNothing(t *testing.T) {
	h := provisionedHandler(t, "alloc-read")
	tmpl := httptest.NewRequest(http.MethodGet, "/docs/a", nil)
	w := &discardWriter{header: http.Header{}}
	served := 0
	next := proxyNext(&served)
	serve := func(withLock bool) func() {
		return func() {
			r := caddyhttp.PrepareRequest(tmpl, caddy.NewReplacer(), w, nil)
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
	if lock != route {
		t.Fatalf("a read through the lock handler allocates %v times, straight to the next handler %v: the handler's own %v, want 0", lock, route, lock-route)
	}
}

// A request that a lock handler lets pass without a lock shows that
// handler's placeholders (no key, result none), also when an earlier lock
// handler of another zone took a lock for it and set its own.
func TestUnlockedPlaceholdersOverrideAnEarlierHandlers(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, `route {
	lock {
		zone phouter
	}
	lock {
		zone phinner
		exclusive POST
	}
	respond "{http.lock.key}|{http.lock.result}|{http.lock.fence}|{http.lock.wait}"
}`, b)
	if r := mustDo(t, http.MethodPut, url+"/a", nil, 200); r.body != "|none||0s" {
		t.Fatalf("PUT: body %q, want the inner handler's |none||0s", r.body)
	}
	if r := mustDo(t, http.MethodGet, url+"/a", nil, 200); r.body != "|none||0s" {
		t.Fatalf("GET: body %q, want |none||0s", r.body)
	}
}
