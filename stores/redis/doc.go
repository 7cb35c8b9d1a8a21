// Package redisstore is the Redis lock store, the Caddy module
// http.handlers.lock.stores.redis: it keeps a zone's lock tables in
// Redis, so that every Caddy instance configured with the same Redis, key
// prefix and zone shares them. The lock handler registers it (the root
// package imports this one), and it reaches the handler only through the
// seam in package lockstore.
//
// The package is named redisstore, not after its directory: every caller
// of NewLocker or NewLockStore holds a go-redis client too, and a package
// named redis would need an import alias on one side in each such file.
//
// Contents:
//   - Store (module.go): the Caddy module, with its JSON and Caddyfile
//     configuration; it opens a zone's tables over one client per zone.
//   - Config and NewClient (client.go): reaching Redis, with short timeouts.
//   - Locker and Lease (locker.go, acquire.go, wait.go, renew.go, lease.go,
//     held.go): the in-flight locks, as leases renewed in the background.
//   - LockStore (explicit.go): the explicit locks of LOCK and the admin API.
//   - ZoneSettingsError (agree.go): instances sharing a zone must agree on
//     how they read keys.
//   - The Lua scripts (lua/*.lua, scripts.go) and the store's metrics
//     (metrics.go).
package redisstore
