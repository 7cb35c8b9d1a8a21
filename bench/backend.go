package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// backend is the server behind Caddy. It answers every method at once with
// a short body, except that a write is held for hold first (scenario 4's
// slow backend). It counts what reached it, so that a run can check that
// refused requests never did.
type backend struct {
	hold   time.Duration
	srv    *http.Server
	addr   string
	writes atomic.Int64
	reads  atomic.Int64
}

var okBody = []byte("ok\n")

func startBackend(hold time.Duration) (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("backend: listening: %w", err)
	}
	b := &backend{hold: hold, addr: ln.Addr().String()}
	b.srv = &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = b.srv.Serve(ln) }()
	return b, nil
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		b.reads.Add(1)
	} else {
		b.writes.Add(1)
		if b.hold > 0 {
			time.Sleep(b.hold)
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", "3")
	_, _ = w.Write(okBody)
}

// reset zeroes the counters before a run.
func (b *backend) reset() {
	b.writes.Store(0)
	b.reads.Store(0)
}

func (b *backend) close() { _ = b.srv.Close() }
