package caddylock

// The one acquisition path: a plain request (ServeHTTP) and a WebDAV one
// (davRequest.hold) take their in-flight locks alike. In order: take the
// locks (reading the body of a write that queues), record the wait, pass
// without locks when the store is unreachable and on_error says
// fail_open, publish the fencing number, tell acquired from waited, hold
// the locks on a context bounded by max_hold, and guard the leases a
// store can lose. What the request then does under its locks, and how a
// refusal is answered, is the caller's.

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// acquisition is what a request holds from acquire until release: the
// body read while it queued, the hold context, and the guards of leases
// that a store can lose. A plain request keeps it on its stack: taking
// one lock allocates nothing here beyond the hold context.
type acquisition struct {
	bw bodyWait
	// hc holds the leases; nil when the request passes without locks
	// (fail_open).
	hc *holdContext
	// ctx is the context for the rest of the route: hc with the guards'
	// traces, or the request's own when it passes without locks.
	ctx context.Context
	// guard watches the first lease that can be lost; more the others
	// (a WebDAV MOVE or COPY holds two locks). nil for leases that
	// cannot be lost.
	guard *leaseGuard
	more  []*leaseGuard
	// lease is the first lease, whose fencing number the backend sees.
	lease lockstore.Lease
	// result is resultAcquired, resultWaited or resultFailOpen.
	result string
	// storeErr is the store's error that made the request pass without
	// locks (fail_open).
	storeErr error
	// conflictHere is set by a caller that answers a conflict from
	// a.conflict (ServeHTTP, with refuseWith): a memory table that
	// refuses at once writes the conflict there, and acquire returns
	// errConflictInto, so that the 423 allocates no error.
	conflictHere bool
	conflict     lockstore.ConflictError
}

// acquire takes the in-flight locks of reqs for r (whose key is key, for
// logs and errors), in the order given, each with the handler's wait.
// On error nothing is held and the error (a lock refusal) is the
// caller's to answer. Otherwise the caller must call a.release when the
// route is done, and a.ready before the request goes on; a.result is
// resultFailOpen when the store could not be reached and its on_error
// lets the request pass without locks.
func (h *Handler) acquire(a *acquisition, w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, z *zone, key string, reqs ...lockstore.Request) error {
	start := time.Now()
	// A write that queues reads its body meanwhile, so that a client
	// that leaves leaves the queue (see bodyWait). Its body is watched
	// for max_hold before anything reads it (watchBody), by the hold
	// context it will have: made now when the body may be read while
	// the request queues, else at the grant, so that a refusal makes
	// none.
	var hc *holdContext
	if h.Wait > 0 && hasBody(r) {
		hc = new(holdContext)
		hc.watchBody(w, r)
	}
	a.bw = h.newBodyWait(w, r)
	var first lockstore.Lease
	var leases []lockstore.Lease // only when there are several
	if len(reqs) > 1 {
		leases = make([]lockstore.Lease, 0, len(reqs))
	}
	for i, q := range reqs {
		q.Wait = time.Duration(h.Wait)
		var l lockstore.Lease
		var err error
		if ml, ok := z.locker.(*memLocker); ok && a.conflictHere && q.Wait <= 0 {
			// What bodyWait.acquire does without wait, with the
			// conflict written into a.
			l, err = ml.acquireInto(r.Context(), q, &a.conflict)
		} else {
			l, err = a.bw.acquire(z.locker, q)
		}
		if err != nil {
			if i > 0 {
				for _, l := range leases {
					l.Release()
				}
			}
			h.recordWait(repl, start) // a wait in vain is a wait too
			if h.failsOpen(err) {
				// fail_open: the request goes on without in-flight locks,
				// with the body it may have begun to read.
				a.ctx, a.result, a.storeErr = r.Context(), resultFailOpen, err
				return nil
			}
			a.bw.end() // before the answer: see bodyWait.stop
			return err
		}
		if i == 0 {
			first = l
		}
		if leases != nil {
			leases = append(leases, l)
		}
	}
	waited := h.recordWait(repl, start)
	// The lease of the first key carries the fencing number the backend
	// sees; with MOVE and COPY that is the lower of the two keys.
	h.granted(r, repl, first)
	a.lease = first
	a.result = resultAcquired
	if leases == nil {
		if queued(first) {
			a.result = resultWaited
		}
	} else if slices.ContainsFunc(leases, queued) {
		a.result = resultWaited
	}
	// The rest of the route runs on a context that a departing client
	// does not cancel, and that max_hold ends (see hold.go); the locks
	// are released when the route has returned (release).
	if hc == nil {
		// Nothing has read the body: the request did not queue.
		hc = new(holdContext)
		hc.watchBody(w, r)
	}
	if leases == nil {
		a.hc = h.reaper.hold(hc, r.Context(), start.Add(waited), first)
		a.guard, a.ctx = h.guardLease(a.hc, a.hc, first, key)
		return nil
	}
	a.hc = h.reaper.holdAll(hc, r.Context(), start.Add(waited), leases)
	a.ctx = a.hc
	for _, l := range leases {
		var g *leaseGuard
		if g, a.ctx = h.guardLease(a.ctx, a.hc, l, key); g == nil {
			continue
		}
		if a.guard == nil {
			a.guard = g
		} else {
			a.more = append(a.more, g)
		}
	}
	return nil
}

// ready is called once the request holds its locks (or passes without
// them), just before it goes on: a write that queued goes on only with
// its whole body and its client still there (see bodyWait.ready). Plain
// writes (ServeHTTP) and WebDAV ones (davRequest.hold) both come here, and
// nothing has gone upstream yet.
//
// Right after it, both callers run the ETag preconditions
// (Handler.checkPreconditions) under the locks, so that no other write
// can change the resource between the check and the request's own
// write; a check of that kind goes beside them (docs/acquisition.md).
func (a *acquisition) ready() error {
	return a.bw.ready(a.ctx)
}

// writer wraps w so that a request cancelled for a lost lease is answered
// 503 (see leaseGuard.writer).
func (a *acquisition) writer(w http.ResponseWriter) http.ResponseWriter {
	w = a.guard.writer(w)
	for _, g := range a.more {
		w = g.writer(w)
	}
	return w
}

// settle turns the error of a route cancelled for a lost lease into a 503
// (see leaseGuard.settle).
func (a *acquisition) settle(w http.ResponseWriter, key string, err error) error {
	err = a.guard.settle(w, key, err)
	for _, g := range a.more {
		err = g.settle(w, key, err)
	}
	return err
}

// release ends the guards, releases the locks and ends the body's read;
// call it when the route is done.
func (a *acquisition) release() {
	a.guard.stop()
	for _, g := range a.more {
		g.stop()
	}
	if a.hc != nil {
		a.hc.finish()
	}
	a.bw.end()
}

// failsOpen reports whether a request goes on without the lock that err
// kept it from: the store could not be reached (not one that answered
// with an error, see lockstore.ErrStoreFailed) and its on_error is
// fail_open.
func (h *Handler) failsOpen(err error) bool {
	return errors.Is(err, lockstore.ErrStoreUnavailable) && h.store.FailOpen()
}

// recordWait records how long a request waited for its locks since
// start, whether it got them or not: as {http.lock.wait}, and in the wait
// histogram of a zone with wait.
func (h *Handler) recordWait(repl *caddy.Replacer, start time.Time) time.Duration {
	waited := time.Since(start)
	repl.Set("http.lock.wait", waited)
	if h.Wait > 0 {
		h.metrics.wait.Observe(waited.Seconds())
	}
	return waited
}

// queued reports whether lease was granted after its request waited in
// the queue: that, not how long Acquire took, makes the result "waited".
func queued(lease lockstore.Lease) bool {
	return lease.Queued()
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

// failOpen passes a request whose lock could not be taken because the
// store is unreachable, as on_error fail_open asks.
func (h *Handler) failOpen(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string, err error, next caddyhttp.Handler) error {
	h.storeTrouble(key, err)
	repl.Set("http.lock.result", resultFailOpen)
	h.metrics.count(resultFailOpen)
	return next.ServeHTTP(w, r)
}
