package storetest_test

// The map store, written outside the root package against lockstore
// alone, keeps both contracts.

import (
	"testing"

	"github.com/caddy-lock/caddy-lock/internal/mapstore"
	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddy-lock/caddy-lock/lockstore/storetest"
)

func TestMapLocker(t *testing.T) {
	storetest.Locker(t, func(t *testing.T, hierarchy bool, maxLocks, maxWaiters int) lockstore.Locker {
		return mapstore.NewLocker(hierarchy, maxLocks, maxWaiters)
	})
}

func TestMapLockStore(t *testing.T) {
	storetest.LockStore(t, func(t *testing.T) lockstore.LockStore { return mapstore.NewLockStore() })
}
