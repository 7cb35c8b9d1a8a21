package redisstore

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// Lease is a lock granted by a Locker. It implements Lease,
// Fenced and Revocable.
type Lease struct {
	l         *Locker
	key       string
	member    string
	fence     int64
	explicit  bool
	queued    bool         // granted after waiting in the queue
	granted   int64        // l.now() when the granting call was sent
	confirmed atomic.Int64 // l.now() when the last successful renewal was sent
	released  atomic.Bool
	lostOnce  sync.Once
	lost      chan struct{}
}

// Key returns the locked key.
func (ls *Lease) Key() string { return ls.key }

// Queued implements Lease.
func (ls *Lease) Queued() bool { return ls.queued }

// ExplicitLocksInZone reports whether the zone held explicit locks when
// the lease was granted; see Lease.
func (ls *Lease) ExplicitLocksInZone() bool { return ls.explicit }

// Fence returns the lease's fencing number: strictly greater than that of
// every earlier grant in the zone that Redis still knows of, and, after a
// failover that lost grants, greater than theirs too as long as the Redis
// servers' clocks differ by less than the failover took.
func (ls *Lease) Fence() int64 { return ls.fence }

// Lost returns a channel that is closed when the lock is lost while held:
// a renewal found it expired or taken, Redis could not be reached for a
// whole lease period, or the locker was closed. It is not closed by
// Release.
func (ls *Lease) Lost() <-chan struct{} { return ls.lost }

func (ls *Lease) markLost() { ls.lostOnce.Do(func() { close(ls.lost) }) }

// Release gives the lock back; only the first call has an effect. It waits
// for Redis at most the configured timeout; if Redis does not answer, the
// lock expires on its own within the lease period.
func (ls *Lease) Release() {
	if ls.released.Swap(true) {
		return
	}
	l := ls.l
	l.calls.Add(1)
	defer l.calls.Add(-1)
	l.untrack(ls)
	l.release(ls.member, ls.key, time.Duration(l.now()-ls.granted))
}

var (
	_ lockstore.Locker    = (*Locker)(nil)
	_ lockstore.Lease     = (*Lease)(nil)
	_ lockstore.Lease     = (*Lease)(nil)
	_ lockstore.Fenced    = (*Lease)(nil)
	_ lockstore.Revocable = (*Lease)(nil)
)
