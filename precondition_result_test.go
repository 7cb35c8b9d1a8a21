package caddylock

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// A write the precondition check refuses says why in {http.lock.result}
// and is counted by that result in caddy_lock_requests_total, never as
// acquired; a write that passes is counted once, as acquired.
func TestPreconditionRefusalResult(t *testing.T) {
	for _, mode := range []string{"", "webdav"} {
		t.Run("mode="+mode, func(t *testing.T) { testPreconditionRefusalResult(t, mode) })
	}
}

func testPreconditionRefusalResult(t *testing.T, mode string) {
	b := newDocBackend(t, true)
	b.set("/r", "x")
	zone := fmt.Sprintf("precondres%d", meteredRuns.Add(1))
	url, admin := startCaddyAdmin(t, "metrics", fmt.Sprintf(
		"header >X-Result {http.lock.result}\nheader >X-Precondition {http.lock.precondition}\n"+
			"lock /r* {\n zone %s\n verify_etag\n require_if_match\n %s\n}\nreverse_proxy %s",
		zone, mode, strings.TrimPrefix(b.URL, "http://")), nil)
	cur := send(t, http.MethodHead, url+"/r", "").header.Get("ETag")
	for _, c := range []struct {
		name         string
		header       []string
		status       int
		result, prec string
	}{
		{"malformed", []string{"If-Match", "unquoted"}, http.StatusBadRequest, resultBadPrecondition, preconditionFailed},
		{"stale", []string{"If-Match", `"stale"`}, http.StatusPreconditionFailed, resultPreconditionFailed, preconditionFailed},
		{"none", nil, http.StatusPreconditionRequired, resultPreconditionRequired, preconditionMissing},
		{"current", []string{"If-Match", cur}, http.StatusNoContent, resultAcquired, preconditionPassed},
	} {
		r := send(t, http.MethodPut, url+"/r", c.name, c.header...)
		if r.status != c.status || r.header.Get("X-Result") != c.result || r.header.Get("X-Precondition") != c.prec {
			t.Errorf("%s: %d, result %q, precondition %q; want %d %s %s; body %s", c.name, r.status,
				r.header.Get("X-Result"), r.header.Get("X-Precondition"), c.status, c.result, c.prec, r.body)
		}
	}
	metrics := admin + "/metrics"
	for result, want := range map[string]float64{
		resultBadPrecondition: 1, resultPreconditionFailed: 1, resultPreconditionRequired: 1, resultAcquired: 1,
	} {
		if v := metricValue(t, metrics, `caddy_lock_requests_total{result="`+result+`",zone="`+zone+`"}`); v != want {
			t.Errorf("requests_total{result=%q} = %v, want %v", result, v, want)
		}
	}
	if w := b.writesSeen(); len(w) != 1 || !strings.HasPrefix(w[0], "PUT /r current") {
		t.Fatalf("backend saw %q, want the current write only", w)
	}
}

// A lock handler nested in one of its zone that already holds the write's
// lock (a site-wide lock without these options) still applies its own
// require_if_match and verify_etag, under that lock.
func TestPreconditionNestedHandler(t *testing.T) {
	b := newDocBackend(t, true)
	b.set("/api/doc", "v1")
	zone := strings.NewReplacer("/", "_").Replace(t.Name())
	url := startCaddy(t, fmt.Sprintf(`header >X-Result {http.lock.result}
header >X-Precondition {http.lock.precondition}
route {
	lock {
		zone %[1]s
	}
	lock /api/* {
		zone %[1]s
		verify_etag
		require_if_match
	}
	reverse_proxy %[2]s
}`, zone, strings.TrimPrefix(b.URL, "http://")), nil)
	cur := send(t, http.MethodGet, url+"/api/doc", "").header.Get("ETag")
	if r := send(t, http.MethodPut, url+"/api/doc", "blind"); r.status != http.StatusPreconditionRequired ||
		r.header.Get("X-Result") != resultPreconditionRequired || r.header.Get("X-Precondition") != preconditionMissing {
		t.Fatalf("blind write: %d, result %q, precondition %q; body %s", r.status, r.header.Get("X-Result"), r.header.Get("X-Precondition"), r.body)
	}
	if r := send(t, http.MethodPut, url+"/api/doc", "stale", "If-Match", `"v0"`); r.status != http.StatusPreconditionFailed ||
		r.header.Get("X-Result") != resultPreconditionFailed || problemETag(t, r) != cur {
		t.Fatalf("stale write: %d, result %q; body %s", r.status, r.header.Get("X-Result"), r.body)
	}
	if r := send(t, http.MethodPut, url+"/api/doc", "v2", "If-Match", cur); r.status != http.StatusNoContent ||
		r.header.Get("X-Precondition") != preconditionPassed {
		t.Fatalf("current write: %d, precondition %q; body %s", r.status, r.header.Get("X-Precondition"), r.body)
	}
	// Outside the inner handler's matcher, the outer lock alone.
	if r := send(t, http.MethodPut, url+"/other", "free"); r.status != http.StatusCreated || r.header.Get("X-Result") != resultAcquired {
		t.Fatalf("write outside /api: %d, result %q", r.status, r.header.Get("X-Result"))
	}
	if w := b.writesSeen(); len(w) != 2 {
		t.Fatalf("backend saw %q, want the current write and /other only", w)
	}
}

// With the Redis store's on_error fail_open and Redis down, a write goes
// on without its lock and so unchecked: {http.lock.precondition} says
// skipped (no lock, no atomic check) and the backend gets it as sent.
func TestPreconditionFailOpenSkipped(t *testing.T) {
	srv := startRedis(t)
	b := newDocBackend(t, true)
	b.set("/f", "v1")
	url := startCaddy(t, fmt.Sprintf(`header >X-Result {http.lock.result}
header >X-Precondition {http.lock.precondition}
lock {
	zone %s
	verify_etag
	require_if_match
	store redis {
		address %s
		timeout 200ms
		on_error fail_open
	}
}
reverse_proxy %s`, strings.NewReplacer("/", "_").Replace(t.Name()), srv.Addr, strings.TrimPrefix(b.URL, "http://")), nil)
	// Checked while Redis is up.
	if r := send(t, http.MethodPut, url+"/f", "stale", "If-Match", `"v0"`); r.status != http.StatusPreconditionFailed {
		t.Fatalf("stale write with Redis up: %d, want 412; body %s", r.status, r.body)
	}
	srv.Stop()
	r := send(t, http.MethodPut, url+"/f", "stale", "If-Match", `"v0"`)
	if r.status != http.StatusNoContent || r.header.Get("X-Result") != resultFailOpen || r.header.Get("X-Precondition") != preconditionSkipped {
		t.Fatalf("stale write with Redis down: %d, result %q, precondition %q; want 204 fail_open skipped; body %s",
			r.status, r.header.Get("X-Result"), r.header.Get("X-Precondition"), r.body)
	}
	if w := b.writesSeen(); len(w) != 1 || !strings.Contains(w[0], `If-Match="v0"`) {
		t.Fatalf("backend saw %q, want the unchecked write with its If-Match", w)
	}
}
