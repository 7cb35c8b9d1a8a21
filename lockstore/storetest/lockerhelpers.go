package storetest

// Helpers of the Locker suite: they ask for locks and read the table
// through the Locker interface only.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// acquire takes a lock at once or fails the test.
func acquire(t *testing.T, l lockstore.Locker, key string, kind lockstore.Kind) lockstore.Lease {
	t.Helper()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: kind})
	if err != nil {
		t.Fatalf("acquire %s %s: %v", kind, key, err)
	}
	return ls
}

// conflict asks for a lock at once and fails the test unless it is
// refused with a *ConflictError, which it returns.
func conflict(t *testing.T, l lockstore.Locker, key string, kind lockstore.Kind) *lockstore.ConflictError {
	t.Helper()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: kind})
	var ce *lockstore.ConflictError
	if !errors.As(err, &ce) {
		if ls != nil {
			ls.Release()
		}
		t.Fatalf("acquire %s %s: %v, want a *ConflictError", kind, key, err)
	}
	return ce
}

// full asks for a lock and fails the test unless it is refused with
// ErrFull.
func full(t *testing.T, l lockstore.Locker, req lockstore.Request) {
	t.Helper()
	ls, err := l.Acquire(context.Background(), req)
	if !errors.Is(err, lockstore.ErrFull) {
		if ls != nil {
			ls.Release()
		}
		t.Fatalf("acquire %+v: %v, want ErrFull", req, err)
	}
}

// grant is what an asynchronous Acquire returned.
type grant struct {
	lease lockstore.Lease
	err   error
}

// acquireAsync asks for a lock that may wait, from a goroutine of its
// own; the channel yields what Acquire returned (see received).
func acquireAsync(t *testing.T, l lockstore.Locker, key string, kind lockstore.Kind) <-chan grant {
	got := make(chan grant, 1)
	go func() {
		ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: kind, Wait: 2 * patience})
		if err != nil {
			err = fmt.Errorf("waiting for %s %s: %w", kind, key, err)
		}
		got <- grant{ls, err}
	}()
	return got
}

// attempt asks for a lock that may wait, from a goroutine of its own,
// under ctx; the channel yields Acquire's error, the lease (if any)
// released first.
func attempt(ctx context.Context, l lockstore.Locker, key string, kind lockstore.Kind) <-chan error {
	got := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(ctx, lockstore.Request{Key: key, Kind: kind, Wait: 2 * patience})
		if err == nil {
			ls.Release()
		}
		got <- err
	}()
	return got
}

// received waits for a lease from ch, failing the test on an error or
// after patience.
func received(t *testing.T, ch <-chan grant, what string) lockstore.Lease {
	t.Helper()
	select {
	case g := <-ch:
		if g.err != nil {
			t.Fatalf("%s: %v", what, g.err)
		}
		return g.lease
	case <-time.After(patience):
		t.Fatalf("%s: not granted after %s", what, patience)
	}
	return nil
}

// heldLocks lists the table's locks by key, failing the test on an error
// or a key listed twice.
func heldLocks(t *testing.T, l lockstore.Locker) map[string]lockstore.HeldLock {
	t.Helper()
	hs, err := l.HeldLocks(context.Background())
	if err != nil {
		t.Fatalf("HeldLocks: %v", err)
	}
	out := make(map[string]lockstore.HeldLock, len(hs))
	for _, h := range hs {
		if _, dup := out[h.Key]; dup {
			t.Fatalf("%s listed twice in %+v", h.Key, hs)
		}
		out[h.Key] = h
	}
	return out
}

// waitQueued waits until n requests are queued on key, which is held:
// HeldLocks counts the waiters of held keys.
func waitQueued(t *testing.T, l lockstore.Locker, key string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d waiters on %s", n, key), func() bool {
		return heldLocks(t, l)[key].Waiting == n
	})
}

// waitEmpty waits until the table lists no lock: releases of a shared
// store may take effect a moment after Release returns.
func waitEmpty(t *testing.T, l lockstore.Locker) {
	t.Helper()
	waitFor(t, "the table to hold no lock", func() bool { return len(heldLocks(t, l)) == 0 })
}

// eachHierarchy runs fn as a subtest for a table without hierarchy and
// one with it.
func eachHierarchy(t *testing.T, fn func(t *testing.T, hierarchy bool)) {
	for _, hierarchy := range []bool{false, true} {
		t.Run(fmt.Sprintf("hierarchy=%v", hierarchy), func(t *testing.T) { fn(t, hierarchy) })
	}
}

// deepKey is a path of n one-letter segments, "/a/a/…/a".
func deepKey(n int) string { return strings.Repeat("/a", n) }
