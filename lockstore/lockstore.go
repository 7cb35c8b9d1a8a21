// Package lockstore is the seam between the lock handler and the tables
// that hold its locks: in this process's memory or in a store shared by
// several Caddy instances (the http.handlers.lock.stores namespace).
//
// A store gives each zone two tables (ZoneTables): a Locker for the
// in-flight locks that requests hold while they are proxied, and a
// LockStore for the explicit locks that WebDAV LOCK and the admin API
// take. The contract of both is stated on their methods, with the error
// each returns for each refusal; package storetest checks it for any
// implementation. The package uses the standard library only, so a store
// can be written without importing the handler.
package lockstore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Kind is the kind of lock a request takes on its key.
type Kind uint8

const (
	// Shared locks coexist with each other and exclude exclusive ones.
	Shared Kind = iota + 1
	// Exclusive locks exclude every other lock on the key.
	Exclusive
)

func (k Kind) String() string {
	switch k {
	case Shared:
		return "shared"
	case Exclusive:
		return "exclusive"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Request says which lock to take.
type Request struct {
	// Key identifies the resource (a normalised path by default).
	Key string
	// Kind is shared or exclusive.
	Kind Kind
	// Wait is how long to queue behind a conflicting lock before giving
	// up; 0 answers at once.
	Wait time.Duration
}

// Locker is a zone's table of in-flight locks. Implementations keep at
// most one grant per conflicting set (a lock is never granted twice),
// queue waiters per key in arrival order, and never evict a lock to make
// room.
type Locker interface {
	// Acquire either grants the lock and returns a Lease, or returns a
	// *ConflictError (answered 423), ErrFull (503), an error wrapping
	// ErrTooDeep (with hierarchy; 400), ErrStoreUnavailable or
	// ErrStoreFailed (503, or passed unlocked under fail_open for the
	// former), or the context's error when ctx ends while the request
	// is queued.
	Acquire(ctx context.Context, req Request) (Lease, error)
	// SetLimits changes max_locks and max_waiters (values <= 0 mean
	// DefaultMaxLocks and DefaultMaxWaiters; see Limits) for the grants
	// that follow; held locks stay.
	SetLimits(maxLocks, maxWaiters int)
	// HeldLocks lists the locks held in the table, for the admin API; it
	// fails when the table cannot be reached.
	HeldLocks(ctx context.Context) ([]HeldLock, error)
	// Hierarchy reports whether a lock covers the keys below it.
	Hierarchy() bool
}

// Lease is a granted lock.
type Lease interface {
	// Release gives the lock back. It is safe to call more than once and
	// from any goroutine; only the first call has an effect.
	Release()
	// Queued reports whether the request waited in the queue before the
	// grant. How long Acquire took does not tell: a store's round trip
	// can take longer than a short wait.
	Queued() bool
	// ExplicitLocksInZone reports whether the zone may have held explicit
	// locks when the lease was granted. A store whose grant tells (Redis)
	// spares a write in a zone without explicit locks a second round
	// trip; one that cannot tell cheaply says true.
	ExplicitLocksInZone() bool
}

// Fenced is implemented by leases that carry a fencing number: numbers
// grow strictly with every grant in a zone, so a backend that remembers the
// highest number it has seen can reject writes from a holder whose lock
// was meanwhile granted to somebody else.
type Fenced interface {
	Fence() int64
}

// Revocable is implemented by leases that can be lost before Release, such
// as Redis leases whose renewal failed. The channel is closed when the
// lock is known (or must be assumed) to be no longer held.
type Revocable interface {
	Lost() <-chan struct{}
}

// ConflictError describes the lock that stood in the way.
type ConflictError struct {
	// Key is the key of the conflicting lock (an ancestor or the key
	// itself, with hierarchy).
	Key string
	// Kind is the kind of the conflicting lock.
	Kind Kind
	// HeldFor is how long the conflicting lock has been held, to within
	// a hundredth of a second (it may read up to that much long).
	HeldFor time.Duration
	// Below is set when the conflict is with locks held under Key.
	Below bool
	// RetryAfter is the estimated time until the lock is free, from the
	// hold times recently observed in the zone; at least one second.
	RetryAfter time.Duration
}

func (e *ConflictError) Error() string {
	where := " lock on "
	if e.Below {
		where = " lock below "
	}
	// Concatenated, not formatted: every 423 describes its conflict.
	return "conflicts with the " + e.Kind.String() + where + e.Key + ", held for " + e.HeldFor.Round(time.Millisecond).String()
}

// HeldLock is an in-flight lock: held by requests being proxied.
type HeldLock struct {
	Key     string
	Kind    Kind
	Holders int       // 1 for an exclusive lock, the count of shared holders otherwise
	Since   time.Time // start of the current held period
	Waiting int       // requests queued on the key
}

// ErrFull means the zone holds max_locks locks and waiters already; the
// request is refused rather than evicting anybody's lock.
var ErrFull = errors.New("lock table is full")

// ErrTooDeep means a key has more than MaxHierarchyDepth segments in a
// zone with hierarchy. Retrying cannot help: the handler answers 400.
var ErrTooDeep = errors.New("too deep for a hierarchical lock")

// ErrStoreUnavailable means a shared lock table could not be reached (or
// did not answer) within the configured timeout. Whether the request then
// goes through unlocked or is refused is the handler's policy (on_error).
var ErrStoreUnavailable = errors.New("lock store unavailable")

// ErrStoreFailed means the lock store answered, but with an error: out
// of memory, a script error, a wrong key type, a refused command. The
// store is reachable and says it cannot do what was asked, which a client
// may be able to bring about (a flood of LOCKs filling the store's
// memory): it never lets a request pass unlocked, even under fail_open,
// and is answered with 503.
var ErrStoreFailed = errors.New("lock store answered with an error")

// Defaults for a zone.
const (
	DefaultMaxLocks   = 100000
	DefaultMaxWaiters = 64
)

// Limits returns the limits a lock table enforces for the configured
// max_locks and max_waiters, where values <= 0 mean the defaults. Every
// table applies its defaults through it, so that all agree.
func Limits(maxLocks, maxWaiters int) (locks, waiters int64) {
	if maxLocks <= 0 {
		maxLocks = DefaultMaxLocks
	}
	if maxWaiters <= 0 {
		maxWaiters = DefaultMaxWaiters
	}
	return int64(maxLocks), int64(maxWaiters)
}

// HoldWindow is about how many of a zone's latest releases the hold time
// estimate behind ConflictError.RetryAfter reflects; every table averages
// over the same window, so that all estimate alike.
const HoldWindow = 8
