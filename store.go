package caddylock

// Lock stores: where a zone's lock tables live. Without a store a zone's
// tables are in this process's memory; a store module (namespace
// http.handlers.lock.stores, such as redis) puts them where several Caddy
// instances share them. This file holds the seam and the handler's side
// of it: the store's failure policy, fencing numbers and lost leases.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Results of {http.lock.result} and the requests metric when the store
// cannot be reached.
const (
	// resultUnavailable: refused with 503 (fail_closed).
	resultUnavailable = "unavailable"
	// resultFailOpen: passed to the next handler without a lock (fail_open).
	resultFailOpen = "fail_open"
	// resultStoreError: refused with 503 because the store answered with
	// an error (ErrStoreFailed), whatever on_error says.
	resultStoreError = "store_error"
)

// unmarshalStore reads `store <name> { ... }` at the dispenser's "store"
// token and returns the module's JSON with its type set.
func unmarshalStore(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.Errf("lock: store: expected a store type, such as redis")
	}
	name := d.Val()
	if _, err := caddy.GetModule("http.handlers.lock.stores." + name); err != nil {
		return nil, d.Errf("lock: store: unknown store type %q; expected memory or redis", name)
	}
	unm, err := caddyfile.UnmarshalModule(d, "http.handlers.lock.stores."+name)
	if err != nil {
		return nil, err
	}
	var warnings []caddyconfig.Warning
	raw := caddyconfig.JSONModuleObject(unm, "type", name, &warnings)
	if len(warnings) > 0 {
		return nil, d.Errf("lock: store %s: %s", name, warnings[0].Message)
	}
	return raw, nil
}

// warnEvery spaces out the log entries about an unreachable store: when
// it is down, every request would otherwise log one.
const warnEvery = 10 * time.Second

// troubleLog counts requests affected by an unreachable store between
// log entries.
type troubleLog struct {
	count  atomic.Int64 // requests since the last entry
	logged atomic.Int64 // time of the last entry, Unix ns
}

// storeTrouble logs that the store could not be reached, at most once per
// warnEvery per handler, with the number of requests affected since the
// last entry.
func (h *Handler) storeTrouble(key string, err error) {
	n := h.trouble.count.Add(1)
	now := time.Now().UnixNano()
	last := h.trouble.logged.Load()
	if now-last < int64(warnEvery) || !h.trouble.logged.CompareAndSwap(last, now) {
		return
	}
	h.trouble.count.Add(-n)
	msg, policy := "lock store unavailable: refusing requests with 503", "fail_closed"
	if errors.Is(err, lockstore.ErrStoreFailed) {
		msg = "lock store answered with an error: refusing requests with 503, whatever on_error says"
	} else if h.store.FailOpen() {
		msg, policy = "lock store unavailable: passing requests WITHOUT locks", "fail_open"
	}
	h.logger.Warn(msg, zap.String("zone", h.Zone), zap.String("on_error", policy),
		zap.Int64("requests", n), zap.String("key", key), zap.Error(err))
}

// failOpen passes a request whose lock could not be taken because the
// store is unreachable, as on_error fail_open asks.
func (h *Handler) failOpen(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string, err error, next caddyhttp.Handler) error {
	h.storeTrouble(key, err)
	repl.Set("http.lock.result", resultFailOpen)
	h.metrics.count(resultFailOpen)
	return next.ServeHTTP(w, r)
}

// granted publishes a lease's fencing number, if it has one, as
// {http.lock.fence} and in the fence header.
func (h *Handler) granted(r *http.Request, repl *caddy.Replacer, lease lockstore.Lease) {
	f, ok := lease.(lockstore.Fenced)
	if !ok {
		return
	}
	fence := strconv.FormatInt(f.Fence(), 10)
	repl.Set("http.lock.fence", fence)
	if h.FenceHeader != "" {
		r.Header.Set(h.FenceHeader, fence)
	}
}

// Upstream states of a guarded lease.
const (
	leasePending int32 = iota // the upstream request has not been sent
	leaseSent                 // it has (a connection to the upstream was obtained)
	leaseLost                 // the lease was lost before it was sent
)

// leaseGuard watches a lease that can be lost (a Redis lease whose renewal
// failed) while its request runs. Lost before the upstream request is
// sent, the request is cancelled: it would write without the lock. Lost
// after, cancelling would leave a half-written resource, so the write
// goes on and the loss is logged; only a backend that checks fencing
// numbers can then refuse it. "Sent" is when reverse_proxy gets a
// connection to the upstream, which httptrace reports. A nil guard (for
// a lease that cannot be lost) does nothing.
type leaseGuard struct {
	state atomic.Int32  // leasePending, then leaseSent or leaseLost
	done  chan struct{} // closed when the route is done
}

// guardLease starts watching lease, held with hc, and returns the guard
// and ctx (hc or a context derived from it) with the guard's trace.
func (h *Handler) guardLease(ctx context.Context, hc *holdContext, lease lockstore.Lease, key string) (*leaseGuard, context.Context) {
	rv, ok := lease.(lockstore.Revocable)
	if !ok {
		return nil, ctx
	}
	g := &leaseGuard{done: make(chan struct{})}
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { g.state.CompareAndSwap(leasePending, leaseSent) },
	})
	go func() {
		select {
		case <-g.done:
			return
		case <-rv.Lost():
		}
		countLostLease(h.Zone)
		fence := ""
		if f, ok := lease.(lockstore.Fenced); ok {
			fence = strconv.FormatInt(f.Fence(), 10)
		}
		if g.state.CompareAndSwap(leasePending, leaseLost) {
			h.logger.Error("lock lease lost before the request was sent upstream; cancelling it",
				zap.String("zone", h.Zone), zap.String("key", key), zap.String("fence", fence))
			hc.end(context.Canceled)
			return
		}
		h.logger.Error("lock lease lost while the upstream request was in flight; it goes on unlocked, "+
			"and another instance may now hold the lock", zap.String("zone", h.Zone), zap.String("key", key),
			zap.String("fence", fence))
	}()
	return g, ctx
}

// stop ends the watch; call it when the route is done.
func (g *leaseGuard) stop() {
	if g != nil {
		close(g.done)
	}
}

func (g *leaseGuard) lostEarly() bool { return g != nil && g.state.Load() == leaseLost }

// writer wraps w so that a request cancelled for a lost lease is answered
// 503 with Retry-After (nothing reached the backend; the client may try
// again) instead of the 499 that reverse_proxy writes for a cancellation.
func (g *leaseGuard) writer(w http.ResponseWriter) http.ResponseWriter {
	if g == nil {
		return w
	}
	return lostLeaseWriter{&caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, g}
}

// settle turns the error of a route cancelled for a lost lease into a 503.
func (g *leaseGuard) settle(w http.ResponseWriter, key string, err error) error {
	if err == nil || !g.lostEarly() {
		return err
	}
	w.Header().Set("Retry-After", "1")
	// %v, not %w: caddyhttp.Error keeps the status of a wrapped
	// HandlerError (such as a 499 for the cancellation).
	return caddyhttp.Error(http.StatusServiceUnavailable,
		fmt.Errorf("lock %s: lease lost before the request was sent upstream: %v", key, err))
}

type lostLeaseWriter struct {
	*caddyhttp.ResponseWriterWrapper
	g *leaseGuard
}

func (w lostLeaseWriter) WriteHeader(status int) {
	if status == 499 && w.g.lostEarly() {
		w.Header().Set("Retry-After", "1")
		status = http.StatusServiceUnavailable
	}
	w.ResponseWriterWrapper.WriteHeader(status)
}
