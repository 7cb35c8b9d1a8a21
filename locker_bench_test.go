package caddylock

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/webdav"
)

// The reference is golang.org/x/net/webdav's in-memory lock system on the
// same workloads: Create+Unlock versus Acquire+Release.

var benchKeys = func() []string {
	keys := make([]string, 10000)
	for i := range keys {
		keys[i] = "/docs/" + strconv.Itoa(i)
	}
	return keys
}()

func benchLocker(b *testing.B, l Locker, kind Kind, key func(i int) string) {
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			i := int(next.Add(1))
			ls, err := l.Acquire(ctx, Request{Key: key(i), Kind: kind})
			if err != nil {
				continue // a hot key taken by the other goroutine
			}
			ls.Release()
		}
	})
}

func benchWebDAV(b *testing.B, key func(i int) string) {
	ls := webdav.NewMemLS()
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1))
			now := time.Now()
			tok, err := ls.Create(now, webdav.LockDetails{Root: key(i), Duration: time.Minute, ZeroDepth: true})
			if err != nil {
				continue
			}
			_ = ls.Unlock(now, tok)
		}
	})
}

func distinct(i int) string { return benchKeys[i%len(benchKeys)] }
func hot(int) string        { return "/hot" }

func BenchmarkLocker(b *testing.B) {
	b.Run("distinct/caddylock", func(b *testing.B) { benchLocker(b, NewMemLocker(false, 0, 0), Exclusive, distinct) })
	b.Run("distinct/webdav", func(b *testing.B) { benchWebDAV(b, distinct) })
	b.Run("hot/caddylock", func(b *testing.B) { benchLocker(b, NewMemLocker(false, 0, 0), Exclusive, hot) })
	b.Run("hot/webdav", func(b *testing.B) { benchWebDAV(b, hot) })
	b.Run("shared/caddylock", func(b *testing.B) { benchLocker(b, NewMemLocker(false, 0, 0), Shared, hot) })
	b.Run("distinct-hierarchy/caddylock", func(b *testing.B) { benchLocker(b, NewMemLocker(true, 0, 0), Exclusive, distinct) })
}
