package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/redis/go-redis/v9"
)

// Tuning that is not configuration.
const (
	// pollInterval is the fallback retry interval of a waiter in case a
	// release notification is lost.
	pollInterval = 250 * time.Millisecond
	// renewBatchSize bounds the leases renewed by one script call, to
	// keep each call short.
	renewBatchSize = 1000
)

// Locker is a Locker whose lock table lives in Redis, shared by every
// Locker (on any host) with the same key prefix and zone. It has the
// semantics of the memory table (and the lockstore contract): shared/exclusive locks, optional hierarchy, FIFO
// waiting with a bounded queue per key, and max_locks. Locks are leases
// that this Locker renews in the background; they expire in Redis
// when their holder stops renewing them. All timing decisions use the
// Redis server's clock.
//
// Redis data model (all keys share the hash tag {prefix:zone}, so they
// live in one cluster slot):
//
//	…:exp   sorted set, holder member → lease expiry (ms, server clock)
//	…:held  sorted set, holder members, score 0, for prefix range queries
//	…:info  hash, holder member → "grant-time-µs fence"
//	…:meta  hash: fence (last fencing number), wseq (waiter counter), avg (hold ms), holds (releases averaged, at most holdWindow)
//	…:q     sorted set, score 0, waiter "key\0seq\0wtoken", FIFO per key
//	…:wexp  sorted set, "key\0wtoken" → waiter expiry (ms)
//	…:wseq  hash, "key\0wtoken" → its …:q member
//
// A holder member is "key\0token", the token being a kind letter (S or X)
// and 32 random hex digits. Releases and queue changes are published on
// the channel {prefix:zone}:released, to which each Locker subscribes once,
// from its first waiting Acquire until Close.
type Locker struct {
	client     redis.UniversalClient
	batch      batcher // sends acquire and release calls
	hierarchy  bool
	maxLocks   atomic.Int64 // limits, changeable with SetLimits
	maxWaiters atomic.Int64
	lease      time.Duration
	timeout    time.Duration
	waiterTTL  time.Duration
	poll       time.Duration // fallback poll, changeable by tests

	zone      string
	cuts      atomic.Int64 // keys cut short since the last log entry
	cutLogged atomic.Int64 // time of that entry, Unix ns

	kExp, kHeld, kInfo, kMeta, kQueue, kWexp, kWseq string
	// The instances' settings (see agree.go).
	kSettings, kSettingsExp string
	instance                string
	settings                atomic.Pointer[string] // recorded by Agree, renewed
	// kXidx is the explicit lock store's index of the zone (see
	// LockStore): a grant reports whether it is empty.
	kXidx   string
	channel string

	epoch  time.Time
	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool

	mu     sync.Mutex
	leases map[string]*Lease // live leases by member, for renewal
	// calls counts Acquire and Release calls under way. A lease leaves
	// leases before its release script has run, and enters it only after
	// its grant script has: Idle counts both kinds of call as busy so
	// that closing the client never cuts one short.
	calls atomic.Int64

	subMu sync.Mutex
	ps    *redis.PubSub

	waitMu  sync.Mutex
	waiters map[*waiter]struct{}
}

type waiter struct {
	key  string
	wtok string
	ch   chan struct{}
	// behind is set while the last attempt found this waiter behind
	// another in its queue: it then does not retry when a lock is
	// released, but when it is told that it became the head. It is clear
	// while an attempt is under way, so no release then goes unheard.
	behind atomic.Bool
}

// NewLocker returns the lock table of zone in Redis. cfg supplies the
// key prefix, lease and timeout (its connection fields are used by
// NewClient, not here). hierarchy, maxLocks and maxWaiters are as
// for the memory table; values <= 0 for the limits mean the defaults. All
// Lockers sharing a zone must agree on hierarchy and the limits.
//
// The client is not owned: Close leaves it open. NewLocker does not
// talk to Redis, so it succeeds while Redis is down.
func NewLocker(client redis.UniversalClient, zone string, cfg Config, hierarchy bool, maxLocks, maxWaiters int) (*Locker, error) {
	if client == nil {
		return nil, errors.New("redis lock store: nil client")
	}
	cfg = cfg.withDefaults()
	if strings.ContainsAny(cfg.KeyPrefix+zone, "{}") {
		return nil, fmt.Errorf("redis lock store: key prefix %q and zone %q must not contain '{' or '}'", cfg.KeyPrefix, zone)
	}
	if err := checkZone(zone); err != nil {
		return nil, err
	}
	lease, timeout := time.Duration(cfg.Lease), time.Duration(cfg.Timeout)
	if lease < 2*timeout {
		return nil, fmt.Errorf("redis lock store: lease %s must be at least twice the timeout %s", lease, timeout)
	}
	base := "{" + cfg.KeyPrefix + ":" + zone + "}:"
	ctx, cancel := context.WithCancel(context.Background())
	l := &Locker{
		client:    client,
		batch:     batcher{client: client, timeout: timeout},
		zone:      zone,
		hierarchy: hierarchy,
		lease:     lease,
		timeout:   timeout,
		// A waiter refreshes its entry on every attempt (at most a poll
		// interval plus a call apart); entries of a dead node vanish
		// after this long.
		waiterTTL:    2*timeout + 2*time.Second,
		poll:         pollInterval,
		kExp:         base + "exp",
		kHeld:        base + "held",
		kInfo:        base + "info",
		kMeta:        base + "meta",
		kQueue:       base + "q",
		kWexp:        base + "wexp",
		kWseq:        base + "wseq",
		kXidx:        base + "xidx",
		kSettings:    base + "settings",
		kSettingsExp: base + "settings:exp",
		instance:     thisInstance,
		channel:      base + "released",
		epoch:        time.Now(),
		ctx:          ctx,
		cancel:       cancel,
		done:         make(chan struct{}),
		leases:       make(map[string]*Lease),
		waiters:      make(map[*waiter]struct{}),
	}
	l.SetLimits(maxLocks, maxWaiters)
	l.wg.Add(1)
	go l.renewLoop()
	return l, nil
}

// checkZone refuses a zone name with ':'. The zone's table is
// "{prefix:zone}", and prefixes may contain ':' (key_prefix app:locks):
// with ':' allowed in both, key_prefix p + zone a:b and key_prefix p:a +
// zone b would name one table, shared by zones meant to be apart.
func checkZone(zone string) error {
	if strings.Contains(zone, ":") {
		return fmt.Errorf("redis lock store: zone %q must not contain ':', which separates it from the key prefix "+
			"in Redis: key_prefix p with zone a:b would share the table of key_prefix p:a with zone b", zone)
	}
	return nil
}

// SetLimits changes the zone's limits for the next acquisitions, as
// the memory table's SetLimits does; values <= 0 mean the defaults. Every node of a
// zone should use the same limits, since each acquisition checks its own.
func (l *Locker) SetLimits(maxLocks, maxWaiters int) {
	locks, waiters := lockstore.Limits(maxLocks, maxWaiters)
	l.maxLocks.Store(locks)
	l.maxWaiters.Store(waiters)
}

// Hierarchy reports whether a lock covers the keys below it.
func (l *Locker) Hierarchy() bool { return l.hierarchy }

// Close stops renewing this locker's leases and ends its background
// goroutines; calls to Acquire that are waiting return. Leases still held
// are not released: they stay in Redis until their lease runs out, since
// their requests may still be writing, and their Lost channels are closed.
// Acquire after Close fails with ErrStoreUnavailable. Close does not close
// the client. It is safe to call more than once.
func (l *Locker) Close() error {
	l.mu.Lock()
	if l.closed.Swap(true) {
		l.mu.Unlock()
		return nil
	}
	leases := l.leases
	l.leases = map[string]*Lease{}
	l.mu.Unlock()
	l.forgetSettings()
	close(l.done)
	l.cancel()
	l.subMu.Lock()
	ps := l.ps
	l.subMu.Unlock()
	var err error
	if ps != nil {
		err = ps.Close()
	}
	l.wg.Wait()
	for _, ls := range leases {
		ls.markLost()
	}
	return err
}

// Closed reports whether Close was called: the locker's leases are no
// longer renewed, and Acquire fails. A zone's tables are closed once no
// loaded config uses them (see Store.OpenZone).
func (l *Locker) Closed() bool { return l.closed.Load() }

// Idle reports whether the locker holds no leases and no Acquire or
// Release call of it is under way: closing it then cuts no request short.
func (l *Locker) Idle() bool {
	l.mu.Lock()
	held := len(l.leases)
	l.mu.Unlock()
	l.waitMu.Lock()
	waiting := len(l.waiters)
	l.waitMu.Unlock()
	// Read after leases: a call that has just untracked its lease (or
	// not yet tracked it) is still counted here.
	return held == 0 && waiting == 0 && l.calls.Load() == 0
}

// Stats is a snapshot of a zone's lock table in Redis.
type Stats struct {
	// Held counts held locks in the zone (all nodes), including expired
	// ones not yet purged.
	Held int64
	// Waiting counts queued waiters in the zone (all nodes).
	Waiting int64
	// Local counts leases this Locker holds and renews.
	Local int
}

// Stats reports the zone's held locks and waiters, for tests and
// diagnostics; it costs one round trip.
func (l *Locker) Stats(ctx context.Context) (Stats, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	var held, waiting *redis.IntCmd
	_, err := l.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		held = p.ZCard(ctx, l.kExp)
		waiting = p.ZCard(ctx, l.kWexp)
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("redis lock stats: %w: %w", storeErr(err), err)
	}
	l.mu.Lock()
	local := len(l.leases)
	l.mu.Unlock()
	return Stats{Held: held.Val(), Waiting: waiting.Val(), Local: local}, nil
}

// now is a monotonic clock reading, for local lease bookkeeping.
func (l *Locker) now() int64 { return int64(time.Since(l.epoch)) }

func newToken(kind lockstore.Kind) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	c := "S"
	if kind == lockstore.Exclusive {
		c = "X"
	}
	return c + hex.EncodeToString(b[:])
}

// track registers a granted lease for renewal; false if the locker is
// closed.
func (l *Locker) track(ls *Lease) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return false
	}
	l.leases[ls.member] = ls
	return true
}

func (l *Locker) untrack(ls *Lease) {
	l.mu.Lock()
	delete(l.leases, ls.member)
	l.mu.Unlock()
}

// holderKeys are the keys of releaseScript; the waiters' expiry set is
// among them so that a release tells nobody when nobody waits.
func (l *Locker) holderKeys() []string {
	return []string{l.kExp, l.kHeld, l.kInfo, l.kMeta, l.kWexp}
}
