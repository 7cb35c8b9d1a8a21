//go:build unix

package caddylock

// The memory store against the Redis store on the same workloads, side by
// side in one run: compare each redis/... line with its memory/... twin.
//
//	go test -run '^$' -bench 'Stores' .

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
)

// BenchmarkStores: Acquire+Release through the Locker, from parallel
// goroutines (GOMAXPROCS of them), on distinct keys, one hot key, and
// distinct keys with hierarchy.
func BenchmarkStores(b *testing.B) {
	srv := startRedis(b)
	for _, wl := range []struct {
		name      string
		hierarchy bool
		kind      lockstore.Kind
		key       workload
	}{
		{"distinct", false, lockstore.Exclusive, distinct},
		{"hot", false, lockstore.Exclusive, hot},
		{"distinct-hierarchy", true, lockstore.Exclusive, distinct},
	} {
		b.Run(wl.name+"/memory", func(b *testing.B) {
			benchLocker(b, newMemLocker(wl.hierarchy, 0, 0), wl.kind, wl.key)
		})
		b.Run(wl.name+"/redis", func(b *testing.B) {
			l := newRedisLocker(b, srv, "bench-"+wl.name, redisOpts{hierarchy: wl.hierarchy})
			benchLocker(b, l, wl.kind, wl.key)
		})
	}
}

// BenchmarkStoresThroughCaddy: locked PUTs through a real Caddy to a real
// backend, each on its own key, with the zone in memory or in Redis. This
// is what a client sees: the Redis round trips next to the proxying.
func BenchmarkStoresThroughCaddy(b *testing.B) {
	srv := startRedis(b)
	bk := newBackend(b)
	for _, store := range []struct{ name, block string }{
		{"memory", ""},
		{"redis", fmt.Sprintf("store redis {\n address %s\n }", srv.Addr)},
	} {
		b.Run(store.name, func(b *testing.B) {
			url := loadCaddy(b, freePort(b), "", fmt.Sprintf("lock {\n zone bench-http-%s\n %s\n}\nreverse_proxy {backend}", store.name, store.block), bk)
			b.Cleanup(func() { _ = caddy.Stop() })
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := int(next.Add(1))
					if r := do(client, http.MethodPut, url+benchPath(i), nil); r.status != http.StatusOK {
						b.Errorf("PUT: %d %v %s", r.status, r.err, r.body)
						return
					}
				}
			})
		})
	}
}

// BenchmarkHeldLocks: the admin API's in-flight listing of a zone holding
// n exclusive locks, the memory store beside the Redis one.
//
//	go test -run '^$' -bench 'HeldLocks' .
func BenchmarkHeldLocks(b *testing.B) {
	srv := startRedis(b)
	for _, n := range []int{100, 10000} {
		mem := newMemLocker(false, 0, 0)
		red := newRedisLocker(b, srv, fmt.Sprintf("bench-held-%d", n), redisOpts{})
		for _, l := range []lockstore.Locker{mem, red} {
			for i := range n {
				ls, err := l.Acquire(context.Background(), lockstore.Request{Key: fmt.Sprintf("/docs/%d", i), Kind: lockstore.Exclusive})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(ls.Release)
			}
		}
		for _, t := range []struct {
			name string
			l    lockstore.Locker
		}{{"memory", mem}, {"redis", red}} {
			l := t.l
			b.Run(fmt.Sprintf("%d/%s", n, t.name), func(b *testing.B) {
				for b.Loop() {
					if hs, err := l.HeldLocks(context.Background()); err != nil || len(hs) != n {
						b.Fatalf("listed %d locks (%v), want %d", len(hs), err, n)
					}
				}
			})
		}
	}
}
