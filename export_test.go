package caddylock

// The Redis store's tests compare it with the memory tables (its twin
// tests), under the names the memory tables had when they were exported.
// They go when those tests run the lockstore/storetest contract suites.

type (
	MemLocker    = memLocker
	MemLockStore = memLockStore
)

var (
	NewMemLocker    = newMemLocker
	NewMemLockStore = newMemLockStore
)
