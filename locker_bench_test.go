//go:build unix

package caddylock

import (
	"context"
	"fmt"
	"hash/maphash"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"golang.org/x/net/webdav"
)

// The reference is golang.org/x/net/webdav's in-memory lock system on the
// same workloads and the same keys: Create+Unlock versus Acquire+Release.
//
// Every RunParallel worker walks its own sequence of keys, so the workers
// share nothing but the lock table under test: a shared counter handing
// out keys would itself bounce between CPUs and be measured as well.

// benchKeysPerWorker is the number of distinct keys each worker cycles
// through; with two workers that is about as many as the table holds at
// most, and far more than fit in a shard's cache lines.
const benchKeysPerWorker = 4096

var (
	benchKeysMu sync.Mutex
	benchKeys   [][]string // benchKeys[w] are the keys of worker w
)

// workerKeys returns the distinct keys of worker w: paths two levels deep,
// the shape of documents in a WebDAV share.
func workerKeys(w int) []string {
	benchKeysMu.Lock()
	defer benchKeysMu.Unlock()
	for len(benchKeys) <= w {
		i := len(benchKeys)
		keys := make([]string, benchKeysPerWorker)
		for k := range keys {
			keys[k] = fmt.Sprintf("/docs/w%d-report-%04d.odt", i, k)
		}
		benchKeys = append(benchKeys, keys)
	}
	return benchKeys[w]
}

// workload says which keys a worker uses: its own distinct keys, or one
// key shared by all.
type workload func(w int) []string

func distinct(w int) []string { return workerKeys(w) }
func hot(int) []string        { return []string{"/docs/hot.odt"} }

// cpuTime is the CPU time the process has used so far, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runWorkers runs op on b.N keys spread over RunParallel workers, each
// walking its own keys. Besides ns/op (wall time) it reports cpu-ns/op,
// the CPU time of the whole process (garbage collection included) per
// operation: on a machine shared with other work, wall time also counts
// the time other processes held the CPUs, CPU time does not. With -cpu 2,
// cpu-ns/op equal to the -cpu 1 figure means linear scaling. It also
// reports the share of operations refused because another worker held
// the key.
func runWorkers(b *testing.B, keys workload, op func(key string) bool) {
	var workers, refused atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	b.RunParallel(func(pb *testing.PB) {
		mine := keys(int(workers.Add(1) - 1))
		i, n := 0, int64(0)
		for pb.Next() {
			if !op(mine[i]) {
				n++
			}
			if i++; i == len(mine) {
				i = 0
			}
		}
		refused.Add(n)
	})
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(refused.Load())/float64(b.N), "refused/op")
}

func benchLocker(b *testing.B, l lockstore.Locker, kind lockstore.Kind, keys workload) {
	ctx := context.Background()
	runWorkers(b, keys, func(key string) bool {
		ls, err := l.Acquire(ctx, lockstore.Request{Key: key, Kind: kind})
		if err != nil {
			return false // a hot key taken by another worker
		}
		ls.Release()
		return true
	})
}

func benchWebDAV(b *testing.B, keys workload) {
	ls := webdav.NewMemLS()
	runWorkers(b, keys, func(key string) bool {
		now := time.Now()
		tok, err := ls.Create(now, webdav.LockDetails{Root: key, Duration: time.Minute, ZeroDepth: true})
		if err != nil {
			return false
		}
		_ = ls.Unlock(now, tok)
		return true
	})
}

// benchMutexes is the floor under any table that locks one of 64 shards
// per operation: each operation hashes its key and locks and unlocks a
// padded mutex twice, as an acquire and a release do, and nothing else.
// Where this does not scale with -cpu, the cache lines of the shards
// moving between CPUs are what limits the lock table too.
func benchMutexes(b *testing.B, keys workload) {
	type padded struct {
		sync.Mutex
		n int
		_ [112]byte
	}
	var shards [numShards]padded
	seed := maphash.MakeSeed()
	runWorkers(b, keys, func(key string) bool {
		s := &shards[maphash.String(seed, key)%numShards]
		s.Lock()
		s.n++
		s.Unlock()
		s.Lock()
		s.n--
		s.Unlock()
		return true
	})
}

func BenchmarkLocker(b *testing.B) {
	// Make the keys before timing, for as many workers as RunParallel
	// starts.
	workerKeys(runtime.GOMAXPROCS(0))
	b.Run("distinct/caddylock", func(b *testing.B) { benchLocker(b, newMemLocker(false, 0, 0), lockstore.Exclusive, distinct) })
	b.Run("distinct/webdav", func(b *testing.B) { benchWebDAV(b, distinct) })
	b.Run("distinct/64-mutexes", func(b *testing.B) { benchMutexes(b, distinct) })
	b.Run("hot/caddylock", func(b *testing.B) { benchLocker(b, newMemLocker(false, 0, 0), lockstore.Exclusive, hot) })
	b.Run("hot/webdav", func(b *testing.B) { benchWebDAV(b, hot) })
	b.Run("shared/caddylock", func(b *testing.B) { benchLocker(b, newMemLocker(false, 0, 0), lockstore.Shared, hot) })
	// x/net/webdav's lock system always covers the keys below a lock:
	// this is the like-for-like comparison with it.
	b.Run("distinct-hierarchy/caddylock", func(b *testing.B) { benchLocker(b, newMemLocker(true, 0, 0), lockstore.Exclusive, distinct) })
}
