package caddylock

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

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
