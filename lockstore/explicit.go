package lockstore

// Explicit locks: locks a client takes with LOCK (RFC 4918) or an operator
// takes through the admin API. Unlike in-flight locks they outlive the
// request that made them, are named by a token, and end with UNLOCK, their
// timeout, or the DELETE or MOVE of their root.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// LockStore holds a zone's explicit locks. Expired locks are never
// returned by any method and are dropped by the store on its own.
// Methods return ctx's error when ctx ends, and an error wrapping
// ErrStoreUnavailable or ErrStoreFailed when a shared store fails.
type LockStore interface {
	// Create adds l, whose Token, Root, Href, Scope, Depth, Owner,
	// Creator and Timeout are set by the caller; the store sets Created
	// and Expires from its clock. Two locks conflict when the scope of
	// one includes the root of the other and either is exclusive.
	// Conflicting locks are reported as *LockConflictError (423) and
	// nothing is added; a lock past one of the zone's limits as
	// *ExplicitLimitError (503). The check and the add are atomic.
	Create(ctx context.Context, l ExplicitLock) (ExplicitLock, error)
	// Refresh restarts the timeout of the lock with this token, setting
	// it to timeout, and returns the lock; ErrNoSuchLock when absent.
	Refresh(ctx context.Context, token string, timeout time.Duration) (ExplicitLock, error)
	// Get returns the lock with this token; ErrNoSuchLock when absent.
	Get(ctx context.Context, token string) (ExplicitLock, error)
	// Remove deletes the lock with this token and returns it;
	// ErrNoSuchLock when absent.
	Remove(ctx context.Context, token string) (ExplicitLock, error)
	// Affecting returns the locks whose scope includes key (locks on key
	// and infinite locks on its ancestors) and, when below is set, also
	// the locks rooted strictly below key. Order: by Root, then Token.
	Affecting(ctx context.Context, key string, below bool) ([]ExplicitLock, error)
	// RemoveUnder deletes the locks rooted at key or below it, as after
	// a successful DELETE or MOVE of key, and returns how many it removed.
	RemoveUnder(ctx context.Context, key string) (int, error)
	// List returns every lock of the zone, ordered by Root then Token.
	List(ctx context.Context) ([]ExplicitLock, error)
	// SetLimits changes the zone's limits for the locks created after it:
	// max_locks, max_lock_bytes (as LockBytes counts) and
	// max_locks_per_owner. Values <= 0 mean DefaultMaxLocks,
	// DefaultMaxLockBytes and DefaultMaxLocksPerOwner. Held locks stay.
	SetLimits(maxLocks int, maxBytes int64, perOwner int)
}

// ExplicitLock is one explicit lock.
type ExplicitLock struct {
	// Token is the lock token, an absolute URI ("urn:uuid:…"), unique
	// and unguessable.
	Token string `json:"-"`
	// Root is the lock key of the locked resource: the normalised path
	// (case-folded when the zone is case-insensitive).
	Root string `json:"root"`
	// Href is the root's path as the client named it, for DAV:lockroot.
	Href string `json:"href"`
	// Scope is Exclusive or Shared.
	Scope Kind `json:"-"`
	// Depth is DepthZero or DepthInfinity; an infinite lock covers every
	// resource under Root.
	Depth Depth `json:"-"`
	// Owner is the DAV:owner element of the LOCK body, verbatim (XML),
	// echoed in lock discovery; for admin locks a plain string.
	Owner []byte `json:"-"`
	// Creator is the authenticated user who took the lock
	// ({http.auth.user.id}); "" when the request was not authenticated,
	// AdminCreator for a lock of the admin API.
	Creator string `json:"creator,omitempty"`
	// Created is when the lock was granted.
	Created time.Time `json:"created"`
	// Timeout is the lifetime granted by the last LOCK or refresh.
	Timeout time.Duration `json:"-"`
	// Expires is when the lock ends unless refreshed. Always set: every
	// timeout is clamped to max_timeout.
	Expires time.Time `json:"expires"`
}

// AdminCreator is the Creator of locks taken through the admin API. No
// authenticated user has this id, so nobody can write with, refresh or
// UNLOCK such a lock through the proxy: it ends by its timeout or through
// the admin API. Such locks do not count against max_locks_per_owner.
const AdminCreator = "\x00admin"

// Covers reports whether key lies in the lock's scope: the root itself,
// or anything below it when the depth is infinity.
func (l *ExplicitLock) Covers(key string) bool {
	return key == l.Root || (l.Depth == DepthInfinity && Below(key, l.Root))
}

// OwnerLimited reports whether max_locks_per_owner applies to the lock:
// not to the admin API's, which only an operator can take.
func (l *ExplicitLock) OwnerLimited() bool { return l.Creator != AdminCreator }

// Depth is the depth of a lock, as a WebDAV Depth header gives it.
type Depth int

// Depth values.
const (
	DepthZero     Depth = 0
	DepthOne      Depth = 1
	DepthInfinity Depth = -1
)

// String returns the header form: "0", "1" or "infinity".
func (d Depth) String() string {
	switch d {
	case DepthZero:
		return "0"
	case DepthOne:
		return "1"
	case DepthInfinity:
		return "infinity"
	}
	return fmt.Sprintf("Depth(%d)", int(d))
}

// ErrNoSuchLock is returned for a token the store does not hold (never
// issued, unlocked, or expired).
var ErrNoSuchLock = errors.New("no such lock")

// LockConflictError is returned by LockStore.Create when the new lock
// would conflict with held locks.
type LockConflictError struct {
	// Conflicts are the held locks in the way.
	Conflicts []ExplicitLock
}

func (e *LockConflictError) Error() string {
	if len(e.Conflicts) == 0 {
		return "conflicting lock"
	}
	return fmt.Sprintf("conflicts with a %s lock on %s", e.Conflicts[0].Scope, e.Conflicts[0].Root)
}

// Defaults of the limits on a zone's explicit locks besides max_locks.
const (
	// DefaultMaxLockBytes is max_lock_bytes: what the explicit locks of a
	// zone may keep, as counted by LockBytes. Without it max_locks alone
	// let LOCKs with large owners keep gigabytes (each may carry an owner
	// of twice max_lock_body for up to max_timeout, refreshable).
	DefaultMaxLockBytes int64 = 64 << 20
	// DefaultMaxLocksPerOwner is max_locks_per_owner: one user (all
	// anonymous clients together) cannot take the whole zone's table or
	// budget.
	DefaultMaxLocksPerOwner = 100
)

// Names of the limits a LOCK may run into, as the Caddyfile spells them:
// the values of ExplicitLimitError.Limit.
const (
	LimitLocks         = "max_locks"
	LimitLockBytes     = "max_lock_bytes"
	LimitLocksPerOwner = "max_locks_per_owner"
)

// ExplicitLimitError is returned by LockStore.Create for a lock that
// would take the zone past one of its limits on explicit locks. It is
// ErrFull (errors.Is), so it is answered like a full table: 503 with
// Retry-After. Held locks are never evicted to make room.
type ExplicitLimitError struct {
	// Limit is the limit in the way: LimitLocks, LimitLockBytes or
	// LimitLocksPerOwner.
	Limit string
	// Max is its value.
	Max int64
}

func (e *ExplicitLimitError) Error() string {
	switch e.Limit {
	case LimitLockBytes:
		return fmt.Sprintf("the zone's explicit locks would keep more than max_lock_bytes (%d bytes)", e.Max)
	case LimitLocksPerOwner:
		return fmt.Sprintf("the lock's owner holds max_locks_per_owner (%d) explicit locks already", e.Max)
	}
	return fmt.Sprintf("the zone holds its maximum of %d explicit locks (max_locks)", e.Max)
}

// Unwrap makes the error ErrFull.
func (e *ExplicitLimitError) Unwrap() error { return ErrFull }

// Bytes counted per lock besides its strings: the lock record and its
// index entries (lockFixedBytes), and, in memory, the tree node and child
// map entry that each segment of the root may need (lockSegmentBytes,
// measured at about 340). A test of the memory store checks that the
// count covers the heap a lock keeps; an over-estimate is the safe side.
const (
	lockFixedBytes   = 512
	lockSegmentBytes = 384
)

// LockBytes is what a lock counts against max_lock_bytes: what it keeps
// (token, root, href, owner XML, creator) and a fixed share for its
// records and index entries. The root is counted three times: the memory
// store keeps it with the lock and as tree node keys, Redis in the
// lock's hash and in both index entries. The owner, the one large part,
// is counted with an eighth more for the allocator's rounding. Every
// store counts the same, so that a zone's budget means one thing
// whichever store holds it.
func LockBytes(l *ExplicitLock) int64 {
	return lockFixedBytes + int64(len(l.Token)+3*len(l.Root)+len(l.Href)+len(l.Owner)+len(l.Owner)/8+len(l.Creator)) +
		lockSegmentBytes*int64(strings.Count(l.Root, "/"))
}

// SortLocks puts locks in the order LockStore's lists use: by Root, then
// Token.
func SortLocks(ls []ExplicitLock) {
	slices.SortFunc(ls, func(a, b ExplicitLock) int {
		if c := strings.Compare(a.Root, b.Root); c != 0 {
			return c
		}
		return strings.Compare(a.Token, b.Token)
	})
}
