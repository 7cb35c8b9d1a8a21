package caddylock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// A granted request runs the rest of its route on a holdContext, which
// does two things:
//
//   - A client that goes away does not cancel it: a legacy backend half-way
//     through a write keeps writing, and the lock is held until it has
//     answered.
//   - max_hold bounds that. At the deadline the context ends with
//     context.DeadlineExceeded as its cause (reverse_proxy's transport
//     returns the cause, and reverse_proxy answers 504) and reads of the
//     client's body are cut off, so that a route blocked on a client that
//     trickles its body returns. The locks are released when the route has
//     returned, never before: a handler that ignores the cancellation (the
//     fastcgi transport does) may still be writing to the backend, and
//     releasing then would let a second write in beside it.
//
// The deadlines come from a holdReaper: every request of a handler gets
// the same max_hold, so deadlines arrive in the order the requests were
// granted, and one list with one timer serves them all.

// holdContext is the context of a granted request's route. Its
// cancellation is a cancelCtx of the context package (made by
// WithCancelCause), because only that one can be found through the value
// contexts that reverse_proxy wraps around it: the transport's context
// then registers with it, where a context of another type behind a value
// context makes the context package start a goroutine per request to
// watch it. The cancelCtx's parent is base, in the same allocation: it
// gives the request's values and the deadline, and has no cancellation
// of its own (so the request's cancelCtx, which a departing client
// cancels, is never found).
type holdContext struct {
	// Context is the cancelCtx: Done, Value and Deadline (through base)
	// are its own.
	context.Context
	cancel context.CancelCauseFunc
	base   holdBase

	mu sync.Mutex
	// released is set when the leases are released, at the end of the
	// route.
	released atomic.Bool
	// abort cuts off reads of the client's request body, at max_hold
	// (nil for a request without one); finished (guarded by mu) tells
	// that the route has returned, after which the client's connection
	// is not this request's to touch.
	abort    aborter
	finished bool
	// body is the request's body, watched for abort (see watchBody): in
	// the same allocation as the rest.
	body   watchedBody
	leases []lockstore.Lease
	lease  [1]lockstore.Lease // backing for leases when there is one

	// zone, key and kind name the one lock of a handler without webdav,
	// so that a later lock handler of the same route and zone sees that
	// the request holds it already (see Handler.heldBefore); zone is nil
	// otherwise.
	zone *zone
	key  heldKey
	kind lockstore.Kind

	// Links in the reaper's list, guarded by the reaper's mutex.
	// Invariant: listed is true exactly while the context is in the list.
	reaper     *holdReaper
	prev, next *holdContext
	listed     bool
}

// holdBase is the parent of a holdContext's cancelCtx: the request's
// values without its cancellation, and max_hold's deadline. Value goes
// straight to the request's context (context.WithoutCancel's context
// would box itself on every lookup, about ten times per proxied write).
type holdBase struct {
	values   context.Context
	deadline time.Time
	hc       *holdContext
}

func (b *holdBase) Deadline() (time.Time, bool) { return b.deadline, true }
func (b *holdBase) Done() <-chan struct{}       { return nil }
func (b *holdBase) Err() error                  { return nil }

func (b *holdBase) Value(key any) any {
	if key == (heldLockKey{}) {
		return b.hc
	}
	return b.values.Value(key)
}

// heldKey is the key of a hold's lock; a pointer to it (into the
// holdContext, no allocation of its own) is the {http.lock.key}
// placeholder of its request (see Handler.ServeHTTP). It is a string
// type, not the holdContext itself, because Caddy reads placeholders in
// two ways: fmt.Stringer (caddy.ToString: header values, vars, logs) and,
// in CEL expression matchers, the value's reflect kind, which rejects a
// struct (the matcher fails, and the request with it) but reads a pointer
// to a string as the string.
type heldKey string

func (k *heldKey) String() string { return string(*k) }

// heldLockKey is the context key under which a holdContext answers with
// itself, for Handler.heldBefore.
type heldLockKey struct{}

// Err is context.Canceled once the route is done, or
// context.DeadlineExceeded from max_hold on. Contexts derived from it end
// with Canceled and the same cause (context.Cause).
func (c *holdContext) Err() error {
	if c.Context.Err() == nil {
		return nil
	}
	return context.Cause(c.Context)
}

// end ends the context with err as its cause, once; later calls do
// nothing.
func (c *holdContext) end(err error) {
	c.cancel(err)
}

// releaseOnce releases the leases unless that has been done.
func (c *holdContext) releaseOnce() {
	if c.released.CompareAndSwap(false, true) {
		for _, l := range c.leases {
			l.Release()
		}
		c.reaper.held.Dec()
	}
}

// finish is called when the route is done: the context ends (with
// Canceled, as a cancelled standard context would), the locks are
// released, and the reaper forgets it. It is the only place that
// releases them.
func (c *holdContext) finish() {
	c.reaper.remove(c)
	c.mu.Lock()
	c.finished = true
	c.mu.Unlock()
	c.end(context.Canceled)
	c.releaseOnce()
}

// expire is max_hold: the route's context ends with DeadlineExceeded,
// which cancels the upstream request, and reads of the client's body are
// cut off. The locks stay held until the route returns (finish): the
// exchange with the backend may still be running, and only the route's
// return says that it is not.
func (c *holdContext) expire() {
	c.end(context.DeadlineExceeded)
	c.mu.Lock()
	defer c.mu.Unlock()
	// Under mu, so that it cannot run once finish has marked the route
	// done: the client's connection may be serving its next request.
	if !c.finished && c.abort != nil {
		c.abort.abort()
	}
}

// holdReaper ends holdContexts at their deadlines. Its list is in
// deadline order because every context of one reaper gets the same
// max_hold from the time it is added; one timer, armed for the head's
// deadline while the list is not empty, serves them all. When the list
// empties the timer is left to fire once more and then stays stopped, so
// a quiet handler leaves nothing running.
type holdReaper struct {
	maxHold time.Duration
	held    prometheus.Gauge // locks held by requests in flight

	mu         sync.Mutex
	head, tail *holdContext // guarded by mu
	timer      *time.Timer  // guarded by mu; nil until first needed
	armed      bool         // guarded by mu: the timer will fire
}

func newHoldReaper(maxHold time.Duration, held prometheus.Gauge) *holdReaper {
	return &holdReaper{maxHold: maxHold, held: held}
}

// hold starts holding lease for a request granted at now, whose context
// is parent, and returns the context for the rest of the route: c, or a
// new one when c is nil (c comes from a request whose body is watched,
// see watchBody). The lease is released once, by finish, when the route
// is done; at max_hold the context ends and reads of the client's body
// are cut off.
func (rp *holdReaper) hold(c *holdContext, parent context.Context, now time.Time, lease lockstore.Lease) *holdContext {
	c = rp.start(c, parent, now)
	c.lease[0] = lease
	c.leases = c.lease[:]
	rp.add(c)
	return c
}

// holdAll is hold for several leases.
func (rp *holdReaper) holdAll(c *holdContext, parent context.Context, now time.Time, leases []lockstore.Lease) *holdContext {
	c = rp.start(c, parent, now)
	c.leases = leases
	rp.add(c)
	return c
}

func (rp *holdReaper) start(c *holdContext, parent context.Context, now time.Time) *holdContext {
	rp.held.Inc()
	if c == nil {
		c = new(holdContext)
	}
	c.reaper = rp
	c.base = holdBase{values: parent, deadline: now.Add(rp.maxHold), hc: c}
	c.Context, c.cancel = context.WithCancelCause(&c.base)
	return c
}

// aborter cuts off reads of a request's body (watchedBody.abort).
type aborter interface{ abort() }

// watchBody prepares c for a request with a body: at max_hold, pending
// and later reads of r's body fail at once. A route forwarding a body
// that its client trickles (reverse_proxy waits for its body reader even
// after the upstream request was cancelled) would otherwise return, and
// release the lock, only when the client sends its next bytes. Call it
// before anything reads the body: it wraps r.Body to learn when the body
// has been read to its end, after which there is nothing to cut off, and
// a read deadline would only break the connection for the client's next
// request (Go's HTTP/1.1 server watches the connection from then on, and
// a failed read there cancels every later request on it). It does
// nothing for a request without a body.
func (c *holdContext) watchBody(w http.ResponseWriter, r *http.Request) {
	if !hasBody(r) {
		return
	}
	c.body = watchedBody{ReadCloser: r.Body, w: w}
	r.Body = &c.body
	c.abort = &c.body
}

// watchedBody is a request body that records having been read to its
// end.
type watchedBody struct {
	io.ReadCloser
	w   http.ResponseWriter // the request's, whose reads abort cuts off
	eof atomic.Bool
}

// abort makes pending and later reads of the body fail at once, unless
// it has been read to its end.
func (b *watchedBody) abort() {
	if !b.eof.Load() {
		_ = http.NewResponseController(b.w).SetReadDeadline(time.Now())
	}
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

func (rp *holdReaper) add(c *holdContext) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	c.prev, c.next, c.listed = rp.tail, nil, true
	if rp.tail != nil {
		// Requests granted at nearly the same moment may arrive here out
		// of order; a deadline a few microseconds later keeps the list
		// sorted, which is what lets fire stop at the first one not due.
		if c.base.deadline.Before(rp.tail.base.deadline) {
			c.base.deadline = rp.tail.base.deadline
		}
		rp.tail.next = c
	} else {
		rp.head = c
	}
	rp.tail = c
	if !rp.armed {
		d := time.Until(rp.head.base.deadline)
		if rp.timer == nil {
			rp.timer = time.AfterFunc(d, rp.fire)
		} else {
			rp.timer.Reset(d)
		}
		rp.armed = true
	}
}

func (rp *holdReaper) remove(c *holdContext) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.unlink(c)
}

// unlink takes c out of the list; rp.mu is held.
func (rp *holdReaper) unlink(c *holdContext) {
	if !c.listed {
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		rp.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		rp.tail = c.prev
	}
	c.prev, c.next, c.listed = nil, nil, false
}

// fire expires every context whose deadline has passed, and arms the
// timer for the next one, if any.
func (rp *holdReaper) fire() {
	now := time.Now()
	var due []*holdContext
	rp.mu.Lock()
	for rp.head != nil && !now.Before(rp.head.base.deadline) {
		c := rp.head
		rp.unlink(c)
		due = append(due, c)
	}
	if rp.head != nil {
		rp.timer.Reset(rp.head.base.deadline.Sub(now))
	} else {
		rp.armed = false
	}
	rp.mu.Unlock()
	// Releasing may take a round trip to a lock store; one slow release
	// must not hold up the others.
	for _, c := range due {
		go c.expire()
	}
}

// A write that queues for its lock (wait) reads its body while it waits.
// Go's HTTP/1.1 server notices that a client went away (and cancels the
// request's context) only once the request body has been read to its
// end; a write queued with its body unread would stay queued after its
// client left, and be proxied when the lock frees. Reading the body
// meanwhile makes a departure show: as a read error when the body was
// cut short, or as the context's cancellation once the body was read in
// full. The body is kept in memory, so a queued write's body is bounded
// (max_wait_body) and so is the sum of them (waitBodyBudget).

// defaultMaxWaitBody is the default of max_wait_body: the largest body a
// write that conflicts may queue with.
const defaultMaxWaitBody = 1 << 20

// waitBodyBudget is how many bodies of max_wait_body the waiting writes
// of the process may keep in memory at once; past it a write that
// conflicts is refused at once, as it is past max_waiters.
const waitBodyBudget = 64

// waitBodyBytes counts the bytes reserved by the bodies of waiting
// writes (and of granted ones still forwarding them).
var waitBodyBytes atomic.Int64

// errWaitBodyTooLarge ends the wait of a write whose body turns out to be
// larger than max_wait_body (one of unknown length).
var errWaitBodyTooLarge = errors.New("request body larger than max_wait_body")

// errClientLeft is the cause of a wait (or a grant) ended because the
// client went away.
var errClientLeft = errors.New("client went away")

// maxWaitBody is max_wait_body with its default.
func (h *Handler) maxWaitBody() int64 {
	if h.MaxWaitBody > 0 {
		return h.MaxWaitBody
	}
	return defaultMaxWaitBody
}

// hasBody reports whether r has a request body to read.
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}

// bodyWait takes the locks of one request, reading its body while it
// queues. Use acquire for each lock, then ready once all are held, and
// end when the route is done.
type bodyWait struct {
	h *Handler
	w http.ResponseWriter
	r *http.Request

	reserved int64 // bytes counted in waitBodyBytes
	ctx      context.Context
	cancel   context.CancelCauseFunc
	conflict error         // the conflict that made the request queue
	body     io.ReadCloser // r's own body
	streamed bool          // the rest of the body went on to the route
	// What the reader shares, allocated when it starts: a request that
	// does not queue allocates nothing here.
	*bodyRead
}

// reading reports whether the request's body is read while it queues
// (start began the reader).
func (b *bodyWait) reading() bool { return b.bodyRead != nil }

// bodyRead is what the reader of a queued body leaves.
type bodyRead struct {
	done chan struct{} // closed when the reader is done
	buf  []byte        // what the reader read; read after done
	err  error         // nil (read to its end), errWaitBodyTooLarge or the read error; after done
}

func (h *Handler) newBodyWait(w http.ResponseWriter, r *http.Request) bodyWait {
	return bodyWait{h: h, w: w, r: r}
}

// acquire takes req's lock as l.Acquire does. A request with a body that
// conflicts and may queue first starts reading its body (see start);
// one whose body is too large to keep is refused at once with the
// conflict.
func (b *bodyWait) acquire(l lockstore.Locker, req lockstore.Request) (lockstore.Lease, error) {
	if b.reading() {
		return b.waited(l.Acquire(b.ctx, req))
	}
	if req.Wait <= 0 || !hasBody(b.r) {
		return l.Acquire(b.r.Context(), req)
	}
	now := req
	now.Wait = 0
	lease, err := l.Acquire(b.r.Context(), now)
	var conflict *lockstore.ConflictError
	if err == nil || !errors.As(err, &conflict) {
		return lease, err
	}
	if !b.start() {
		if ce := b.h.logger.Check(zapcore.DebugLevel, "write not queued: its body is larger than max_wait_body allows"); ce != nil {
			ce.Write(zap.String("key", req.Key), zap.Int64("content_length", b.r.ContentLength), zap.Int64("max_wait_body", b.h.maxWaitBody()))
		}
		return nil, err
	}
	b.conflict = err
	return b.waited(l.Acquire(b.ctx, req))
}

// start begins reading the body, unless it is longer than max_wait_body
// or the bodies of other waiting writes fill the budget.
func (b *bodyWait) start() bool {
	limit := b.h.maxWaitBody()
	n := b.r.ContentLength
	if n > limit {
		return false
	}
	if n < 0 {
		n = limit // unknown length: the most it may take
	}
	if waitBodyBytes.Add(n) > waitBodyBudget*limit {
		waitBodyBytes.Add(-n)
		return false
	}
	b.reserved = n
	b.ctx, b.cancel = context.WithCancelCause(b.r.Context())
	rd := &bodyRead{done: make(chan struct{})}
	b.bodyRead = rd
	body, cancel := b.r.Body, b.cancel
	b.body = body
	go func() {
		defer close(rd.done)
		buf, err := io.ReadAll(io.LimitReader(body, limit+1))
		if err == nil && int64(len(buf)) > limit {
			err = errWaitBodyTooLarge
		}
		rd.buf, rd.err = buf, err
		switch {
		case err == nil:
			// Read to its end: from now on net/http watches the
			// connection, and cancels r's context if the client leaves.
		case errors.Is(err, errWaitBodyTooLarge):
			cancel(err)
		default:
			cancel(fmt.Errorf("%w: reading its body: %w", errClientLeft, err))
		}
	}()
	return true
}

// waited is the outcome of a queued Acquire. A wait ended because the
// body grew past max_wait_body is refused with the conflict that made
// the request queue.
func (b *bodyWait) waited(lease lockstore.Lease, err error) (lockstore.Lease, error) {
	if err != nil && errors.Is(context.Cause(b.ctx), errWaitBodyTooLarge) {
		return nil, b.conflict
	}
	return lease, err
}

// stop ends the reader if it still runs, and makes the rest of a body
// not read to its end unreadable: a read deadline in the past fails the
// pending read, and the server's own attempt to read what is left before
// it answers (which would wait for a client that trickles). The client's
// connection is then closed after the answer.
func (b *bodyWait) stop() {
	select {
	case <-b.done:
		if b.err == nil {
			return // read to its end; the connection can serve on
		}
	default:
	}
	if b.r.ProtoMajor == 1 {
		// The body may end just before the deadline is set: the deadline
		// then fails Go's background read of the connection instead,
		// which cancels the context of every later request on it. An
		// answer not yet written closes the connection (stop is called
		// before the handler answers, where it can).
		b.w.Header().Set("Connection", "close")
	}
	if err := http.NewResponseController(b.w).SetReadDeadline(time.Now()); err != nil {
		return // the reader ends with the body or the connection
	}
	<-b.done
}

// ready is called once the request holds its locks, with the route's
// context. For a request whose body was being read it waits for the
// body, then checks that the client is still there, and puts the body
// back for the backend. An error means the request must not go on: its
// client left (wrapping context.Canceled), the route's context ended
// while the body was still arriving (wrapping its error), or the body
// could not be read.
func (b *bodyWait) ready(ctx context.Context) error {
	if !b.reading() {
		return nil
	}
	select {
	case <-b.done:
	case <-ctx.Done():
		b.stop()
		return fmt.Errorf("the request body was still arriving when the lock's hold ended: %w", context.Cause(ctx))
	}
	switch {
	case b.err == nil:
		b.r.Body = io.NopCloser(bytes.NewReader(b.buf))
		b.r.ContentLength = int64(len(b.buf))
		b.r.TransferEncoding = nil
	case errors.Is(b.err, errWaitBodyTooLarge):
		// Past the bound only after the grant: the rest is forwarded as
		// it arrives, as for a write that did not queue.
		b.streamed = true
		b.r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(b.buf), b.body), b.body}
	default:
		var tooLarge *http.MaxBytesError
		if errors.As(b.err, &tooLarge) {
			return caddyhttp.Error(http.StatusRequestEntityTooLarge, fmt.Errorf("reading the body of a queued write: %w", b.err))
		}
		return fmt.Errorf("%w: reading its body: %w", errClientLeft, errors.Join(b.err, context.Canceled))
	}
	// A client that sent its whole body and then left: HTTP/1.1 shows it
	// only now, once the body was read; HTTP/2 at any time. Checked as
	// late as possible, just before the request goes on.
	if err := b.r.Context().Err(); err != nil {
		return fmt.Errorf("%w while its write queued: %w", errClientLeft, err)
	}
	return nil
}

// end stops the reader if it still runs (nothing may read the body once
// the handler has answered) and gives back the body's reservation; call
// it when the route is done (the body is in use until then).
func (b *bodyWait) end() {
	if b.reading() && !b.streamed {
		b.stop()
	}
	if b.reserved > 0 {
		waitBodyBytes.Add(-b.reserved)
		b.reserved = 0
	}
	if b.cancel != nil {
		b.cancel(nil)
	}
}

// abandon answers a granted request whose ready failed: 499 for a client
// that left (nobody reads it), 408 for a body still arriving at max_hold,
// or the error's own status.
func (b *bodyWait) abandon(key string, err error) error {
	var he caddyhttp.HandlerError
	switch {
	case errors.As(err, &he):
		return err
	case errors.Is(err, errClientLeft):
		return caddyhttp.Error(499, fmt.Errorf("lock %s: %w", key, err))
	default:
		return caddyhttp.Error(http.StatusRequestTimeout, fmt.Errorf("lock %s: %w", key, err))
	}
}
