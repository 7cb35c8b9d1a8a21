package caddylock

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// storeErr says why a call to Redis failed: ErrStoreFailed when Redis
// answered with an error or an answer that makes no sense, else (no
// answer: refused or broken connection, timeout, closed client)
// ErrStoreUnavailable. A few errors that Redis answers are outages all
// the same, which only its operator or a failover brings about and clear
// up: loading its data set, a read-only replica, a master or cluster
// down, resharding (TRYAGAIN), too many clients.
func storeErr(err error) error {
	var reply redis.Error
	var bad *badReplyError
	switch {
	case errors.As(err, &bad):
		return lockstore.ErrStoreFailed
	case !errors.As(err, &reply):
		return lockstore.ErrStoreUnavailable
	case redis.IsLoadingError(err), redis.IsReadOnlyError(err), redis.IsMasterDownError(err),
		redis.IsClusterDownError(err), redis.IsTryAgainError(err), redis.IsMaxClientsError(err):
		return lockstore.ErrStoreUnavailable
	}
	return lockstore.ErrStoreFailed
}

// badReplyError is a script reply of an unexpected shape.
type badReplyError struct{ reply any }

func (e *badReplyError) Error() string { return fmt.Sprintf("unexpected script reply %.100v", e.reply) }

// Defaults for RedisConfig.
const (
	DefaultRedisKeyPrefix = "caddy-lock"
	DefaultRedisLease     = 15 * time.Second
	DefaultRedisTimeout   = 500 * time.Millisecond
	DefaultRedisPoolSize  = 10
)

// RedisConfig says how to reach the Redis server(s) that hold the lock
// table shared by several Caddy instances, and how long locks live there.
type RedisConfig struct {
	// Addresses are host:port pairs. One address means a single Redis
	// node; several mean a Redis Cluster, unless MasterName is set, in
	// which case they are Sentinel addresses.
	Addresses []string `json:"addresses,omitempty"`
	// MasterName is the Sentinel master name; it selects Sentinel mode.
	MasterName string `json:"master_name,omitempty"`
	// Username for Redis ACL authentication (Redis 6+); optional.
	Username string `json:"username,omitempty"`
	// Password for Redis authentication; optional.
	Password string `json:"password,omitempty"`
	// DB is the database number (single node and Sentinel only).
	DB int `json:"db,omitempty"`
	// KeyPrefix starts every Redis key and channel name the lock table
	// uses; default "caddy-lock". It must not contain '{' or '}'.
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Lease is how long a lock survives in Redis without being renewed;
	// a Caddy instance that dies loses its locks after at most this long.
	// Live locks are renewed every Lease/3. Default 15s; at least twice
	// Timeout.
	Lease caddy.Duration `json:"lease,omitempty"`
	// Timeout bounds every Redis call (dial, read, write and the whole
	// call including retries); default 500ms. Past it the lock request
	// fails with ErrStoreUnavailable.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// PoolSize is the number of connections per Redis node; default 10.
	PoolSize int `json:"pool_size,omitempty"`
	// TLS enables TLS to Redis (with TLSConfig if set, else defaults).
	// In JSON and the Caddyfile, the store module's tls option sets it.
	TLS bool `json:"-"`
	// TLSConfig is the TLS client configuration used when TLS is set;
	// nil means Go's defaults. Without a ServerName, the host of the
	// first address is verified.
	TLSConfig *tls.Config `json:"-"`
}

func (c RedisConfig) withDefaults() RedisConfig {
	if c.KeyPrefix == "" {
		c.KeyPrefix = DefaultRedisKeyPrefix
	}
	if c.Lease <= 0 {
		c.Lease = caddy.Duration(DefaultRedisLease)
	}
	if c.Timeout <= 0 {
		c.Timeout = caddy.Duration(DefaultRedisTimeout)
	}
	if c.PoolSize <= 0 {
		c.PoolSize = DefaultRedisPoolSize
	}
	return c
}

// NewRedisClient returns a go-redis client for cfg with short timeouts
// suited to lock calls: dial, read, write and pool waits are all bounded by
// cfg.Timeout, and context deadlines are honoured. The caller owns the
// client and closes it after every RedisLocker using it is closed.
//
// With cfg.MasterName, the same timeouts and retry bound the queries to
// the Sentinels, and a failover needs nothing more: every new connection
// asks a Sentinel for the current master, so dials reach the promoted
// replica as soon as a Sentinel names it, and the Sentinel's
// +switch-master message closes pooled connections to the old master.
// After pool_size failed dials in a row, go-redis stops dialing and probes
// once a second, so locking resumes up to a second after Redis (or the new
// master) can be reached.
func NewRedisClient(cfg RedisConfig) (redis.UniversalClient, error) {
	cfg = cfg.withDefaults()
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("redis lock store: no addresses")
	}
	timeout := time.Duration(cfg.Timeout)
	opts := &redis.UniversalOptions{
		Addrs:      cfg.Addresses,
		MasterName: cfg.MasterName,
		Username:   cfg.Username,
		Password:   cfg.Password,
		DB:         cfg.DB,
		// One retry: scripts are idempotent, but more retries only
		// spend the call's time budget.
		MaxRetries:            1,
		DialTimeout:           timeout,
		DialerRetries:         1,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		ContextTimeoutEnabled: true,
		PoolSize:              cfg.PoolSize,
		PoolTimeout:           timeout,
		// Avoid handshake commands that older servers reject.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if cfg.TLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSConfig != nil {
			tc = cfg.TLSConfig.Clone()
		}
		if tc.ServerName == "" && !tc.InsecureSkipVerify {
			host, _, err := net.SplitHostPort(cfg.Addresses[0])
			if err != nil {
				return nil, fmt.Errorf("redis lock store: address %q: %w", cfg.Addresses[0], err)
			}
			tc.ServerName = host
		}
		opts.TLSConfig = tc
	}
	return redis.NewUniversalClient(opts), nil
}

// Tuning that is not configuration.
const (
	// redisPoll is the fallback retry interval of a waiter in case a
	// release notification is lost.
	redisPoll = 250 * time.Millisecond
	// redisRenewBatch bounds the leases renewed by one script call, to
	// keep each call short.
	redisRenewBatch = 1000
)

// RedisLocker is a Locker whose lock table lives in Redis, shared by every
// RedisLocker (on any host) with the same key prefix and zone. It has the
// semantics of MemLocker: shared/exclusive locks, optional hierarchy, FIFO
// waiting with a bounded queue per key, and max_locks. Locks are leases
// that this RedisLocker renews in the background; they expire in Redis
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
// the channel {prefix:zone}:released, to which each RedisLocker subscribes once,
// from its first waiting Acquire until Close.
type RedisLocker struct {
	client     redis.UniversalClient
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
	// The instances' settings (see redisagree.go).
	kSettings, kSettingsExp string
	instance                string
	settings                atomic.Pointer[string] // recorded by Agree, renewed
	// kXidx is the explicit lock store's index of the zone (see
	// RedisLockStore): a grant reports whether it is empty.
	kXidx   string
	channel string

	epoch  time.Time
	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool

	mu     sync.Mutex
	leases map[string]*RedisLease // live leases by member, for renewal
	// calls counts Acquire and Release calls under way. A lease leaves
	// leases before its release script has run, and enters it only after
	// its grant script has: Idle counts both kinds of call as busy so
	// that closing the client never cuts one short.
	calls atomic.Int64

	subMu sync.Mutex
	ps    *redis.PubSub

	waitMu  sync.Mutex
	waiters map[*redisWaiter]struct{}
}

type redisWaiter struct {
	key  string
	wtok string
	ch   chan struct{}
	// behind is set while the last attempt found this waiter behind
	// another in its queue: it then does not retry when a lock is
	// released, but when it is told that it became the head. It is clear
	// while an attempt is under way, so no release then goes unheard.
	behind atomic.Bool
}

// NewRedisLocker returns the lock table of zone in Redis. cfg supplies the
// key prefix, lease and timeout (its connection fields are used by
// NewRedisClient, not here). hierarchy, maxLocks and maxWaiters are as
// for NewMemLocker; values <= 0 for the limits mean the defaults. All
// RedisLockers sharing a zone must agree on hierarchy and the limits.
//
// The client is not owned: Close leaves it open. NewRedisLocker does not
// talk to Redis, so it succeeds while Redis is down.
func NewRedisLocker(client redis.UniversalClient, zone string, cfg RedisConfig, hierarchy bool, maxLocks, maxWaiters int) (*RedisLocker, error) {
	if client == nil {
		return nil, errors.New("redis lock store: nil client")
	}
	cfg = cfg.withDefaults()
	if strings.ContainsAny(cfg.KeyPrefix+zone, "{}") {
		return nil, fmt.Errorf("redis lock store: key prefix %q and zone %q must not contain '{' or '}'", cfg.KeyPrefix, zone)
	}
	if err := checkRedisZone(zone); err != nil {
		return nil, err
	}
	lease, timeout := time.Duration(cfg.Lease), time.Duration(cfg.Timeout)
	if lease < 2*timeout {
		return nil, fmt.Errorf("redis lock store: lease %s must be at least twice the timeout %s", lease, timeout)
	}
	base := "{" + cfg.KeyPrefix + ":" + zone + "}:"
	ctx, cancel := context.WithCancel(context.Background())
	l := &RedisLocker{
		client:    client,
		zone:      zone,
		hierarchy: hierarchy,
		lease:     lease,
		timeout:   timeout,
		// A waiter refreshes its entry on every attempt (at most a poll
		// interval plus a call apart); entries of a dead node vanish
		// after this long.
		waiterTTL:    2*timeout + 2*time.Second,
		poll:         redisPoll,
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
		instance:     redisInstance,
		channel:      base + "released",
		epoch:        time.Now(),
		ctx:          ctx,
		cancel:       cancel,
		done:         make(chan struct{}),
		leases:       make(map[string]*RedisLease),
		waiters:      make(map[*redisWaiter]struct{}),
	}
	l.SetLimits(maxLocks, maxWaiters)
	l.wg.Add(1)
	go l.renewLoop()
	return l, nil
}

// checkRedisZone refuses a zone name with ':'. The zone's table is
// "{prefix:zone}", and prefixes may contain ':' (key_prefix app:locks):
// with ':' allowed in both, key_prefix p + zone a:b and key_prefix p:a +
// zone b would name one table, shared by zones meant to be apart.
func checkRedisZone(zone string) error {
	if strings.Contains(zone, ":") {
		return fmt.Errorf("redis lock store: zone %q must not contain ':', which separates it from the key prefix "+
			"in Redis: key_prefix p with zone a:b would share the table of key_prefix p:a with zone b", zone)
	}
	return nil
}

// SetLimits changes the zone's limits for the next acquisitions, as
// MemLocker.SetLimits does; values <= 0 mean the defaults. Every node of a
// zone should use the same limits, since each acquisition checks its own.
func (l *RedisLocker) SetLimits(maxLocks, maxWaiters int) {
	locks, waiters := lockstore.Limits(maxLocks, maxWaiters)
	l.maxLocks.Store(locks)
	l.maxWaiters.Store(waiters)
}

// Hierarchy reports whether a lock covers the keys below it.
func (l *RedisLocker) Hierarchy() bool { return l.hierarchy }

// Close stops renewing this locker's leases and ends its background
// goroutines; calls to Acquire that are waiting return. Leases still held
// are not released: they stay in Redis until their lease runs out, since
// their requests may still be writing, and their Lost channels are closed.
// Acquire after Close fails with ErrStoreUnavailable. Close does not close
// the client. It is safe to call more than once.
func (l *RedisLocker) Close() error {
	l.mu.Lock()
	if l.closed.Swap(true) {
		l.mu.Unlock()
		return nil
	}
	leases := l.leases
	l.leases = map[string]*RedisLease{}
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

// Idle reports whether the locker holds no leases and no Acquire or
// Release call of it is under way: closing it then cuts no request short.
func (l *RedisLocker) Idle() bool {
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

// RedisStats is a snapshot of a zone's lock table in Redis.
type RedisStats struct {
	// Held counts held locks in the zone (all nodes), including expired
	// ones not yet purged.
	Held int64
	// Waiting counts queued waiters in the zone (all nodes).
	Waiting int64
	// Local counts leases this RedisLocker holds and renews.
	Local int
}

// Stats reports the zone's held locks and waiters, for tests and
// diagnostics; it costs one round trip.
func (l *RedisLocker) Stats(ctx context.Context) (RedisStats, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	var held, waiting *redis.IntCmd
	_, err := l.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		held = p.ZCard(ctx, l.kExp)
		waiting = p.ZCard(ctx, l.kWexp)
		return nil
	})
	if err != nil {
		return RedisStats{}, fmt.Errorf("redis lock stats: %w: %w", storeErr(err), err)
	}
	l.mu.Lock()
	local := len(l.leases)
	l.mu.Unlock()
	return RedisStats{Held: held.Val(), Waiting: waiting.Val(), Local: local}, nil
}

// now is a monotonic clock reading, for local lease bookkeeping.
func (l *RedisLocker) now() int64 { return int64(time.Since(l.epoch)) }

func newToken(kind lockstore.Kind) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	c := "S"
	if kind == lockstore.Exclusive {
		c = "X"
	}
	return c + hex.EncodeToString(b[:])
}

// luaAncestors defines ancestorsOf(k) for scripts: an iterator over the
// proper ancestors of a "/"-rooted key, nearest first, as ancestors()
// defines them. Scripts derive ancestors from the key rather than being
// sent them: sent, they cost the sum of their lengths, quadratic in the
// depth of the key, on every call.
const luaAncestors = `
local function ancestorsOf(k)
  local ps = {}
  if #k >= 2 and string.byte(k, 1) == 47 then
    local p = string.find(k, '/', 1, true)
    while p do
      ps[#ps + 1] = p
      p = string.find(k, '/', p + 1, true)
    end
  end
  local i = #ps + 1
  return function()
    i = i - 1
    if i < 1 then return nil end
    if ps[i] == 1 then return '/' end
    return string.sub(k, 1, ps[i] - 1)
  end
end
`

// scriptTime sets `now` to the server clock in ms, and `nowus` in µs (for
// hold times, which may be shorter than a ms); every script uses it so
// that the clocks of Caddy nodes never matter.
const scriptTime = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nowus = tonumber(t[1]) * 1000000 + tonumber(t[2])
`

// acquireScript grants a lock, queues a waiter or reports the conflict.
// It is safe to run twice with the same tokens: a holder token that is
// already granted returns its grant, a waiter token already queued keeps
// its place.
//
// KEYS: exp held info meta q wexp wseq xidx (the explicit locks' index)
// ARGV: 1 key, 2 token, 3 lease ms, 4 max locks, 5 waiter token ("" = do
// not queue), 6 waiter ttl ms, 7 max waiters, 8 channel, 9 "1" with
// hierarchy. The script derives the key's ancestors and the range of its
// descendants itself, so a call sends the key once, however deep it is.
//
// Returns {1, fence, explicit} when granted, explicit being the number of
// explicit locks in the zone (so that a write skips asking the explicit
// store when there are none), {2} when full, or {0, key, kind,
// held µs, below, avg hold ms, queued} on conflict, where queued is 1 for
// the head of the queue, 2 behind it and 0 when not queued.
//
// Messages on the channel are either a key whose locks changed, for the
// heads of queues that key may block, or "key\0waiter token" for a waiter
// that just became the head of its queue.
var acquireScript = redis.NewScript(scriptTime + luaAncestors + `
local exp, held, info, meta, q, wexp, wseq, xidx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local key, tok = ARGV[1], ARGV[2]
local ttl, maxLocks = tonumber(ARGV[3]), tonumber(ARGV[4])
local wtok, wttl, maxWaiters, chan = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local hier = ARGV[9] == '1'
-- the BYLEX range of the keys strictly below key (see descRange)
local dlo, dhi = '', ''
if hier and string.byte(key, 1) == 47 then
  if key == '/' then dlo, dhi = '[/\1', '(0' else dlo, dhi = '[' .. key .. '/', '(' .. key .. '0' end
end
local TL = 34 -- "\0" and a token (kind letter, 32 hex digits)

-- Purge expired holders and waiters (a bounded batch per call; whatever
-- is left is still recognised as expired below). Their keys may now be
-- free: tell the waiters.
local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 256)
if #dead > 0 then
  for _, m in ipairs(dead) do
    redis.call('ZREM', held, m)
    redis.call('HDEL', info, m)
    redis.call('PUBLISH', chan, string.sub(m, 1, #m - TL))
  end
  redis.call('ZREM', exp, unpack(dead))
end
-- tell the head of k's queue, if any, that it is now the head
local function newHead(k)
  local h = redis.call('ZRANGEBYLEX', q, '[' .. k .. '\0', '(' .. k .. '\1', 'LIMIT', 0, 1)[1]
  if h then redis.call('PUBLISH', chan, k .. '\0' .. string.sub(h, -33)) end
end
dead = redis.call('ZRANGEBYSCORE', wexp, '-inf', now, 'LIMIT', 0, 256)
if #dead > 0 then
  for _, wm in ipairs(dead) do
    local w = redis.call('HGET', wseq, wm)
    if w then redis.call('ZREM', q, w) end
    redis.call('HDEL', wseq, wm)
    newHead(string.sub(wm, 1, #wm - TL))
  end
  redis.call('ZREM', wexp, unpack(dead))
end

local function live(m)
  local e = redis.call('ZSCORE', exp, m)
  return e and tonumber(e) > now
end
local function since(m)
  local v = redis.call('HGET', info, m)
  return tonumber(v and string.match(v, '^(%d+)')) or nowus
end
-- holders of k that conflict with kind want: their kind and earliest grant
local function onKey(k, want)
  local kind, s = nil, nil
  for _, m in ipairs(redis.call('ZRANGEBYLEX', held, '[' .. k .. '\0', '(' .. k .. '\1')) do
    local hk = string.sub(m, #k + 2, #k + 2)
    if (want == 'X' or hk == 'X') and live(m) then
      if hk == 'X' then kind = 'X' elseif not kind then kind = 'S' end
      local ms = since(m)
      if not s or ms < s then s = ms end
    end
  end
  return kind, s
end
-- the first holder below key that conflicts with want
local function below(want)
  if dlo == '' then return nil end
  local off = 0
  while true do
    local ms = redis.call('ZRANGEBYLEX', held, dlo, dhi, 'LIMIT', off, 128)
    for _, m in ipairs(ms) do
      local hk = string.sub(m, #m - 32, #m - 32)
      if (want == 'X' or hk == 'X') and string.sub(m, 1, #m - TL) ~= key and live(m) then
        return hk, since(m)
      end
    end
    if #ms < 128 then return nil end
    off = off + 128
  end
end
local function blocker(want)
  local kind, s = onKey(key, want)
  if kind then return key, kind, s, 0 end
  kind, s = below(want)
  if kind then return key, kind, s, 1 end
  if hier then
    for a in ancestorsOf(key) do
      kind, s = onKey(a, want)
      if kind then return a, kind, s, 0 end
    end
  end
  return nil
end

local M = key .. '\0' .. tok
local e = redis.call('ZSCORE', exp, M)
if e and tonumber(e) > now then
  local v = redis.call('HGET', info, M) or ''
  return {1, tonumber(string.match(v, ' (%d+)$')) or 0, redis.call('ZCARD', xidx)}
end

local wm, W = nil, false
if wtok ~= '' then
  wm = key .. '\0' .. wtok
  W = redis.call('HGET', wseq, wm)
end
-- Every holder and waiter takes a place of max_locks; a queued waiter has
-- its place already. As in MemLocker, a conflict that will not queue is
-- reported as such even when the table is full: the lock in the way is
-- the more useful answer.
local full = not W and redis.call('ZCARD', exp) + redis.call('ZCARD', wexp) >= maxLocks

local want = string.sub(tok, 1, 1)
local qlo, qhi = '[' .. key .. '\0', '(' .. key .. '\1'
local head = redis.call('ZRANGEBYLEX', q, qlo, qhi, 'LIMIT', 0, 1)[1]
local bk, bkind, bs, bbelow
if head and head ~= W then
  -- Never overtake a queue: report what blocks its head.
  bk, bkind, bs, bbelow = blocker(string.sub(head, -33, -33))
  if not bk then bk, bkind, bs, bbelow = key, 'S', nowus, 0 end
else
  bk, bkind, bs, bbelow = blocker(want)
  if not bk then
    if full then return {2} end
    -- The fence is the counter's next value or the server clock in µs,
    -- whichever is greater: a failover that loses grants also loses their
    -- increments, and the clock still puts the new primary's numbers
    -- above them (see the README on fencing).
    local fence = math.max((tonumber(redis.call('HGET', meta, 'fence')) or 0) + 1, nowus)
    redis.call('HSET', meta, 'fence', string.format('%d', fence))
    redis.call('ZADD', exp, now + ttl, M)
    redis.call('ZADD', held, 0, M)
    redis.call('HSET', info, M, string.format('%d %d', nowus, fence))
    if W then
      redis.call('ZREM', q, W)
      redis.call('HDEL', wseq, wm)
      redis.call('ZREM', wexp, wm)
      newHead(key)
    end
    return {1, fence, redis.call('ZCARD', xidx)}
  end
end

local queued = 0
if W then
  redis.call('ZADD', wexp, now + wttl, wm)
elseif wtok ~= '' and redis.call('ZLEXCOUNT', q, qlo, qhi) < maxWaiters then
  if full then return {2} end
  local seq = redis.call('HINCRBY', meta, 'wseq', 1)
  W = key .. '\0' .. string.format('%016d', seq) .. '\0' .. wtok
  redis.call('ZADD', q, 0, W)
  redis.call('HSET', wseq, wm, W)
  redis.call('ZADD', wexp, now + wttl, wm)
  if not head then head = W end
end
if W then
  queued = 2
  if head == W then queued = 1 end
end
local avg = tonumber(redis.call('HGET', meta, 'avg') or '0') or 0
local kind = 1
if bkind == 'X' then kind = 2 end
return {0, bk, kind, nowus - bs, bbelow, math.floor(avg), queued}
`)

// releaseScript deletes a holder if the token still matches, updates the
// average hold time and notifies waiters. Running it twice is a no-op the
// second time.
//
// KEYS: exp held info meta; ARGV: member, key, channel. Returns 1 if the
// holder was removed, else 0.
var releaseScript = redis.NewScript(scriptTime + `
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local v = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local s = tonumber(v and string.match(v, '^(%d+)'))
if s then
  -- The first holdWindow holds are averaged plainly, so that the first
  -- one sets the estimate instead of moving it part of the way from
  -- zero; after that each weighs 1/holdWindow (as in the memory store).
  local avg = tonumber(redis.call('HGET', KEYS[4], 'avg') or '0') or 0
  local n = math.min((tonumber(redis.call('HGET', KEYS[4], 'holds') or '0') or 0) + 1, ` + strconv.Itoa(lockstore.HoldWindow) + `)
  avg = avg + ((nowus - s) / 1000 - avg) / n
  redis.call('HSET', KEYS[4], 'avg', string.format('%d', math.floor(avg)), 'holds', n)
end
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
`)

// leaveScript removes a waiter from its queue; if it was the head, the
// next waiter is told that it is the head now.
//
// KEYS: q wexp wseq; ARGV: key, waiter token, channel.
var leaveScript = redis.NewScript(`
local wm = ARGV[1] .. '\0' .. ARGV[2]
local W = redis.call('HGET', KEYS[3], wm)
redis.call('ZREM', KEYS[2], wm)
if not W then return 0 end
redis.call('HDEL', KEYS[3], wm)
local lo, hi = '[' .. ARGV[1] .. '\0', '(' .. ARGV[1] .. '\1'
local head = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, 1)[1]
redis.call('ZREM', KEYS[1], W)
if head == W then
  local h = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, 1)[1]
  if h then redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. string.sub(h, -33)) end
end
return 1
`)

// renewScript extends the leases that are still live and returns the
// 1-based positions of those that are not (expired or gone).
//
// KEYS: exp; ARGV: lease ms, members...
var renewScript = redis.NewScript(scriptTime + `
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local e = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if e and tonumber(e) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
  else
    lost[#lost + 1] = i - 1
  end
end
return lost
`)

func (l *RedisLocker) holderKeys() []string {
	return []string{l.kExp, l.kHeld, l.kInfo, l.kMeta}
}

// acquireResult is a decoded acquireScript reply.
type acquireResult struct {
	granted  bool
	full     bool
	fence    int64
	explicit bool // the zone held explicit locks at the grant
	conflict *lockstore.ConflictError
	queued   bool
	head     bool // first in the key's queue
}

// descRange is the BYLEX range of the keys strictly below key, as
// ancestors() defines them: "/" covers every other "/"-rooted key, other
// keys cover key+"/"….
func descRange(key string) (lo, hi string) {
	if len(key) == 0 || key[0] != '/' {
		return "", ""
	}
	if key == "/" {
		// Every other "/"-rooted key, but not the members of "/"
		// itself, which continue with the NUL separator.
		return "[/\x01", "(0"
	}
	// The prefix ends in '/', so bumping that byte bounds the range.
	return "[" + key + "/", "(" + key + "0"
}

func (l *RedisLocker) acquireArgs(req lockstore.Request, tok, wtok string) []any {
	hier := ""
	if l.hierarchy {
		hier = "1"
	}
	return []any{
		req.Key, tok, l.lease.Milliseconds(), l.maxLocks.Load(),
		wtok, l.waiterTTL.Milliseconds(), l.maxWaiters.Load(), l.channel, hier,
	}
}

func (l *RedisLocker) runAcquire(ctx context.Context, args []any) (acquireResult, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	keys := []string{l.kExp, l.kHeld, l.kInfo, l.kMeta, l.kQueue, l.kWexp, l.kWseq, l.kXidx}
	v, err := acquireScript.Run(ctx, l.client, keys, args...).Slice()
	if err != nil {
		return acquireResult{}, err
	}
	var status int64 = -1
	if len(v) > 0 {
		status, _ = v[0].(int64)
	}
	switch {
	case status == 1 && len(v) == 3:
		fence, _ := v[1].(int64)
		explicit, _ := v[2].(int64)
		return acquireResult{granted: true, fence: fence, explicit: explicit > 0}, nil
	case status == 2:
		return acquireResult{full: true}, nil
	case status == 0 && len(v) == 7:
		key, _ := v[1].(string)
		kind, _ := v[2].(int64)
		heldUs, _ := v[3].(int64)
		below, _ := v[4].(int64)
		avgMs, _ := v[5].(int64)
		queued, _ := v[6].(int64)
		held := time.Duration(max(heldUs, 0)) * time.Microsecond
		avg := time.Duration(max(avgMs, 0)) * time.Millisecond
		remaining := avg - held
		if remaining <= 0 {
			remaining = avg
		}
		return acquireResult{
			queued: queued != 0,
			head:   queued == 1,
			conflict: &lockstore.ConflictError{
				Key:        key,
				Kind:       lockstore.Kind(kind),
				HeldFor:    held,
				Below:      below == 1,
				RetryAfter: max(1, (remaining+time.Second-1)/time.Second) * time.Second,
			},
		}, nil
	}
	return acquireResult{}, &badReplyError{v}
}

// Acquire implements Locker. Besides the errors Locker documents, it
// returns an error wrapping ErrStoreUnavailable when Redis does not answer
// within the timeout, or ErrStoreFailed when it answers with an error (see
// storeErr); it never blocks longer than that per Redis call. A granted
// lease is a *RedisLease. With hierarchy, a key longer than
// RedisMaxKeyBytes is locked as its longest ancestor within the limit:
// the lease's Key tells which.
func (l *RedisLocker) Acquire(ctx context.Context, req lockstore.Request) (lockstore.Lease, error) {
	if req.Kind != lockstore.Shared && req.Kind != lockstore.Exclusive {
		return nil, fmt.Errorf("redis lock acquire %q: invalid lock kind %v", req.Key, req.Kind)
	}
	l.calls.Add(1)
	defer l.calls.Add(-1)
	if strings.IndexByte(req.Key, 0) >= 0 {
		return nil, fmt.Errorf("redis lock acquire %q: key contains a NUL byte", req.Key)
	}
	if l.hierarchy {
		// The script walks every ancestor too: refuse what MemLocker does.
		if err := lockstore.CheckDepth(req.Key); err != nil {
			return nil, fmt.Errorf("redis lock acquire: %w", err)
		}
		if cut, ok := cutKey(req.Key, RedisMaxKeyBytes); ok {
			l.noteCut(req.Key, cut)
			req.Key = cut
		}
	}
	if l.closed.Load() {
		return nil, fmt.Errorf("redis lock acquire %q: %w: locker closed", req.Key, lockstore.ErrStoreUnavailable)
	}
	tok := newToken(req.Kind)
	var wtok string
	var w *redisWaiter
	if req.Wait > 0 && ctx.Err() == nil {
		wtok = newToken(req.Kind)
		// Listen before queueing so no release in between goes unheard.
		w = l.addWaiter(req.Key, wtok)
		defer l.removeWaiter(w)
	}
	args := l.acquireArgs(req, tok, wtok)
	var deadline <-chan time.Time
	for {
		if w != nil {
			w.behind.Store(false)
		}
		sent := l.now()
		res, err := l.runAcquire(ctx, args)
		if err != nil {
			// The script may have run even though the reply was lost.
			l.abandon(req.Key, tok, wtok)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("redis lock acquire %q: %w: %w", req.Key, storeErr(err), err)
		}
		switch {
		case res.granted:
			ls := &RedisLease{l: l, key: req.Key, member: req.Key + "\x00" + tok, fence: res.fence, explicit: res.explicit,
				queued: deadline != nil, lost: make(chan struct{})}
			ls.confirmed.Store(sent)
			if !l.track(ls) {
				ls.Release()
				return nil, fmt.Errorf("redis lock acquire %q: %w: locker closed", req.Key, lockstore.ErrStoreUnavailable)
			}
			if err := ctx.Err(); err != nil {
				// The caller left; do not hand it a lock it will not use.
				ls.Release()
				return nil, err
			}
			return ls, nil
		case res.full:
			return nil, lockstore.ErrFull
		case !res.queued:
			return nil, res.conflict
		}
		if deadline == nil {
			t := time.NewTimer(req.Wait)
			defer t.Stop()
			deadline = t.C
		}
		w.behind.Store(!res.head)
		// The head polls in case a release notice is lost; the others
		// mainly keep their queue entries fresh and are told when they
		// become the head.
		interval := l.poll
		if !res.head {
			interval *= 4
		}
		// Either way the queue entry must be refreshed before it expires.
		interval = min(interval, l.waiterTTL/3)
		poll := time.NewTimer(interval/2 + mrand.N(interval))
		var err2 error
		select {
		case <-w.ch:
		case <-poll.C:
		case <-deadline:
			err2 = res.conflict
		case <-ctx.Done():
			err2 = ctx.Err()
		case <-l.done:
			err2 = fmt.Errorf("redis lock acquire %q: %w: locker closed", req.Key, lockstore.ErrStoreUnavailable)
		}
		poll.Stop()
		if err2 != nil {
			l.leave(req.Key, wtok)
			return nil, err2
		}
	}
}

// RedisMaxKeyBytes is the longest key a zone with hierarchy locks in
// Redis as it is. The script looks up every ancestor of a key, which costs
// Redis (single-threaded, serving every node) the sum of their lengths on
// every attempt: for a long and deep key, megabytes, long enough to time
// the call out and, under fail_open, to pass unlocked. A longer key is
// locked as its longest ancestor within the limit: that merges deep keys
// into one lock, which can only add conflicts, never miss one. 4096 is
// Linux's PATH_MAX; few real paths come near it.
const RedisMaxKeyBytes = 4096

// cutKey returns key's longest ancestor (as ancestors() defines them) of
// at most max bytes, and true, when key is longer than max and has one.
func cutKey(key string, max int) (string, bool) {
	if len(key) <= max || len(key) < 2 || key[0] != '/' {
		return key, false
	}
	// A '/' at i (i <= max) ends the ancestor key[:i], of i bytes.
	i := strings.LastIndexByte(key[:max+1], '/')
	if i <= 0 {
		return "/", true
	}
	return key[:i], true
}

// cutLogEvery spaces out the log entries about keys cut short.
const cutLogEvery = 10 * time.Second

// noteCut logs, at most every cutLogEvery per locker, that keys were cut
// short, with the number since the last entry and the latest one (its
// start: it may be long).
func (l *RedisLocker) noteCut(key, cut string) {
	n := l.cuts.Add(1)
	now := time.Now().UnixNano()
	last := l.cutLogged.Load()
	if now-last < int64(cutLogEvery) || !l.cutLogged.CompareAndSwap(last, now) {
		return
	}
	l.cuts.Add(-n)
	const show = 256
	caddy.Log().Named("http.handlers.lock.stores.redis").Warn("lock keys longer than the limit locked as their ancestor",
		zap.String("zone", l.zone), zap.Int64("keys", n), zap.Int("limit_bytes", RedisMaxKeyBytes),
		zap.Int("key_bytes", len(key)), zap.String("key_start", key[:min(len(key), show)]),
		zap.Int("locked_as_bytes", len(cut)))
}

// track registers a granted lease for renewal; false if the locker is
// closed.
func (l *RedisLocker) track(ls *RedisLease) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return false
	}
	l.leases[ls.member] = ls
	return true
}

func (l *RedisLocker) untrack(ls *RedisLease) {
	l.mu.Lock()
	delete(l.leases, ls.member)
	l.mu.Unlock()
}

// leave takes a waiter out of its queue; if that fails the entry expires
// on its own after waiterTTL.
func (l *RedisLocker) leave(key, wtok string) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	_ = leaveScript.Run(ctx, l.client, []string{l.kQueue, l.kWexp, l.kWseq}, key, wtok, l.channel).Err()
}

// abandon undoes, in the background, whatever a failed acquire call may
// have done in Redis, so that an unanswered grant does not block the key
// until its lease runs out, nor an unanswered queue entry head the key's
// queue until it expires. Both are undone again after a timeout in case
// the abandoned call reaches Redis after the first clean-up.
func (l *RedisLocker) abandon(key, tok, wtok string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		member := key + "\x00" + tok
		undo := func() {
			l.release(member, key)
			if wtok != "" {
				l.leave(key, wtok)
			}
		}
		undo()
		select {
		case <-l.done:
		case <-time.After(l.timeout):
			undo()
		}
	}()
}

// release deletes a holder from Redis if it is still there, waiting at
// most the timeout.
func (l *RedisLocker) release(member, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	_ = releaseScript.Run(ctx, l.client, l.holderKeys(), member, key, l.channel).Err()
}

func (l *RedisLocker) renewLoop() {
	defer l.wg.Done()
	t := time.NewTicker(l.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			l.renew()
			l.renewSettings()
		}
	}
}

// renew extends all live leases of this locker, one script call per batch.
func (l *RedisLocker) renew() {
	l.mu.Lock()
	all := make([]*RedisLease, 0, len(l.leases))
	for _, ls := range l.leases {
		all = append(all, ls)
	}
	l.mu.Unlock()
	for len(all) > 0 {
		n := min(len(all), redisRenewBatch)
		l.renewBatch(all[:n])
		all = all[n:]
	}
}

func (l *RedisLocker) renewBatch(batch []*RedisLease) {
	args := make([]any, 0, len(batch)+1)
	args = append(args, l.lease.Milliseconds())
	for _, ls := range batch {
		args = append(args, ls.member)
	}
	sent := l.now()
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	lost, err := renewScript.Run(ctx, l.client, []string{l.kExp}, args...).Int64Slice()
	cancel()
	if err != nil {
		// Redis did not answer. It lets a lease go no earlier than a
		// full lease after its last confirmed renewal was sent; the next
		// try comes a tick from now and may take the whole timeout. A
		// lease that try could not save is given up now, before Redis
		// can grant it to anybody else, while a request not yet sent
		// upstream can still be stopped.
		late := l.now() + int64(l.lease/3+l.timeout)
		for _, ls := range batch {
			if late-ls.confirmed.Load() >= int64(l.lease) {
				l.lose(ls)
			}
		}
		return
	}
	gone := make(map[int]bool, len(lost))
	for _, i := range lost {
		gone[int(i)-1] = true
	}
	for i, ls := range batch {
		if gone[i] {
			l.lose(ls)
		} else {
			ls.confirmed.Store(sent)
		}
	}
}

func (l *RedisLocker) lose(ls *RedisLease) {
	if ls.released.Load() {
		return
	}
	l.untrack(ls)
	ls.markLost()
}

// addWaiter registers a local waiter for release notifications, starting
// the zone's subscription on first use.
func (l *RedisLocker) addWaiter(key, wtok string) *redisWaiter {
	w := &redisWaiter{key: key, wtok: wtok, ch: make(chan struct{}, 1)}
	l.waitMu.Lock()
	l.waiters[w] = struct{}{}
	l.waitMu.Unlock()
	l.subscribe()
	return w
}

func (l *RedisLocker) removeWaiter(w *redisWaiter) {
	l.waitMu.Lock()
	delete(l.waiters, w)
	l.waitMu.Unlock()
}

// subscribe starts the one subscription of this locker to the zone's
// release channel. go-redis reconnects and resubscribes by itself; what is
// missed meanwhile the waiters' fallback poll covers.
func (l *RedisLocker) subscribe() {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	if l.ps != nil || l.closed.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	l.ps = l.client.Subscribe(ctx, l.channel)
	cancel()
	ch := l.ps.Channel()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.done:
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				l.wake(m.Payload)
			}
		}
	}()
}

// wake signals the local waiters a message concerns: for "key\0token" the
// waiter with that token, which became the head of its queue; for a key,
// the heads of queues on that key and, with hierarchy, on its ancestors
// and descendants.
func (l *RedisLocker) wake(msg string) {
	key, wtok, named := strings.Cut(msg, "\x00")
	l.waitMu.Lock()
	defer l.waitMu.Unlock()
	for w := range l.waiters {
		var hit bool
		if named {
			hit = w.wtok == wtok
		} else {
			hit = !w.behind.Load() && (w.key == key || (l.hierarchy && (lockstore.Below(key, w.key) || lockstore.Below(w.key, key))))
		}
		if hit {
			select {
			case w.ch <- struct{}{}:
			default:
			}
		}
	}
}

// RedisLease is a lock granted by a RedisLocker. It implements Lease,
// Fenced and Revocable.
type RedisLease struct {
	l         *RedisLocker
	key       string
	member    string
	fence     int64
	explicit  bool
	queued    bool         // granted after waiting in the queue
	confirmed atomic.Int64 // l.now() when the last successful renewal was sent
	released  atomic.Bool
	lostOnce  sync.Once
	lost      chan struct{}
}

// Key returns the locked key.
func (ls *RedisLease) Key() string { return ls.key }

// Queued implements Lease.
func (ls *RedisLease) Queued() bool { return ls.queued }

// ExplicitLocksInZone reports whether the zone held explicit locks when
// the lease was granted; see Lease.
func (ls *RedisLease) ExplicitLocksInZone() bool { return ls.explicit }

// Fence returns the lease's fencing number: strictly greater than that of
// every earlier grant in the zone that Redis still knows of, and, after a
// failover that lost grants, greater than theirs too as long as the Redis
// servers' clocks differ by less than the failover took.
func (ls *RedisLease) Fence() int64 { return ls.fence }

// Lost returns a channel that is closed when the lock is lost while held:
// a renewal found it expired or taken, Redis could not be reached for a
// whole lease period, or the locker was closed. It is not closed by
// Release.
func (ls *RedisLease) Lost() <-chan struct{} { return ls.lost }

func (ls *RedisLease) markLost() { ls.lostOnce.Do(func() { close(ls.lost) }) }

// Release gives the lock back; only the first call has an effect. It waits
// for Redis at most the configured timeout; if Redis does not answer, the
// lock expires on its own within the lease period.
func (ls *RedisLease) Release() {
	if ls.released.Swap(true) {
		return
	}
	l := ls.l
	l.calls.Add(1)
	defer l.calls.Add(-1)
	l.untrack(ls)
	l.release(ls.member, ls.key)
}

var (
	_ lockstore.Locker    = (*RedisLocker)(nil)
	_ lockstore.Lease     = (*RedisLease)(nil)
	_ lockstore.Lease     = (*RedisLease)(nil)
	_ lockstore.Fenced    = (*RedisLease)(nil)
	_ lockstore.Revocable = (*RedisLease)(nil)
)
