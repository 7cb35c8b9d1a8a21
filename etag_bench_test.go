package caddylock

import (
	"crypto/sha256"
	"fmt"
	"hash/fnv"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/cespare/xxhash/v2"
)

// BenchmarkETagHash is the measurement behind etags' choice of hash
// (see etag.go): each candidate over a small and a maximal body.
func BenchmarkETagHash(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
	}{{"4KiB", 4 << 10}, {"1MiB", DefaultETagMaxSize}} {
		body := make([]byte, size.n)
		for i := range body {
			body[i] = byte(i * 7)
		}
		for _, h := range []struct {
			name string
			sum  func([]byte)
		}{
			{"xxhash64", func(p []byte) { _ = xxhash.Sum64(p) }},
			{"fnv1a64", func(p []byte) { d := fnv.New64a(); _, _ = d.Write(p); _ = d.Sum64() }},
			{"fnv1a128", func(p []byte) { d := fnv.New128a(); _, _ = d.Write(p); _ = d.Sum(nil) }},
			{"sha256", func(p []byte) { _ = sha256.Sum256(p) }},
		} {
			b.Run(h.name+"/"+size.name, func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				for b.Loop() {
					h.sum(body)
				}
			})
		}
	}
}

// BenchmarkVerifiedWrite is a write through a real Caddy and proxy: with
// a plain lock, and with verify_etag, which asks the backend for the
// current validators first (one more round trip: HEAD, or GET with
// etags). The ratio of verified to locked is the cost docs/etags.md
// states.
func BenchmarkVerifiedWrite(b *testing.B) {
	for _, c := range []struct {
		name, options string
		backendETags  bool
		header        []string
	}{
		{"locked", "", true, nil},
		{"verified", "verify_etag", true, []string{"If-Match", "*"}},
		{"verified-etags", "etags\n verify_etag", false, []string{"If-Match", "*"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			be := newDocBackend(b, c.backendETags)
			be.set("/doc", strings.Repeat("x", 4096))
			url := loadCaddy(b, freePort(b), "", fmt.Sprintf("lock {\n zone bench-verified-%s\n %s\n}\nreverse_proxy %s",
				c.name, c.options, strings.TrimPrefix(be.URL, "http://")), nil)
			defer func() { _ = caddy.Stop() }()
			body := strings.Repeat("x", 4096)
			for b.Loop() {
				if r := send(b, http.MethodPut, url+"/doc", body, c.header...); r.status != http.StatusNoContent {
					b.Fatalf("PUT: %d %s", r.status, r.body)
				}
			}
		})
	}
}
