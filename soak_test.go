package caddylock

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// soakFor is how long TestSoak runs per store: a short pass by default,
// for every test run and CI; `go test -run TestSoak -soak 2m` for the
// long one.
var soakFor = flag.Duration("soak", 3*time.Second, "how long TestSoak sends requests, per store")

// soakAlias is one spelling of a resource that a client may send, with
// the resource a backend that decodes once and cleans the path (as
// net/http and nginx do) reads it as. The aliases are the ones every
// reading agrees on, so the lock must treat each group as one resource.
type soakAlias struct{ target, resource string }

var soakAliases = []soakAlias{
	{"/doc", "/doc"},
	{"/doc/", "/doc"},
	{"//doc", "/doc"},
	{"/./doc", "/doc"},
	{"/x/../doc", "/doc"},
	{"/%64oc", "/doc"},
	{"/dir", "/dir"},
	{"/dir/", "/dir"},
	{"/dir/a", "/dir/a"},
	{"/dir/./a", "/dir/a"},
	{"/dir//a", "/dir/a"},
	{"/dir/b", "/dir/b"},
	{"/dir/%62", "/dir/b"},
	{"/other", "/other"},
}

var soakMethods = []string{"PUT", "PUT", "DELETE", "POST", "PATCH", "GET", "GET", "GET", "HEAD"}

// soakStats is what one soak run saw.
type soakStats struct {
	requests, passed, locked, badRequest, full atomic.Int64
	peakGoroutines                             atomic.Int64
	peakHeap                                   atomic.Uint64
}

// TestSoak sends random methods from many clients over a few paths and
// their aliases, with hierarchy and waiting, through a real Caddy to the
// recording backend, with each store. No two writes to one resource (or
// a collection and a member) may overlap at the backend, every answer is
// the backend's or a well-formed refusal, and the lock tables are empty at
// the end.
func TestSoak(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		b := newBackend(t)
		url := startCaddy(t, soakSite("soak-mem", ""), b)
		st := runSoak(t, url, b)
		waitEmpty(t, zoneTable(t, "soak-mem"))
		reportSoak(t, st)
	})
	t.Run("redis", func(t *testing.T) {
		srv := startRedis(t)
		b := newBackend(t)
		store := fmt.Sprintf("store redis {\n address %s\n lease 2s\n timeout 1s\n }", srv.Addr)
		url := startCaddy(t, soakSite("soak-redis", store), b)
		st := runSoak(t, url, b)
		c := redisClient(t, srv)
		deadline := time.Now().Add(5 * time.Second)
		for heldInRedis(t, c, "soak-redis") != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d locks left in Redis after the soak", heldInRedis(t, c, "soak-redis"))
			}
			time.Sleep(10 * time.Millisecond)
		}
		reportSoak(t, st)
	})
}

func soakSite(zone, store string) string {
	return fmt.Sprintf(`lock {
	zone %s
	hierarchy
	shared GET HEAD
	wait 20ms
	max_waiters 8
	%s
}
reverse_proxy {backend}
handle_errors {
	respond "{err.status_code} {err.message}" {err.status_code}
}`, zone, store)
}

// runSoak runs the clients for *soakFor and checks every answer.
func runSoak(t *testing.T, url string, b *backend) *soakStats {
	t.Helper()
	st := &soakStats{}
	transport := &http.Transport{MaxIdleConnsPerHost: 64}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), *soakFor)
	defer cancel()

	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			if n := int64(runtime.NumGoroutine()); n > st.peakGoroutines.Load() {
				st.peakGoroutines.Store(n)
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > st.peakHeap.Load() {
				st.peakHeap.Store(ms.HeapInuse)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()

	const clients = 32
	var wg sync.WaitGroup
	var failed atomic.Bool
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for ctx.Err() == nil && !failed.Load() {
				a := soakAliases[rng.IntN(len(soakAliases))]
				method := soakMethods[rng.IntN(len(soakMethods))]
				status, err := soakRequest(client, url, method, a, rng)
				if err != nil {
					failed.Store(true)
					t.Errorf("%s %s: %v", method, a.target, err)
					return
				}
				st.requests.Add(1)
				switch status {
				case http.StatusLocked:
					st.locked.Add(1)
				case http.StatusBadRequest:
					st.badRequest.Add(1)
				case http.StatusServiceUnavailable:
					st.full.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	<-sampleDone
	return st.count(b)
}

// count fills in the answers from the backend's records.
func (st *soakStats) count(b *backend) *soakStats {
	writes, reads, _ := b.counts()
	st.passed.Store(int64(writes + reads))
	return st
}

// soakRequest sends one request and checks its answer: the backend's
// (it says so in X-Backend), or a refusal with a problem document.
func soakRequest(client *http.Client, url, method string, a soakAlias, rng *rand.Rand) (int, error) {
	req, err := http.NewRequest(method, url+a.target, strings.NewReader("payload"))
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Resource", a.resource)
	req.Header.Set("X-Delay", fmt.Sprintf("%dus", rng.IntN(2000)))
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("reading the answer: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.Header.Get("X-Backend") == "" {
			return 0, fmt.Errorf("200 without the backend's header: %s", body)
		}
		return resp.StatusCode, nil
	case http.StatusLocked, http.StatusServiceUnavailable, http.StatusBadRequest:
		if resp.Header.Get("X-Backend") != "" {
			return 0, fmt.Errorf("a %d from the backend, not the lock", resp.StatusCode)
		}
		if resp.StatusCode != http.StatusBadRequest && resp.Header.Get("Retry-After") == "" {
			return 0, fmt.Errorf("a %d without Retry-After: %s", resp.StatusCode, body)
		}
		if method == http.MethodHead {
			return resp.StatusCode, nil // no body to check
		}
		var p struct {
			Title  string `json:"title"`
			Status int    `json:"status"`
			Detail string `json:"detail"`
		}
		if err := json.Unmarshal(body, &p); err != nil || p.Status != resp.StatusCode || p.Title == "" || p.Detail == "" {
			return 0, fmt.Errorf("a %d without a well-formed problem document (%v): %s", resp.StatusCode, err, body)
		}
		return resp.StatusCode, nil
	}
	return 0, fmt.Errorf("unexpected status %d: %s", resp.StatusCode, body)
}

func reportSoak(t *testing.T, st *soakStats) {
	t.Helper()
	n, passed := st.requests.Load(), st.passed.Load()
	if n == 0 || passed == 0 {
		t.Fatalf("the soak sent %d requests and %d reached the backend: it tested nothing", n, passed)
	}
	t.Logf("soak %s: %d requests, %d reached the backend, %d got 423, %d got 400, %d got 503; peak %d goroutines, peak heap in use %.1f MiB",
		*soakFor, n, passed, st.locked.Load(), st.badRequest.Load(), st.full.Load(), st.peakGoroutines.Load(), float64(st.peakHeap.Load())/(1<<20))
	if got := st.locked.Load() + st.badRequest.Load() + st.full.Load() + passed; got != n {
		t.Errorf("%d requests, but %d reached the backend or were refused", n, got)
	}
}
