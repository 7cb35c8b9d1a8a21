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
	b := newDocBackend(t, true)
	b.set("/r", "x")
	zone := fmt.Sprintf("precondres%d", meteredRuns.Add(1))
	url, admin := startCaddyAdmin(t, "metrics", fmt.Sprintf(
		"header >X-Result {http.lock.result}\nheader >X-Precondition {http.lock.precondition}\n"+
			"lock /r* {\n zone %s\n verify_etag\n require_if_match\n}\nreverse_proxy %s",
		zone, strings.TrimPrefix(b.URL, "http://")), nil)
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
