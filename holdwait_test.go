package caddylock

// How long a write holds its lock and how long others wait for it, end to
// end: a client that leaves, a failing upstream, max_hold, wait,
// max_locks and Retry-After.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestClientAbortDuringWrite: a client that goes away does not cut the
// write off at the backend, and the lock holds until the backend answers.
// Probes around the lock handler report the events: the outer one when
// Caddy has seen the client leave (its request context ended), the inner
// one what the rest of the route (reverse_proxy) returned, which is an
// error if the upstream request was cancelled at any point before the
// backend's answer arrived.
func TestClientAbortDuringWrite(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "route {\n lock_test_probe outer\n lock {\n  zone abort\n }\n lock_test_probe inner\n reverse_proxy {backend}\n}", b)
	ctx, cancel := context.WithCancel(context.Background())
	aborted := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, url+"/doc", strings.NewReader("x"))
		req.Header.Set("X-Hold", "w")
		req.Header.Set("X-Probe", "abort")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		aborted <- err
	}()
	b.waitStarted(t, "w")
	cancel()
	if err := <-aborted; !errors.Is(err, context.Canceled) {
		t.Fatalf("client request: %v, want cancelled", err)
	}
	waitProbe(t, "abort", "outer gone")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	b.open("w")
	if ev := nextProbe(t, "abort"); ev != "inner returned <nil>" {
		t.Fatalf("the rest of the route after the client left: %s, want it to return nil with the backend's answer", ev)
	}
	waitEmpty(t, zoneTable(t, "abort"))
	b.mu.Lock()
	cut := b.cancelled["w"]
	b.mu.Unlock()
	if cut {
		t.Fatal("the backend saw the write cancelled when the client left")
	}
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	if _, _, overlaps := b.counts(); overlaps != 0 {
		t.Fatalf("%d overlapping writes", overlaps)
	}
}

func TestLockReleasedOnUpstreamFailure(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone fail\n}\nreverse_proxy {backend}", b)
	for range 3 {
		mustDo(t, http.MethodPut, url+"/fail", nil, http.StatusInternalServerError)
	}
	waitEmpty(t, zoneTable(t, "fail"))

	down := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens there
	url = startCaddy(t, "lock {\n zone down\n}\nreverse_proxy "+down, nil)
	for range 3 {
		mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusBadGateway)
	}
	waitEmpty(t, zoneTable(t, "down"))
}

func TestMaxHold(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone hold\n max_hold 300ms\n}\nreverse_proxy {backend}", b)
	r := do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold": "stuck"})
	if r.status < 500 {
		t.Fatalf("a write past max_hold: %d, want a 5xx from the cancelled upstream request", r.status)
	}
	waitEmpty(t, zoneTable(t, "hold"))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b.mu.Lock()
		cut := b.cancelled["stuck"]
		b.mu.Unlock()
		if cut {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upstream request was not cancelled at max_hold")
		}
	}
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
}

// max_hold counts from the grant, not from the request's arrival: time
// spent queued does not shorten the hold. A write queues for longer than
// its max_hold of 1s behind one from a handler of the zone with a longer
// one; once granted, it still runs its full second at the backend before
// max_hold cuts it off. Counted from arrival, it would be cut off at once.
func TestMaxHoldCountsFromGrant(t *testing.T) {
	for _, mode := range []string{"", "webdav"} {
		t.Run("mode="+mode, func(t *testing.T) {
			b := newBackend(t)
			zone := "holdfromgrant" + mode
			handler := func(matcher, maxHold string) string {
				return fmt.Sprintf("lock %s {\n zone %s\n max_hold %s\n wait 30s\n %s\n}\n", matcher, zone, maxHold, mode)
			}
			url := startCaddy(t, "@slow header X-Slow 1\n"+handler("@slow", "1m")+
				"@quick not header X-Slow 1\n"+handler("@quick", "1s")+"reverse_proxy {backend}", b)
			first := holdWrite(t, b, http.MethodPut, url+"/doc", "first", "X-Slow", "1")
			second := make(chan result, 1)
			go func() {
				second <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold": "second"})
			}()
			waitForQueue(t, zoneTable(t, zone), 1)
			// Not synchronisation: the time queued is what is tested.
			time.Sleep(1500 * time.Millisecond)
			b.open("first")
			if r := <-first; r.status != http.StatusOK {
				t.Fatalf("first: %d %v", r.status, r.err)
			}
			select {
			case got := <-b.started:
				if got != "second" {
					t.Fatalf("backend started %q, want second", got)
				}
			case r := <-second:
				t.Fatalf("the write was cut off before it reached the backend (%d %s): its max_hold ran from its arrival", r.status, r.body)
			case <-time.After(10 * time.Second):
				t.Fatal("the queued write neither reached the backend nor was answered")
			}
			granted := time.Now()
			r := <-second
			if held := time.Since(granted); held < 800*time.Millisecond {
				t.Fatalf("the write was cut off %v after its grant (status %d), before its max_hold of 1s", held, r.status)
			}
			if r.status < 500 {
				t.Fatalf("the write past max_hold: %d, want a 5xx from the cancelled upstream request", r.status)
			}
		})
	}
}

func TestWait(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone wait\n wait 10s\n max_waiters 1\n}\n"+
		"reverse_proxy {backend} {\n header_down X-Result {http.lock.result}\n header_down X-Wait {http.lock.wait}\n}", b)
	first := holdWrite(t, b, http.MethodPut, url+"/doc", "w1")
	second := make(chan result, 1)
	go func() {
		second <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold": "w2"})
	}()
	l := zoneTable(t, "wait")
	waitForQueue(t, l, 1)
	// The queue holds one: a third is refused at once.
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	b.open("w1")
	b.waitStarted(t, "w2") // the waiter went through once the first was done
	if _, _, overlaps := b.counts(); overlaps != 0 {
		t.Fatalf("%d overlapping writes", overlaps)
	}
	b.open("w2")
	if r := <-first; r.status != 200 || r.header.Get("X-Result") != "acquired" {
		t.Fatalf("first: %d, result %q", r.status, r.header.Get("X-Result"))
	}
	r := <-second
	if r.status != 200 || r.header.Get("X-Result") != "waited" {
		t.Fatalf("second: %d, result %q", r.status, r.header.Get("X-Result"))
	}
	if d, err := time.ParseDuration(r.header.Get("X-Wait")); err != nil || d <= 0 {
		t.Fatalf("second: waited %q (%v), want the time it queued", r.header.Get("X-Wait"), err)
	}
	if r := do(http.DefaultClient, http.MethodGet, url+"/doc", nil); r.header.Get("X-Result") != "none" || r.header.Get("X-Wait") != "0s" {
		t.Fatalf("a read: result %q, wait %q", r.header.Get("X-Result"), r.header.Get("X-Wait"))
	}
	waitEmpty(t, l)

	// A waiter that waits too long gets 423.
	url = startCaddy(t, "lock {\n zone wait2\n wait 200ms\n}\nreverse_proxy {backend}", b)
	first = holdWrite(t, b, http.MethodPut, url+"/doc", "w3")
	start := time.Now()
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Fatalf("refused after %v, before the wait of 200ms", waited)
	}
	b.open("w3")
	<-first
}

func TestMaxLocksGives503(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone full\n max_locks 2\n}\nreverse_proxy {backend}", b)
	var held [2]<-chan result
	for i := range held {
		held[i] = holdWrite(t, b, http.MethodPut, fmt.Sprintf("%s/d%d", url, i), "h")
	}
	r := do(http.DefaultClient, http.MethodPut, url+"/d3", nil)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" ||
		r.header.Get("Content-Type") != "application/problem+json" || !strings.Contains(r.body, `"status":503`) {
		t.Fatalf("a write past max_locks: %d %v %s", r.status, r.header, r.body)
	}
	// The held locks were not evicted.
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/d0", nil), "/d0")
	b.open("h")
	<-held[0]
	<-held[1]
	mustDo(t, http.MethodPut, url+"/d3", nil, http.StatusOK)
}

func TestRetryAfterConfigured(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone ra\n retry_after 1m30s\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	r := do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
	assertLocked(t, r, "/doc")
	if r.header.Get("Retry-After") != "90" {
		t.Fatalf("Retry-After = %q, want 90", r.header.Get("Retry-After"))
	}
	b.open("w")
	<-done
}

// Retry-After is rounded up to whole seconds, never down: told 1 for a
// retry_after of 1.5s, a client comes back into the same lock. Each way a
// refusal is written: the problem body, handle_errors, and WebDAV mode.
func TestRetryAfterRoundedUp(t *testing.T) {
	for name, settings := range map[string]string{
		"problem":       "",
		"handle_errors": "use_handle_errors",
		"webdav":        "webdav",
	} {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t)
			url := startCaddy(t, fmt.Sprintf("lock {\n zone raup%s\n retry_after 1500ms\n %s\n}\nreverse_proxy {backend}", name, settings), b)
			done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
			r := do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
			if r.status != http.StatusLocked || r.header.Get("Retry-After") != "2" {
				t.Fatalf("a refusal with retry_after 1500ms: %d, Retry-After %q, want 423 with 2", r.status, r.header.Get("Retry-After"))
			}
			b.open("w")
			<-done
		})
	}
}
