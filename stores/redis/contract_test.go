package redisstore

// The Redis store runs the contract suites that every store runs, against
// a real redis-server: each table the suites open is a zone of its own on
// one server, reached through a client of its own, as a Caddy node has.

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddy-lock/caddy-lock/lockstore/storetest"
)

// The Redis table keeps the Locker contract. Its cleanup also checks what
// the contract cannot see: that Redis keeps no holder and no waiter of a
// scenario that released its locks, and that the node renews no lease.
func TestRedisLockerContract(t *testing.T) {
	srv := startRedis(t)
	var zones atomic.Int64
	storetest.Locker(t, func(t *testing.T, hierarchy bool, maxLocks, maxWaiters int) lockstore.Locker {
		l := newRedisLocker(t, srv, fmt.Sprintf("locker-contract-%d", zones.Add(1)),
			redisOpts{hierarchy: hierarchy, maxLocks: maxLocks, maxWaiters: maxWaiters})
		t.Cleanup(func() {
			if t.Failed() {
				return
			}
			if s := redisStats(t, l); s.Held != 0 || s.Waiting != 0 || s.Local != 0 {
				t.Errorf("stats after every release = %+v, want nothing held, queued or renewed", s)
			}
		})
		return l
	})
}

// The Redis explicit lock store keeps the LockStore contract.
func TestRedisLockStoreContract(t *testing.T) {
	srv := startRedis(t)
	var zones atomic.Int64
	storetest.LockStore(t, func(t *testing.T) lockstore.LockStore {
		return newRedisLockStore(t, srv, fmt.Sprintf("store-contract-%d", zones.Add(1)))
	})
}
