package caddylock

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type holdKey struct{}

// holdFixture is a lock table, a reaper with maxHold and its gauge.
func holdFixture(t *testing.T, maxHold time.Duration) (*MemLocker, *holdReaper, prometheus.Gauge) {
	t.Helper()
	held := prometheus.NewGauge(prometheus.GaugeOpts{Name: "held"})
	return NewMemLocker(false, 0, 0), newHoldReaper(maxHold, held), held
}

// gauge reads g's value.
func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func isFree(l Locker, key string) bool {
	lease, err := l.Acquire(context.Background(), Request{Key: key, Kind: Exclusive})
	if err != nil {
		return false
	}
	lease.Release()
	return true
}

// countedLease is a Lease that counts its releases. The synctest tests
// use it rather than a lock table, whose coarse clock (shared by the
// whole process) must not start its timer inside a bubble.
type countedLease struct{ releases atomic.Int32 }

func (l *countedLease) Release() { l.releases.Add(1) }

// The route's context keeps the request's values but not its
// cancellation; finishing the route ends it and releases the lock once.
// It runs in a synctest bubble: synctest.Wait returns once every
// goroutine that the client's departure set off (an AfterFunc, a watcher
// of the request's context) has run and blocked again, so a cancellation
// that reaches the route's context a moment late is seen as well.
func TestHoldContextOutlivesTheClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		held := prometheus.NewGauge(prometheus.GaugeOpts{Name: "held"})
		rp := newHoldReaper(time.Minute, held)
		lease := new(countedLease)
		parent, cancelClient := context.WithCancelCause(context.WithValue(context.Background(), holdKey{}, "v"))
		hc := rp.hold(parent, time.Now(), lease)
		child, cancelChild := context.WithCancel(hc)
		defer cancelChild()

		cancelClient(errors.New("client went away"))
		synctest.Wait()
		if hc.Err() != nil || child.Err() != nil || context.Cause(hc) != nil {
			t.Fatalf("a departing client ended the route's context: %v / %v / cause %v", hc.Err(), child.Err(), context.Cause(hc))
		}
		if hc.Value(holdKey{}) != "v" || child.Value(holdKey{}) != "v" {
			t.Fatal("the request's values are lost")
		}
		if d, ok := hc.Deadline(); !ok || !d.Equal(time.Now().Add(time.Minute)) {
			t.Fatalf("deadline %v %v, want max_hold from now", d, ok)
		}
		if lease.releases.Load() != 0 || gauge(t, held) != 1 {
			t.Fatal("the lock is not held while the route runs")
		}
		// Half of max_hold later (in the bubble's time), still held.
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if hc.Err() != nil || lease.releases.Load() != 0 {
			t.Fatalf("the route's context ended before max_hold: %v, %d releases", hc.Err(), lease.releases.Load())
		}

		hc.finish()
		<-child.Done()
		if !errors.Is(hc.Err(), context.Canceled) || !errors.Is(child.Err(), context.Canceled) {
			t.Fatalf("after the route: %v / %v, want Canceled", hc.Err(), child.Err())
		}
		if lease.releases.Load() != 1 || gauge(t, held) != 0 {
			t.Fatal("the lock is not released when the route is done")
		}
		// A second finish releases nothing more, and nor does the
		// reaper's timer when max_hold comes.
		hc.finish()
		time.Sleep(time.Minute)
		synctest.Wait()
		if lease.releases.Load() != 1 || gauge(t, held) != 0 {
			t.Fatalf("%d releases, gauge %v after finishing twice and max_hold passing, want 1 and 0", lease.releases.Load(), gauge(t, held))
		}
	})
}

// At max_hold the context ends with DeadlineExceeded (reverse_proxy then
// answers 504), contexts derived from it end too, and the lock is
// released although the route has not finished.
func TestHoldContextMaxHold(t *testing.T) {
	l, rp, held := holdFixture(t, 50*time.Millisecond)
	hc := rp.hold(context.Background(), time.Now(), mustAcquire(t, l, "/doc", Exclusive))
	child, cancel := context.WithCancel(hc)
	defer cancel()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("max_hold did not end the route's context")
	}
	if !errors.Is(hc.Err(), context.DeadlineExceeded) || !errors.Is(child.Err(), context.DeadlineExceeded) ||
		!errors.Is(context.Cause(child), context.DeadlineExceeded) {
		t.Fatalf("at max_hold: %v / %v / cause %v, want DeadlineExceeded", hc.Err(), child.Err(), context.Cause(child))
	}
	deadline := time.Now().Add(5 * time.Second)
	for !isFree(l, "/doc") || gauge(t, held) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("max_hold did not release the lock")
		}
		time.Sleep(time.Millisecond)
	}
	// The route finishing late changes nothing.
	other := mustAcquire(t, l, "/doc", Exclusive)
	defer other.Release()
	hc.finish()
	if isFree(l, "/doc") || gauge(t, held) != 0 || !errors.Is(hc.Err(), context.DeadlineExceeded) {
		t.Fatal("a route finishing after max_hold released another holder's lock, counted twice or changed its error")
	}
}

// Contexts derived from the route's context register with it rather
// than start a goroutine each (the context package does that for a
// context it does not know unless the context has an AfterFunc method).
func TestHoldContextChildrenNeedNoGoroutine(t *testing.T) {
	l, rp, _ := holdFixture(t, time.Minute)
	hc := rp.hold(context.Background(), time.Now(), mustAcquire(t, l, "/doc", Exclusive))
	before := runtime.NumGoroutine()
	cancels := make([]context.CancelFunc, 100)
	children := make([]context.Context, 100)
	for i := range cancels {
		children[i], cancels[i] = context.WithCancel(hc)
	}
	if n := runtime.NumGoroutine(); n > before+5 {
		t.Fatalf("100 derived contexts started %d goroutines", n-before)
	}
	// Half cancel themselves (and unregister); the rest end with hc.
	for i := 0; i < 50; i++ {
		cancels[i]()
	}
	hc.mu.Lock()
	registered := len(hc.afters)
	hc.mu.Unlock()
	if registered != 50 {
		t.Fatalf("%d registrations after 50 children were cancelled, want 50", registered)
	}
	hc.finish()
	for i, c := range children[50:] {
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("child %d did not end with the route's context", 50+i)
		}
	}
	for _, cancel := range cancels {
		cancel()
	}
}

// In a synctest bubble, so that "the stopped function never ran" is
// checked once every goroutine has run (synctest.Wait), not after a
// pause that might be too short.
func TestHoldContextAfterFunc(t *testing.T) {
	synctest.Test(t, testHoldContextAfterFunc)
}

func testHoldContextAfterFunc(t *testing.T) {
	rp := newHoldReaper(time.Minute, prometheus.NewGauge(prometheus.GaugeOpts{Name: "held"}))
	hc := rp.hold(context.Background(), time.Now(), new(countedLease))
	ran := make(chan string, 3)
	stopped := hc.AfterFunc(func() { ran <- "stopped" })
	kept := hc.AfterFunc(func() { ran <- "kept" })
	if !stopped() || stopped() {
		t.Fatal("stop before the end: want true once, then false")
	}
	hc.finish()
	if got := <-ran; got != "kept" {
		t.Fatalf("ran %q, want kept", got)
	}
	if kept() {
		t.Fatal("stop after the function ran reported true")
	}
	_ = hc.AfterFunc(func() { ran <- "late" })
	if got := <-ran; got != "late" {
		t.Fatalf("AfterFunc on an ended context ran %q, want late", got)
	}
	synctest.Wait()
	select {
	case got := <-ran:
		t.Fatalf("%q ran after it was stopped", got)
	default:
	}
}

// The reaper ends contexts in deadline order, whatever order the routes
// finish in, and its timer stops once nothing is held.
func TestHoldReaper(t *testing.T) {
	l, rp, held := holdFixture(t, 100*time.Millisecond)
	var hcs []*holdContext
	for i := range 40 {
		key := "/d/" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		hcs = append(hcs, rp.hold(context.Background(), time.Now(), mustAcquire(t, l, key, Exclusive)))
	}
	for i := 0; i < len(hcs); i += 2 {
		hcs[i].finish() // every other route ends in time
	}
	for i, hc := range hcs {
		select {
		case <-hc.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("context %d was not ended", i)
		}
		want := context.DeadlineExceeded
		if i%2 == 0 {
			want = context.Canceled
		}
		if !errors.Is(hc.Err(), want) {
			t.Fatalf("context %d: %v, want %v", i, hc.Err(), want)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		rp.mu.Lock()
		idle := rp.head == nil && rp.tail == nil && !rp.armed
		rp.mu.Unlock()
		if idle && gauge(t, held) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reaper not idle after every route ended (idle %v, held %v)", idle, gauge(t, held))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// It starts again for the next route.
	hc := rp.hold(context.Background(), time.Now(), mustAcquire(t, l, "/again", Exclusive))
	select {
	case <-hc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a route held after the reaper went idle was not ended at max_hold")
	}
}
