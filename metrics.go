package caddylock

import (
	"errors"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// The collectors are created once per process: Caddy hands out a new
// registry on every config load, and the counts must carry on across
// reloads like the locks do. They are labelled by zone and result only,
// never by key, which would be unbounded.
var (
	metricsOnce sync.Once
	lockMetrics struct {
		requests *prometheus.CounterVec
		held     *prometheus.GaugeVec
		wait     *prometheus.HistogramVec
		lost     *prometheus.CounterVec
		// preconditions counts writes by {http.lock.precondition}
		// (precondition.go).
		preconditions *prometheus.CounterVec
	}
)

func initMetrics() {
	lockMetrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "lock",
		Name:      "requests_total",
		Help:      "Requests seen by the lock handler, by zone and result (acquired, waited, conflict, full, none, unavailable, fail_open, store_error, too_deep, bad_key, ambiguous, bad_precondition, precondition_failed, precondition_required).",
	}, []string{"zone", "result"})
	lockMetrics.held = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "lock",
		Name:      "held",
		Help:      "Locks held by requests in flight, by zone.",
	}, []string{"zone"})
	lockMetrics.wait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "lock",
		Name:      "wait_seconds",
		Help:      "Time requests spent queued for a lock, by zone.",
		Buckets:   []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30},
	}, []string{"zone"})
	lockMetrics.lost = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "lock",
		Name:      "leases_lost_total",
		Help:      "In-flight locks whose lease was lost (not renewed in time) while their request ran, by zone.",
	}, []string{"zone"})
	lockMetrics.preconditions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "lock",
		Name:      "preconditions_total",
		Help:      "Writes checked by require_if_match or verify_etag, by zone and outcome (passed, failed, missing, skipped).",
	}, []string{"zone", "result"})
}

// zoneMetrics are the collectors of one zone, looked up once at provision
// time so that the request path does no label lookups.
type zoneMetrics struct {
	requests map[string]prometheus.Counter
	held     prometheus.Gauge
	wait     prometheus.Observer
	// preconditions by {http.lock.precondition} outcome.
	preconditions map[string]prometheus.Counter
}

func (m zoneMetrics) count(result string) { m.requests[result].Inc() }

func registerMetrics(ctx caddy.Context, logger *zap.Logger, zone string) zoneMetrics {
	metricsOnce.Do(initMetrics)
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		for _, c := range []prometheus.Collector{lockMetrics.requests, lockMetrics.held, lockMetrics.wait, lockMetrics.lost, lockMetrics.preconditions} {
			if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
				logger.Error("registering lock metrics", zap.Error(err))
			}
		}
	}
	m := zoneMetrics{
		requests:      make(map[string]prometheus.Counter),
		held:          lockMetrics.held.WithLabelValues(zone),
		wait:          lockMetrics.wait.WithLabelValues(zone),
		preconditions: make(map[string]prometheus.Counter, 4),
	}
	for _, r := range []string{resultAcquired, resultWaited, resultConflict, resultFull, resultNone, resultUnavailable, resultFailOpen, resultStoreError, resultTooDeep, resultBadKey, resultAmbiguous,
		resultBadPrecondition, resultPreconditionFailed, resultPreconditionRequired} {
		m.requests[r] = lockMetrics.requests.WithLabelValues(zone, r)
	}
	for _, r := range []string{preconditionPassed, preconditionFailed, preconditionMissing, preconditionSkipped} {
		m.preconditions[r] = lockMetrics.preconditions.WithLabelValues(zone, r)
	}
	return m
}

// countLostLease counts a lease lost while its request ran. Only leases
// that can be lost (lockstore.Revocable, such as Redis's) count; the
// series of a zone appears with its first loss.
func countLostLease(zone string) {
	metricsOnce.Do(initMetrics)
	lockMetrics.lost.WithLabelValues(zone).Inc()
}
