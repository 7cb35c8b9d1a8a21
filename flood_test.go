package caddylock

import (
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestFloodDistinctKeys floods a zone with writes to distinct paths while
// max_locks of them are held: every one past the limit gets 503 at once,
// none reaches the backend, and the table never holds more than the limit.
func TestFloodDistinctKeys(t *testing.T) {
	const limit, flood = 16, 400
	b := newBackend(t)
	url := startCaddy(t, fmt.Sprintf("lock {\n zone flood-keys\n max_locks %d\n}\nreverse_proxy {backend}", limit), b)
	var held []<-chan result
	for i := range limit {
		id := fmt.Sprintf("held-%d", i)
		held = append(held, holdWrite(t, b, http.MethodPut, fmt.Sprintf("%s/held/%d", url, i), id))
	}
	table := zoneTable(t, "flood-keys")
	var heapBefore, heapAfter runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heapBefore)
	statuses := floodRequests(flood, func(i int) result {
		return do(http.DefaultClient, http.MethodPut, fmt.Sprintf("%s/new/%d", url, i), nil)
	})
	runtime.GC()
	runtime.ReadMemStats(&heapAfter)
	if statuses[http.StatusServiceUnavailable] != flood {
		t.Fatalf("answers to %d writes to new paths with the table full: %v, want all 503", flood, statuses)
	}
	if h, w, _ := table.Stats(); h != limit || w != 0 {
		t.Fatalf("the table holds %d locks and %d waiters after the flood, want %d and 0", h, w, limit)
	}
	writes, _, _ := b.counts()
	if writes != limit {
		t.Fatalf("%d writes reached the backend, want only the %d held ones", writes, limit)
	}
	for i, ch := range held {
		b.open(fmt.Sprintf("held-%d", i))
		if r := <-ch; r.status != http.StatusOK {
			t.Fatalf("held write %d: %d %v", i, r.status, r.err)
		}
	}
	waitEmpty(t, table)
	t.Logf("flood of %d distinct keys past max_locks %d: all 503; heap in use %.1f MiB before, %.1f MiB after",
		flood, limit, float64(heapBefore.HeapInuse)/(1<<20), float64(heapAfter.HeapInuse)/(1<<20))
}

// TestFloodWaiters floods one held key with writes that would wait: only
// max_waiters of them queue, the rest get 423 at once, and the goroutines
// the flood leaves behind are those of the queued requests.
func TestFloodWaiters(t *testing.T) {
	const maxWaiters, flood = 8, 200
	b := newBackend(t)
	url := startCaddy(t, fmt.Sprintf("lock {\n zone flood-waiters\n wait 1m\n max_waiters %d\n}\nreverse_proxy {backend}", maxWaiters), b)
	first := holdWrite(t, b, http.MethodPut, url+"/w", "first")
	table := zoneTable(t, "flood-waiters")

	var queued sync.WaitGroup
	queuedResults := make(chan result, maxWaiters)
	for range maxWaiters {
		queued.Add(1)
		go func() {
			defer queued.Done()
			queuedResults <- do(http.DefaultClient, http.MethodPut, url+"/w", nil)
		}()
	}
	waitFor(t, 10*time.Second, "the queue to fill", func() bool { _, w, _ := table.Stats(); return w == maxWaiters })
	goroutinesBefore := runtime.NumGoroutine()
	statuses := floodRequests(flood, func(int) result {
		return do(http.DefaultClient, http.MethodPut, url+"/w", nil)
	})
	if statuses[http.StatusLocked] != flood {
		t.Fatalf("answers to %d writes past a full queue: %v, want all 423 at once", flood, statuses)
	}
	if _, w, _ := table.Stats(); w != maxWaiters {
		t.Fatalf("%d waiters after the flood, want max_waiters = %d", w, maxWaiters)
	}
	goroutinesAfter := runtime.NumGoroutine()
	b.open("first")
	if r := <-first; r.status != http.StatusOK {
		t.Fatalf("held write: %d %v", r.status, r.err)
	}
	queued.Wait()
	close(queuedResults)
	for r := range queuedResults {
		if r.status != http.StatusOK {
			t.Fatalf("a queued write got %d %v, want its turn", r.status, r.err)
		}
	}
	waitEmpty(t, table)
	t.Logf("flood of %d waiters past max_waiters %d: all 423; %d goroutines before the flood, %d after",
		flood, maxWaiters, goroutinesBefore, goroutinesAfter)
}

// floodRequests sends n requests, 32 at a time, and counts their
// statuses (0 for a transport error).
func floodRequests(n int, send func(i int) result) map[int]int {
	var mu sync.Mutex
	statuses := map[int]int{}
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := send(i)
			mu.Lock()
			statuses[r.status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return statuses
}
