package caddylock

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// A 423's detail says what the conflict error says, formatted in one
// allocation.
func TestConflictDetailMatchesTheError(t *testing.T) {
	durations := []time.Duration{0, 400 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 999 * time.Millisecond,
		time.Second, 1500 * time.Millisecond, 1234567 * time.Microsecond, 59 * time.Second, time.Minute,
		61*time.Second + 20*time.Millisecond, time.Hour, 25*time.Hour + 3*time.Minute + 4*time.Millisecond, -3 * time.Millisecond}
	for _, d := range durations {
		for _, below := range []bool{false, true} {
			for _, kind := range []lockstore.Kind{lockstore.Shared, lockstore.Exclusive} {
				c := &lockstore.ConflictError{Key: "/a/\"b\"", Kind: kind, Below: below, HeldFor: d}
				want := "PUT /a/b/c " + c.Error()
				if got := conflictDetail("PUT", "/a/b/c", c); got != want {
					t.Errorf("held for %v: %q, want %q", d, got, want)
				}
			}
		}
	}
	c := &lockstore.ConflictError{Key: "/k", Kind: lockstore.Exclusive, HeldFor: 1234 * time.Millisecond}
	if n := testing.AllocsPerRun(100, func() { _ = conflictDetail("PUT", "/k", c) }); n > 1 {
		t.Fatalf("conflictDetail allocates %v times, want 1", n)
	}
}

// The handler's 423 allocates no more than the answer needs: the key's
// placeholder, the locker's conflict, the detail and the header values
// (BenchmarkRefusal; the formatting with fmt, errors.As's target, a
// result placeholder set from a variable and a fresh body buffer each
// took one more).
func TestRefusalAllocations(t *testing.T) {
	if raceEnabled() {
		// Its sync.Pool drops a put item at random, on purpose.
		t.Skip("allocations are counted without the race detector")
	}
	h := provisionedHandler(t, "alloc-refusal")
	h.logger = zap.NewNop()
	held, err := h.zone.locker.Acquire(context.Background(), lockstore.Request{Key: "/hot", Kind: lockstore.Exclusive})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	r := caddyhttp.PrepareRequest(httptest.NewRequest(http.MethodPut, "/hot", nil), caddy.NewReplacer(), httptest.NewRecorder(), nil)
	w := &discardWriter{header: http.Header{}}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Fatal("a refused request reached the next handler")
		return nil
	})
	n := testing.AllocsPerRun(200, func() {
		clear(w.header)
		if err := h.ServeHTTP(w, r, next); err != nil || w.status != http.StatusLocked {
			t.Fatalf("status %d, error %v, want 423", w.status, err)
		}
	})
	if n > 4 {
		t.Fatalf("a 423 allocates %v times, want at most 4", n)
	}
}
