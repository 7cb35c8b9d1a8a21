package caddylock

import (
	"testing"
	"time"
)

func waitClockState(t *testing.T, c *coarseClock, want int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.state.Load() != want {
		if time.Now().After(deadline) {
			t.Fatalf("clock state %d, want %d", c.state.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCoarseClockFollowsTimeAndStopsWhenUnread(t *testing.T) {
	var c coarseClock
	start := monotonicNow()
	if v := c.read(); v < start || v > monotonicNow() {
		t.Fatalf("first read %d, want between %d and now", v, start)
	}
	// While it is read, it moves forward with the ticks and never runs
	// ahead of the system clock.
	prev := c.read()
	deadline := time.Now().Add(5 * time.Second)
	for c.read() == prev {
		if time.Now().After(deadline) {
			t.Fatalf("the clock did not move in 5s of reads (tick %v)", clockTick)
		}
		time.Sleep(time.Millisecond)
	}
	if v := c.read(); v <= prev || v > monotonicNow() {
		t.Fatalf("after a tick: %d, want after %d and not after now", v, prev)
	}
	// Left unread, the timer stops and takes no goroutine or timer with
	// it ...
	waitClockState(t, &c, clockStopped)
	time.Sleep(3 * clockTick)
	// ... and the next read is fresh, not the time of the last tick.
	before := monotonicNow()
	if v := c.read(); v < before {
		t.Fatalf("read after a quiet spell: %v old", time.Duration(before-v))
	}
	waitClockState(t, &c, clockStopped)
}
