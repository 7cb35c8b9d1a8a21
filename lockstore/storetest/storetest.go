// Package storetest holds the contract suites that every lock store runs:
// Locker for a zone's in-flight locks and LockStore for its explicit
// locks. They assert what the method docs of package lockstore state,
// through those methods only, so that a store written outside this module
// is held to the same rules as the memory and Redis stores.
//
// A store's test calls them with a function that opens an empty table:
//
//	func TestMyLocker(t *testing.T) {
//		storetest.Locker(t, func(t *testing.T, hierarchy bool, maxLocks, maxWaiters int) lockstore.Locker {
//			return mystore.NewLocker(hierarchy, maxLocks, maxWaiters)
//		})
//	}
//
// The suites use the standard library only. They never sleep to
// synchronise: a test that needs a request to be queued polls the
// Waiting count of HeldLocks until it is, with a deadline.
package storetest

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"
)

// patience bounds every wait for something another goroutine or the
// store does: long enough for a loaded machine under -race, short enough
// that a store that never does it fails the test instead of hanging it.
const patience = 10 * time.Second

// waitFor polls cond until it holds, failing the test after patience.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// newToken returns a fresh lock token, as the handler would issue.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "urn:uuid:" + hex.EncodeToString(b[:])
}
