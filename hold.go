package caddylock

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A granted request runs the rest of its route on a holdContext, which
// does two things that the standard contexts could do only with a timer,
// a timer context and an AfterFunc registration per request:
//
//   - A client that goes away does not cancel it: a legacy backend half-way
//     through a write keeps writing, and the lock is held until it has
//     answered.
//   - max_hold bounds that. At the deadline the context ends with
//     context.DeadlineExceeded (reverse_proxy answers 504 and cancels the
//     upstream request) and the locks are released, even if a later
//     handler ignores the cancellation.
//
// The deadlines come from a holdReaper: every request of a handler gets
// the same max_hold, so deadlines arrive in the order the requests were
// granted, and one list with one timer serves them all.

// holdContext is the context of a granted request's route. It implements
// context.Context, and AfterFunc, so that contexts derived from it (such
// as reverse_proxy's upstream request) are cancelled with it without a
// goroutine each.
type holdContext struct {
	// values is the request's context without its cancellation: Value
	// goes there, and it hides the request's own cancelCtx from the
	// context package (so Cause and WithCancel see only this context).
	values   context.Context
	deadline time.Time

	mu     sync.Mutex
	done   atomic.Value // chan struct{}, made on the first Done or at the end
	err    error        // set once, when the context ends; guarded by mu
	afters []afterFunc  // guarded by mu; run when the context ends
	nextID uint64       // guarded by mu
	inline [2]afterFunc // backing for afters: one or two registrations need no allocation

	// released is set by whoever releases the leases first: the end of
	// the route or the reaper at max_hold.
	released atomic.Bool
	leases   []Lease
	lease    [1]Lease // backing for leases when there is one

	// zone, key and kind name the one lock of a handler without webdav,
	// so that a later lock handler of the same route and zone sees that
	// the request holds it already (see Handler.heldBefore); zone is nil
	// otherwise.
	zone *zone
	key  string
	kind Kind

	// Links in the reaper's list, guarded by the reaper's mutex.
	// Invariant: listed is true exactly while the context is in the list.
	reaper     *holdReaper
	prev, next *holdContext
	listed     bool
}

type afterFunc struct {
	id uint64
	f  func()
}

// closedDone is the Done channel of a context that ended before anybody
// asked for one.
var closedDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *holdContext) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *holdContext) Done() <-chan struct{} {
	if d := c.done.Load(); d != nil {
		return d.(chan struct{})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.done.Load(); d != nil {
		return d.(chan struct{})
	}
	d := make(chan struct{})
	c.done.Store(d)
	return d
}

func (c *holdContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *holdContext) Value(key any) any {
	if key == (heldLockKey{}) {
		return c
	}
	return c.values.Value(key)
}

// heldLockKey is the context key under which a holdContext answers with
// itself, for Handler.heldBefore.
type heldLockKey struct{}

// AfterFunc arranges for f to run in its own goroutine once the context
// has ended, as context.AfterFunc does; stop cancels that and reports
// whether it did. The context package uses it for contexts derived from
// this one.
func (c *holdContext) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	id := c.nextID
	c.nextID++
	if c.afters == nil {
		c.afters = c.inline[:0]
	}
	c.afters = append(c.afters, afterFunc{id, f})
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.IndexFunc(c.afters, func(a afterFunc) bool { return a.id == id })
		if i < 0 {
			return false
		}
		c.afters = slices.Delete(c.afters, i, i+1)
		return true
	}
}

// end ends the context with err, once; later calls do nothing.
func (c *holdContext) end(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if d := c.done.Load(); d != nil {
		close(d.(chan struct{}))
	} else {
		c.done.Store(closedDone)
	}
	fs := c.afters
	c.afters = nil
	c.mu.Unlock()
	for _, a := range fs {
		go a.f()
	}
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
// released, and the reaper forgets it.
func (c *holdContext) finish() {
	c.reaper.remove(c)
	c.end(context.Canceled)
	c.releaseOnce()
}

// expire is max_hold: the route's context ends with DeadlineExceeded,
// which cancels the upstream request, and the locks are released without
// waiting for the route.
func (c *holdContext) expire() {
	c.end(context.DeadlineExceeded)
	c.releaseOnce()
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
// is parent, and returns the context for the rest of the route. The
// lease is released once: by finish, when the route is done, or at
// max_hold, whichever comes first.
func (rp *holdReaper) hold(parent context.Context, now time.Time, lease Lease) *holdContext {
	c := rp.newHold(parent, now)
	c.lease[0] = lease
	c.leases = c.lease[:]
	rp.add(c)
	return c
}

// holdAll is hold for several leases.
func (rp *holdReaper) holdAll(parent context.Context, now time.Time, leases []Lease) *holdContext {
	c := rp.newHold(parent, now)
	c.leases = leases
	rp.add(c)
	return c
}

func (rp *holdReaper) newHold(parent context.Context, now time.Time) *holdContext {
	rp.held.Inc()
	return &holdContext{
		values:   context.WithoutCancel(parent),
		deadline: now.Add(rp.maxHold),
		reaper:   rp,
	}
}

func (rp *holdReaper) add(c *holdContext) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	c.prev, c.next, c.listed = rp.tail, nil, true
	if rp.tail != nil {
		// Requests granted at nearly the same moment may arrive here out
		// of order; a deadline a few microseconds later keeps the list
		// sorted, which is what lets fire stop at the first one not due.
		if c.deadline.Before(rp.tail.deadline) {
			c.deadline = rp.tail.deadline
		}
		rp.tail.next = c
	} else {
		rp.head = c
	}
	rp.tail = c
	if !rp.armed {
		d := time.Until(rp.head.deadline)
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
	for rp.head != nil && !now.Before(rp.head.deadline) {
		c := rp.head
		rp.unlink(c)
		due = append(due, c)
	}
	if rp.head != nil {
		rp.timer.Reset(rp.head.deadline.Sub(now))
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
