package redisstore

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Metrics of the Redis store, created once per process like the handler's
// (a new registry comes with every config load; the counts carry on) and
// labelled by zone and operation: the script's name
// (acquire, release, renew, leave, or an explicit-lock operation) or the
// plain command's name. Both sets are small and fixed.
var (
	metricsOnce  sync.Once
	storeMetrics struct {
		seconds *prometheus.HistogramVec
		errors  *prometheus.CounterVec
	}
)

func initMetrics() {
	storeMetrics.seconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "lock",
		Name:      "redis_seconds",
		Help:      "Round-trip time of Redis calls of the lock store, retries included, by zone and operation.",
		Buckets:   []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1},
	}, []string{"zone", "op"})
	storeMetrics.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "lock",
		Name:      "redis_errors_total",
		Help:      "Redis calls of the lock store that failed (unreachable, timed out, or refused), by zone and operation.",
	}, []string{"zone", "op"})
}

func registerMetrics(ctx caddy.Context, logger *zap.Logger) {
	metricsOnce.Do(initMetrics)
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{storeMetrics.seconds, storeMetrics.errors} {
		if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			logger.Error("registering redis lock metrics", zap.Error(err))
		}
	}
}

// scriptOps names the store's scripts by SHA1, as EVALSHA sends them.
var scriptOps = map[string]string{
	acquireScript.Hash(): "acquire",
	releaseScript.Hash(): "release",
	leaveScript.Hash():   "leave",
	renewScript.Hash():   "renew",
	// the admin API's listing
	livePageScript.Hash(): "list_held",
	// explicit locks
	xCreateScript.Hash():      "explicit_create",
	xRefreshScript.Hash():     "explicit_refresh",
	xRemoveScript.Hash():      "explicit_remove",
	xRemoveUnderScript.Hash(): "explicit_remove_under",
	xAffectingScript.Hash():   "explicit_affecting",
}

// opOf names the operation a command performs.
func opOf(cmd redis.Cmder) string {
	name := cmd.Name()
	args := cmd.Args()
	if len(args) < 2 {
		return name
	}
	ref, _ := args[1].(string)
	switch name {
	case "eval":
		// The fallback after NOSCRIPT sends the source.
		sum := sha1.Sum([]byte(ref))
		ref = hex.EncodeToString(sum[:])
	case "evalsha":
	default:
		return name
	}
	if op, ok := scriptOps[ref]; ok {
		return op
	}
	return "script"
}

// metricsHook times every command of a zone's client and counts its
// failures. A missing key (redis.Nil) and NOSCRIPT, which go-redis
// answers by sending the script, are not failures.
type metricsHook struct{ zone string }

func (h metricsHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h metricsHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		h.observe(opOf(cmd), time.Since(start), err)
		return err
	}
}

func (h metricsHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		h.observe(pipelineOp(cmds), time.Since(start), err)
		return err
	}
}

// pipelineOp names a pipeline by the operation of its commands when they
// all perform the same one (acquires or releases sent together, see
// batcher): each of their callers waited that long for its reply.
func pipelineOp(cmds []redis.Cmder) string {
	op := ""
	for _, c := range cmds {
		switch o := opOf(c); {
		case op == "":
			op = o
		case o != op:
			return "pipeline"
		}
	}
	if op == "" {
		return "pipeline"
	}
	return op
}

func (h metricsHook) observe(op string, d time.Duration, err error) {
	metricsOnce.Do(initMetrics)
	storeMetrics.seconds.WithLabelValues(h.zone, op).Observe(d.Seconds())
	if err != nil && !errors.Is(err, redis.Nil) && !isNoScript(err) {
		storeMetrics.errors.WithLabelValues(h.zone, op).Inc()
	}
}

func isNoScript(err error) bool { return redis.HasErrorPrefix(err, "NOSCRIPT") }
