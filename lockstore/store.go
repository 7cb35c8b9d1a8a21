package lockstore

// Store is implemented by the modules of the http.handlers.lock.stores
// namespace: it opens a zone's tables. The handler's default is the
// memory store, whose tables live in this process.
type Store interface {
	// TableKey identifies the tables this configuration reaches. Handlers
	// whose zone and table key agree share one set of tables, which
	// outlives a reload that leaves both unchanged; a changed key opens
	// new ones.
	TableKey() string
	// OpenZone connects to the tables of a zone. The caller closes them
	// (ZoneTables.Close) when no loaded config uses them any more.
	OpenZone(zone string, hierarchy bool) (ZoneTables, error)
	// FailOpen reports whether a request passes unlocked when the store
	// cannot be reached (fail_open), instead of being refused with 503
	// (fail_closed).
	FailOpen() bool
}

// ZoneTables are a zone's lock tables in a store.
type ZoneTables struct {
	// Locker holds the in-flight locks.
	Locker Locker
	// Explicit holds the explicit (LOCK and admin) locks.
	Explicit LockStore
	// Close lets go of the tables; locks in a shared store stay there.
	// It must not block.
	Close func() error
	// Drain asks the caller to call Close only once the requests using
	// the tables are done, for tables that hold connections those
	// requests still need. Without it Close is called at once.
	Drain bool
}
