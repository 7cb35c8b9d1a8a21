package testsupport

// Helpers for tests that take in-flight locks and make explicit locks
// through the lockstore interfaces, shared by the handler's tests and the
// Redis store's. (The contract suites in lockstore/storetest keep their
// own: that package depends on lockstore alone, for stores written
// outside this module.)

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// Acquire takes a lock at once or fails the test.
func Acquire(t testing.TB, l lockstore.Locker, key string, kind lockstore.Kind) lockstore.Lease {
	t.Helper()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: kind})
	if err != nil {
		t.Fatalf("acquire %s %s: %v", kind, key, err)
	}
	return ls
}

// Conflict asks for a lock at once and fails the test unless it is
// refused with a *ConflictError, which it returns.
func Conflict(t testing.TB, l lockstore.Locker, key string, kind lockstore.Kind) *lockstore.ConflictError {
	t.Helper()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: kind})
	if err == nil {
		ls.Release()
		t.Fatalf("acquire %s %s: granted, want conflict", kind, key)
	}
	var c *lockstore.ConflictError
	if !errors.As(err, &c) {
		t.Fatalf("acquire %s %s: %v, want *ConflictError", kind, key, err)
	}
	return c
}

// Token is a fresh lock token as the handler makes them: an absolute URI.
func Token() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("urn:uuid:%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// XLock is an explicit lock to create in a test, with a fresh token and a
// minute's timeout.
func XLock(root string, scope lockstore.Kind, depth lockstore.Depth) lockstore.ExplicitLock {
	return lockstore.ExplicitLock{
		Token:   Token(),
		Root:    root,
		Href:    root,
		Scope:   scope,
		Depth:   depth,
		Owner:   []byte("<D:href>mailto:test@example.com</D:href>"),
		Timeout: time.Minute,
	}
}

// MustCreate creates l in s or fails the test.
func MustCreate(t testing.TB, s lockstore.LockStore, l lockstore.ExplicitLock) lockstore.ExplicitLock {
	t.Helper()
	got, err := s.Create(context.Background(), l)
	if err != nil {
		t.Fatalf("create %s %v depth %v: %v", l.Root, l.Scope, l.Depth, err)
	}
	return got
}

// Roots lists the locks' roots, in their order.
func Roots(locks []lockstore.ExplicitLock) []string {
	var r []string
	for _, l := range locks {
		r = append(r, l.Root)
	}
	return r
}
