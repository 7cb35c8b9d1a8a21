package caddylock

// Explicit locks: locks a client takes with LOCK (RFC 4918) or an operator
// takes through the admin API. Unlike in-flight locks they outlive the
// request that made them, are named by a token, and end with UNLOCK, their
// timeout, or the DELETE or MOVE of their root.
//
// LockStore is the seam between the WebDAV handling and where explicit
// locks live: in memory (one Caddy) or in Redis (cluster mode). Both
// implementations keep the same rules, stated on each method.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

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
	// ({http.auth.user.id}); "" when the request was not authenticated.
	// Only the creator may UNLOCK or write with the token.
	Creator string `json:"creator,omitempty"`
	// Created is when the lock was granted.
	Created time.Time `json:"created"`
	// Timeout is the lifetime granted by the last LOCK or refresh.
	Timeout time.Duration `json:"-"`
	// Expires is when the lock ends unless refreshed. Always set: every
	// timeout is clamped to max_timeout.
	Expires time.Time `json:"expires"`
}

// Covers reports whether key lies in the lock's scope: the root itself,
// or anything below it when the depth is infinity.
func (l *ExplicitLock) Covers(key string) bool {
	return key == l.Root || (l.Depth == DepthInfinity && isBelow(key, l.Root))
}

// isBelow reports whether key is strictly below the path root.
func isBelow(key, root string) bool {
	if root == "/" {
		return len(key) > 1 && key[0] == '/'
	}
	return len(key) > len(root) && key[len(root)] == '/' && strings.HasPrefix(key, root)
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

// LockStore holds a zone's explicit locks. Expired locks are never
// returned by any method and are dropped by the store on its own.
// Methods return ctx's error when ctx ends, and a wrapped error of the
// backing store when it fails (ErrStoreUnavailable for Redis).
type LockStore interface {
	// Create adds l, whose Token, Root, Href, Scope, Depth, Owner,
	// Creator and Timeout are set by the caller; the store sets Created
	// and Expires from its clock. Two locks conflict when the scope of
	// one includes the root of the other and either is exclusive.
	// Conflicting locks are reported as *LockConflictError and nothing
	// is added. The check and the add are atomic.
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
}
