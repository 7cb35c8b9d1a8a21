// Package testsupport holds the waiting and goroutine-counting helpers
// that the tests of several packages share. It is imported by tests only.
package testsupport

import (
	"context"
	"fmt"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"
)

// WaitFor polls cond until it holds or d has passed.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// GoroutineLabel is the pprof label under which a test runs code whose
// goroutines it then counts: goroutines inherit their creator's labels,
// so these are the ones that code started, directly or not, and no
// others (not those of earlier tests still winding down).
const GoroutineLabel = "caddylock_test"

// Labelled runs fn with goroutine label value, which the goroutines it
// starts inherit.
func Labelled(value string, fn func()) {
	pprof.Do(context.Background(), pprof.Labels(GoroutineLabel, value), func(context.Context) { fn() })
}

// LabelledStacks returns the stacks of the live goroutines labelled
// value (see Labelled), one entry per group of identical stacks, and how
// many goroutines there are.
func LabelledStacks(t testing.TB, value string) (stacks []string, n int) {
	t.Helper()
	var buf strings.Builder
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		t.Fatal(err)
	}
	mark := fmt.Sprintf("%q:%q", GoroutineLabel, value)
	for _, group := range strings.Split(buf.String(), "\n\n") {
		if !strings.Contains(group, "# labels: {") || !strings.Contains(group, mark) {
			continue
		}
		k := -1
		for _, line := range strings.Split(group, "\n") {
			if count, _, ok := strings.Cut(line, " @ "); ok {
				k, _ = strconv.Atoi(count)
				break
			}
		}
		if k < 0 {
			t.Fatalf("goroutine profile group without a count: %q", group)
		}
		stacks = append(stacks, group)
		n += k
	}
	return stacks, n
}

// WaitParked waits until a goroutine labelled value sits in time.Sleep in
// a function whose full name starts with fn (such as
// "github.com/caddy-lock/caddy-lock/stores/redis.(*Store).OpenZone"): a
// poll loop that has looked at its condition and found it not yet met.
func WaitParked(t testing.TB, value, fn string) {
	t.Helper()
	WaitFor(t, 5*time.Second, "a goroutine of "+fn+" to poll and wait (it closed what it should wait for?)", func() bool {
		stacks, _ := LabelledStacks(t, value)
		for _, s := range stacks {
			if strings.Contains(s, "time.Sleep") && strings.Contains(s, fn) {
				return true
			}
		}
		return false
	})
}
