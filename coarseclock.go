package caddylock

import (
	"sync/atomic"
	"time"
)

// coarseClock is a monotonic clock that costs two memory loads to read: it
// returns the time of its last tick, so it lags real time by up to one tick.
// Reading the system clock costs far more than an uncontended lock, and
// lock holders only need "held since" to a fraction of a second.
//
// The ticks come from a timer that runs only while the clock is read: a
// tick that finds the clock unread since the previous one stops the timer,
// and the next read restarts it. No goroutine is left behind when the lock
// tables go quiet.
type coarseClock struct {
	// now is monotonicNow() at the last tick. Invariant: while state is
	// clockIdle or clockRead, now is at most one tick (plus timer delay)
	// old.
	now atomic.Int64
	// state is one of the clock* constants below.
	state atomic.Int32
}

const (
	clockStopped  int32 = iota // no timer is armed; now may be stale
	clockStarting              // a reader is setting now and arming the timer
	clockIdle                  // the timer is armed; not read since the last tick
	clockRead                  // the timer is armed; read since the last tick
)

// clockTick is the resolution of the coarse clock.
const clockTick = 10 * time.Millisecond

// clock is shared by every lock table of the process.
var clock coarseClock

var clockBase = time.Now()

// monotonicNow reads the system's monotonic clock, in nanoseconds since
// clockBase.
func monotonicNow() int64 { return int64(time.Since(clockBase)) }

// read returns the coarse time, in nanoseconds since clockBase.
func (c *coarseClock) read() int64 {
	for {
		switch c.state.Load() {
		case clockRead:
			return c.now.Load()
		case clockIdle:
			if c.state.CompareAndSwap(clockIdle, clockRead) {
				return c.now.Load()
			}
		case clockStopped:
			if c.state.CompareAndSwap(clockStopped, clockStarting) {
				t := monotonicNow()
				c.now.Store(t)
				c.state.Store(clockRead)
				time.AfterFunc(clockTick, c.tick)
				return t
			}
		default: // clockStarting: another reader is about to set now
			return monotonicNow()
		}
	}
}

// tick runs from the timer; exactly one timer is armed while state is
// clockIdle or clockRead, and none otherwise.
func (c *coarseClock) tick() {
	c.now.Store(monotonicNow())
	for {
		if c.state.CompareAndSwap(clockRead, clockIdle) {
			time.AfterFunc(clockTick, c.tick)
			return
		}
		if c.state.CompareAndSwap(clockIdle, clockStopped) {
			return
		}
	}
}
