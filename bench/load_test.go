package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// The load generator against real net/http servers: it must send exactly
// the requests it was asked for, over few connections, and read every way
// a server frames an answer.

func TestLoadCountsAndSpreadsRequests(t *testing.T) {
	b, err := startBackend(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	spec := loadSpec{addr: b.addr, concurrency: 4, requests: 1000, duration: time.Minute, paths: 100, getEvery: 9}
	res := runLoad(spec)
	if res.errors != 0 {
		t.Fatalf("%d errors, the first: %v", res.errors, res.firstErr)
	}
	if len(res.samples) != 1000 || res.statuses[200] != 1000 {
		t.Fatalf("got %d answers %s, want 1000 answers 200", len(res.samples), res.statuses)
	}
	if w, r := b.writes.Load(), b.reads.Load(); w != 100 || r != 900 {
		t.Errorf("the backend saw %d writes and %d reads, want 100 and 900 (90%% GET)", w, r)
	}
	for _, s := range res.samples {
		if s.latency <= 0 {
			t.Fatalf("a sample has latency %v", s.latency)
		}
	}
}

func TestLoadWorkersOwnDisjointPaths(t *testing.T) {
	spec := loadSpec{addr: "x", concurrency: 16, paths: 10000}
	seen := map[string]int{}
	for w := range spec.concurrency {
		for _, r := range requestBytes(spec, w).puts {
			path := strings.Fields(string(r))[1]
			if other, ok := seen[path]; ok && other != w {
				t.Fatalf("workers %d and %d both write %s", other, w, path)
			}
			seen[path] = w
		}
	}
	if len(seen) != 10000 {
		t.Errorf("the workers cover %d paths, want 10000", len(seen))
	}
}

func TestLoadStopsAtItsTimeBound(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
	}))
	defer slow.Close()
	start := time.Now()
	res := runLoad(loadSpec{addr: slow.Listener.Addr().String(), concurrency: 2, requests: 1 << 30, duration: 200 * time.Millisecond, paths: 1})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a 200ms run took %v", took)
	}
	if n := len(res.samples); n == 0 || n > 40 {
		t.Errorf("%d answers in 200ms from a 20ms server on 2 connections, want 1..40", n)
	}
}

func TestLoadReadsEveryFraming(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr] = true
		mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/docs/0": // chunked, with a trailer
			w.Header().Set("Trailer", "X-Sum")
			for i := range 3 {
				fmt.Fprintf(w, "chunk %d\n", i)
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Sum", "3")
		case "/docs/1": // no body
			w.WriteHeader(http.StatusNoContent)
		case "/docs/2": // the server closes the connection after answering
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusLocked)
			_, _ = io.WriteString(w, "locked")
		default:
			_, _ = io.WriteString(w, "plain")
		}
	}))
	defer srv.Close()
	res := runLoad(loadSpec{addr: srv.Listener.Addr().String(), concurrency: 1, requests: 40, duration: time.Minute, paths: 4})
	if res.errors != 0 {
		t.Fatalf("%d errors, the first: %v", res.errors, res.firstErr)
	}
	want := statuses{200: 20, 204: 10, 423: 10}
	if res.statuses.String() != want.String() {
		t.Errorf("answers %s, want %s", res.statuses, want)
	}
	if n := len(conns); n != 11 {
		t.Errorf("%d connections, want 11: one, and a new one after each of the 10 closing answers", n)
	}
}
