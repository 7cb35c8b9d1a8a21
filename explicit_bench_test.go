package caddylock

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"golang.org/x/net/webdav"
)

// Explicit locks side by side with golang.org/x/net/webdav's in-memory
// lock system, with 1000 locks held on other paths: taking and giving
// back a lock (Create+Remove versus Create+Unlock), and the check every
// write makes (Affecting versus Confirm without conditions). "empty" is
// the check in a zone that holds no explicit lock, which every write of a
// lock handler makes.

const benchHeld = 1000

func heldStore(b *testing.B) *memLockStore {
	s := newMemLockStore(0)
	b.Cleanup(s.Close)
	s.SetBudget(1<<40, 1<<30) // one anonymous owner holds them all
	for i := range benchHeld {
		_, err := s.Create(context.Background(), lockstore.ExplicitLock{
			Token: dav.NewLockToken(), Root: "/held/" + strconv.Itoa(i), Scope: lockstore.Exclusive, Depth: lockstore.DepthInfinity, Timeout: time.Hour,
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return s
}

func heldLS(b *testing.B) webdav.LockSystem {
	ls := webdav.NewMemLS()
	for i := range benchHeld {
		if _, err := ls.Create(time.Now(), webdav.LockDetails{Root: "/held/" + strconv.Itoa(i), Duration: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	return ls
}

// benchParallel runs op on every CPU with a new index each time.
func benchParallel(b *testing.B, op func(ctx context.Context, i int)) {
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			op(ctx, int(next.Add(1)))
		}
	})
}

func BenchmarkExplicit(b *testing.B) {
	b.Run("create-remove/caddylock", func(b *testing.B) {
		s := heldStore(b)
		benchParallel(b, func(ctx context.Context, i int) {
			l, err := s.Create(ctx, lockstore.ExplicitLock{Token: dav.NewLockToken(), Root: benchPath(i), Scope: lockstore.Exclusive, Timeout: time.Minute})
			if err == nil {
				_, _ = s.Remove(ctx, l.Token)
			}
		})
	})
	b.Run("create-remove/webdav", func(b *testing.B) {
		ls := heldLS(b)
		benchParallel(b, func(_ context.Context, i int) {
			now := time.Now()
			tok, err := ls.Create(now, webdav.LockDetails{Root: benchPath(i), Duration: time.Minute, ZeroDepth: true})
			if err == nil {
				_ = ls.Unlock(now, tok)
			}
		})
	})
	b.Run("check/caddylock", func(b *testing.B) {
		s := heldStore(b)
		benchParallel(b, func(ctx context.Context, i int) { _, _ = s.Affecting(ctx, benchPath(i)+"/file", false) })
	})
	b.Run("check/webdav", func(b *testing.B) {
		ls := heldLS(b)
		benchParallel(b, func(_ context.Context, i int) {
			if release, err := ls.Confirm(time.Now(), benchPath(i)+"/file", ""); err == nil {
				release()
			}
		})
	})
	b.Run("check-empty/caddylock", func(b *testing.B) {
		s := newMemLockStore(0)
		b.Cleanup(s.Close)
		benchParallel(b, func(ctx context.Context, i int) { _, _ = s.Affecting(ctx, benchPath(i), false) })
	})
}

// benchPath is the i-th of 4096 distinct paths.
func benchPath(i int) string { return "/docs/" + strconv.Itoa(i&4095) + ".odt" }
