package caddylock

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// Writes of every kind race on a few resources of one collection through
// the WebDAV handler; each is slow at the backend, so any two that were
// let through together would overlap there. The handler queues them
// (wait), so they reach the backend one resource at a time, and the check
// of newDAVBackend fails the test if they did not. A COPY or MOVE also
// writes its destination, a DELETE, MOVE or COPY of a collection every
// member, and a LOCK on an unmapped URL creates the resource with a PUT of
// its own. Some writes spell their path, or their
// destination, with escapes. It runs with the in-memory and the
// Redis lock table.
func TestDAVConcurrentWritesDoNotOverlap(t *testing.T) {
	inEachStore(t, testConcurrentDAVWrites)
}

func testConcurrentDAVWrites(t *testing.T, store string) {
	url, b := davSite(t, "wait 30s\n"+store)
	b.mkdir(t, "/c")
	b.put(t, "/c/f", "original")

	const proppatch = `<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:x-test"><D:set><D:prop><Z:n>%d</Z:n></D:prop></D:set></D:propertyupdate>`
	type step struct {
		method, path, body string
		header             map[string]string
	}
	dest := func(p string) map[string]string { return map[string]string{"Destination": url + p, "Overwrite": "T"} }
	// Each worker sends its writes in order, rounds times; the workers run
	// at once. Statuses vary with the order the writes happen to take (a
	// MOVE whose source is gone gets 404, a PUT on a LOCKed file 423);
	// what matters is where they overlap.
	workers := [][]step{
		{{"PUT", "/c/f", "from one", nil}},
		{{"PUT", "/c/%66", "from two", nil}}, // /c/f spelled otherwise
		{{"PROPPATCH", "/c/f", proppatch, nil}},
		{{"COPY", "/c/f", "", dest("/c/%67")}}, // to /c/g
		{{"PUT", "/c/g", "g", nil}, {"MOVE", "/c/g", "", dest("/c/h")}},
		{{"DELETE", "/c/h", "", nil}, {"PUT", "/c/h", "h", nil}},
		{{"MKCOL", "/c/d", "", nil}, {"DELETE", "/c/d", "", nil}},
		{{"MKCOL", "/c/d", "", nil}, {"PROPPATCH", "/c/d", proppatch, nil}},
		{{"PUT", "/c/d/x", "x", nil}},
		{{"COPY", "/c/d", "", dest("/c/e")}, {"PUT", "/c/e/y", "y", nil}},
		{{"LOCK", "/c/n", fmt.Sprintf(lockBody, "exclusive", "n"), nil}},
		{{"PUT", "/c/n", "n", nil}, {"DELETE", "/c/n", "", nil}},
	}
	const rounds = 8
	var wg sync.WaitGroup
	errs := make(chan error, len(workers)*rounds*2)
	for _, writes := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				for _, w := range writes {
					body := w.body
					if w.method == "PROPPATCH" {
						body = fmt.Sprintf(w.body, i)
					}
					req, err := http.NewRequest(w.method, url+w.path, strings.NewReader(body))
					if err != nil {
						errs <- err
						return
					}
					req.Header.Set("X-Delay", "3ms")
					for k, v := range w.header {
						req.Header.Set(k, v)
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						errs <- fmt.Errorf("%s %s: %w", w.method, w.path, err)
						return
					}
					tok := resp.Header.Get("Lock-Token")
					resp.Body.Close()
					if resp.StatusCode >= 500 {
						errs <- fmt.Errorf("%s %s: status %d", w.method, w.path, resp.StatusCode)
					}
					if w.method == "LOCK" && tok != "" {
						// Give the lock back, so that the other writes to
						// /c/n go on.
						req, _ := http.NewRequest("UNLOCK", url+w.path, nil)
						req.Header.Set("Lock-Token", tok)
						if resp, err := http.DefaultClient.Do(req); err != nil {
							errs <- fmt.Errorf("UNLOCK %s: %w", w.path, err)
						} else if resp.Body.Close(); resp.StatusCode != http.StatusNoContent {
							errs <- fmt.Errorf("UNLOCK %s: status %d", w.path, resp.StatusCode)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Most writes must have reached the backend, or the race was not run.
	b.mu.Lock()
	reached := 0
	for _, s := range b.seen {
		if !strings.HasPrefix(s, "HEAD ") {
			reached++
		}
	}
	b.mu.Unlock()
	if reached < rounds*len(workers) {
		t.Errorf("only %d writes reached the backend, want at least %d", reached, rounds*len(workers))
	}
}
