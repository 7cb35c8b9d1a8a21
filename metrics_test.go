package caddylock

// The handler's Prometheus metrics, as the metrics endpoint shows them.

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// meteredRuns names each run's zone afresh: the metrics registry outlives
// a run, so with -count above 1 a fixed zone would carry earlier counts.
var meteredRuns atomic.Int64

func TestMetricsExposed(t *testing.T) {
	b := newBackend(t)
	admin := freePort(t)
	zone := fmt.Sprintf("metered%d", meteredRuns.Add(1))
	url := loadCaddy(t, freePort(t), fmt.Sprintf("admin 127.0.0.1:%d\nmetrics", admin), "lock {\n zone "+zone+"\n wait 100ms\n}\nreverse_proxy {backend}", b)
	t.Cleanup(func() { _ = caddy.Stop() })
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	m := mustDo(t, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", admin), nil, 200).body
	for _, want := range []string{
		`caddy_lock_requests_total{result="acquired",zone="` + zone + `"} 1`,
		`caddy_lock_requests_total{result="conflict",zone="` + zone + `"} 1`,
		`caddy_lock_held{zone="` + zone + `"} 1`,
		`caddy_lock_wait_seconds_bucket{zone="` + zone + `"`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	b.open("w")
	<-done
}
