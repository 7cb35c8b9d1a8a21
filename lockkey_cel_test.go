package caddylock

import (
	"net/http"
	"testing"
)

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
