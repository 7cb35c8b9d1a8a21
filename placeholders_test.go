package caddylock

import (
	"net/http"
	"testing"
)

// A read that takes no lock costs the handler no allocation: the same
// request through the handler and straight to the next handler allocate
// alike (goal 2 of BENCHMARKS.md). Setting the placeholders would
// allocate the replacer map's first bucket.
func TestReadWithoutLockAllocatesNothing(t *testing.T) {
	if own := handlerOwnAllocs(t, "alloc-read", http.MethodGet); own != 0 {
		t.Fatalf("a read: the handler's own allocations %v, want 0", own)
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

// {http.lock.key} of a granted write reads as the key's string in every
// place Caddy reads placeholders: in a CEL expression matcher (which
// converts the placeholder's value by its type, not with fmt.Stringer)
// as in a header value and a vars matcher.
func TestLockKeyPlaceholderInMatchers(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, `route {
	lock {
		zone keyph
	}
	@cel expression `+"`"+`{http.lock.key} == "/docs/a"`+"`"+`
	header @cel X-Cel yes
	@vars vars {http.lock.key} /docs/a
	header @vars X-Vars yes
	header X-Key {http.lock.key}
	reverse_proxy {backend}
}`, b)
	r := mustDo(t, http.MethodPut, url+"/docs/a", nil, http.StatusOK)
	for name, want := range map[string]string{"X-Cel": "yes", "X-Vars": "yes", "X-Key": "/docs/a"} {
		if got := r.header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}
