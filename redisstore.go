package caddylock

// RedisLockStore: explicit locks (LOCK, admin API) of a zone in Redis,
// shared by every Caddy instance of the zone.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/redis/go-redis/v9"
)

// RedisLockStore is a LockStore in Redis.
//
// Data model (every key carries the zone's hash tag {prefix:zone}, so all
// live in one Redis Cluster slot and the scripts may touch any of them):
//
//	…:x:<token>     hash, one lock: root, href, scope (S|X), depth (0|I),
//	                owner, creator, created, timeout, expires (ms, Redis
//	                clock) and m, its index member; it carries the lock's
//	                timeout as its TTL, so Redis drops it when it expires.
//	…:xidx          sorted set, score 0, index member "root\0<scope><depth>\0token"
//	                per lock, so that the locks on a root, or below it, are
//	                one BYLEX range and ancestors are point lookups.
//	…:xexp          sorted set, index member → expiry (ms): expired index
//	                entries are purged from it in bounded batches.
//	…:xgone:<token> hash, short-lived: what Remove returned, so that a
//	                retried Remove (reply lost) returns it again.
//	…:xsz           hash, index member → "<bytes> <creator>": what the lock
//	                counts against max_lock_bytes and whose it is, kept
//	                past the lock's hash so that a purge can give it back.
//	…:xbytes        string, the sum of the bytes in xsz.
//	…:xown          hash, creator → number of entries of xsz with it.
//
// Invariant: a lock is live exactly while its hash exists; its index
// entries are then present with the hash's expiry. Entries whose hash has
// expired are ignored (expiry > now) until purged. An index member is in
// xsz exactly while it is in xexp, and xbytes and xown agree with xsz:
// every script that adds or drops an entry of xexp does both in one go
// (see account and unaccount), so the counters never leak.
type RedisLockStore struct {
	client  redis.UniversalClient
	timeout time.Duration
	max     atomic.Int64 // most live locks in the zone, changeable with SetMax
	// maxBytes and perOwner are max_lock_bytes and max_locks_per_owner,
	// changeable with SetBudget.
	maxBytes atomic.Int64
	perOwner atomic.Int64
	base     string // "{prefix:zone}:"
	kIdx     string
	kExp     string
}

// NewRedisLockStore returns the explicit lock store of zone in Redis.
// cfg supplies the key prefix and timeout. The client is not owned.
func NewRedisLockStore(client redis.UniversalClient, zone string, cfg RedisConfig) (*RedisLockStore, error) {
	if client == nil {
		return nil, errors.New("redis explicit lock store: nil client")
	}
	cfg = cfg.withDefaults()
	if strings.ContainsAny(cfg.KeyPrefix+zone, "{}") {
		return nil, fmt.Errorf("redis explicit lock store: key prefix %q and zone %q must not contain '{' or '}'", cfg.KeyPrefix, zone)
	}
	base := "{" + cfg.KeyPrefix + ":" + zone + "}:"
	s := &RedisLockStore{
		client:  client,
		timeout: time.Duration(cfg.Timeout),
		base:    base,
		kIdx:    base + "xidx",
		kExp:    base + "xexp",
	}
	s.SetMax(0)
	s.SetBudget(0, 0)
	return s, nil
}

// SetBudget changes max_lock_bytes and max_locks_per_owner (<= 0 means
// their defaults); locks already held are never dropped. Every node of a
// zone should use the same limits.
func (s *RedisLockStore) SetBudget(maxBytes int64, perOwner int) {
	if maxBytes <= 0 {
		maxBytes = lockstore.DefaultMaxLockBytes
	}
	if perOwner <= 0 {
		perOwner = lockstore.DefaultMaxLocksPerOwner
	}
	s.maxBytes.Store(maxBytes)
	s.perOwner.Store(int64(perOwner))
}

// Usage reports what the zone's locks count against max_lock_bytes and
// how many of them owner holds, as the counters in Redis have it (locks
// that expired but were not purged yet included).
func (s *RedisLockStore) Usage(ctx context.Context, owner string) (bytes int64, owned int64, err error) {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var b *redis.StringCmd
	var o *redis.StringCmd
	_, err = s.client.Pipelined(cctx, func(p redis.Pipeliner) error {
		b = p.Get(cctx, s.base+"xbytes")
		o = p.HGet(cctx, s.base+"xown", owner)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, 0, fmt.Errorf("redis explicit lock usage: %w: %w", lockstore.ErrStoreUnavailable, err)
	}
	bytes, _ = strconv.ParseInt(b.Val(), 10, 64)
	owned, _ = strconv.ParseInt(o.Val(), 10, 64)
	return bytes, owned, nil
}

// SetMax changes the most live locks the zone holds (<= 0 means
// DefaultMaxLocks); past it Create fails with ErrFull. Locks already held
// are never dropped. Every node of a zone should use the same limit.
func (s *RedisLockStore) SetMax(maxLocks int) {
	if maxLocks <= 0 {
		maxLocks = lockstore.DefaultMaxLocks
	}
	s.max.Store(int64(maxLocks))
}

// SetLimits implements LockStore.
func (s *RedisLockStore) SetLimits(maxLocks int, maxBytes int64, perOwner int) {
	s.SetMax(maxLocks)
	s.SetBudget(maxBytes, perOwner)
}

// Tuning that is not configuration.
const (
	// xRemoveBatch bounds the locks one RemoveUnder script call removes.
	xRemoveBatch = 512
	// xGoneTTL is how long a removed lock is kept for a retried Remove.
	xGoneTTL = 10 * time.Second
)

// xPurge starts every script: it drops the index entries of expired locks
// (whose hashes Redis has dropped by itself), at most 256 per call, gives
// back what they counted, and defines the helpers (luaAncestors derives a
// root's ancestors). The counters' keys are named from xidx's, which
// carries the zone's hash tag: they live in the same slot.
const xPurge = scriptTime + luaAncestors + `
local idx, xexp = KEYS[1], KEYS[2]
local zbase = string.sub(idx, 1, #idx - 4)
local xsz, xbytes, xown = zbase .. 'xsz', zbase .. 'xbytes', zbase .. 'xown'
-- account counts a new index entry m against the budget
local function account(m, bytes, who)
  redis.call('HSET', xsz, m, bytes .. ' ' .. who)
  redis.call('INCRBY', xbytes, bytes)
  redis.call('HINCRBY', xown, who, 1)
end
-- unaccount gives back what m counted; running it twice gives back once
local function unaccount(m)
  local v = redis.call('HGET', xsz, m)
  if not v then return end
  local bytes, who = string.match(v, '^(%d+) (.*)$')
  redis.call('HDEL', xsz, m)
  if redis.call('DECRBY', xbytes, tonumber(bytes)) <= 0 then redis.call('DEL', xbytes) end
  if redis.call('HINCRBY', xown, who, -1) <= 0 then redis.call('HDEL', xown, who) end
end
local function purge(lim)
  local dead = redis.call('ZRANGEBYSCORE', xexp, '-inf', now, 'LIMIT', 0, lim)
  if #dead > 0 then
    redis.call('ZREM', idx, unpack(dead))
    redis.call('ZREM', xexp, unpack(dead))
    for _, m in ipairs(dead) do unaccount(m) end
  end
  return #dead
end
purge(256)
local function live(m)
  local e = redis.call('ZSCORE', xexp, m)
  return e and tonumber(e) > now
end
local function tokenOf(m) return string.match(m, '%z[SX][0I]%z(.*)$') end
-- the live index entries in a BYLEX range, at most lim (0 = no limit)
local function inRange(lo, hi, lim, out)
  local off = 0
  while true do
    local ms = redis.call('ZRANGEBYLEX', idx, lo, hi, 'LIMIT', off, 256)
    for _, m in ipairs(ms) do
      if live(m) then
        out[#out + 1] = m
        if lim > 0 and #out >= lim then return out end
      end
    end
    if #ms < 256 then return out end
    off = off + 256
  end
end
`

// xCreateScript adds a lock unless it conflicts or passes a limit. Run
// again with the same token (a retry), it returns the lock it created.
//
// KEYS: xidx xexp hash; ARGV: 1 root, 2 token, 3 scope, 4 depth, 5 href,
// 6 owner, 7 creator, 8 timeout ms, 9-10 BYLEX range below root ("" =
// none), 11 hash key prefix, 12 most live locks, 13 the lock's bytes, 14
// max_lock_bytes, 15 max_locks_per_owner (0: none for this creator); the
// script derives the root's ancestors (see luaAncestors). Returns {1, hash
// fields} when created, {0, {hash fields of each conflicting lock}}, or
// {2} when the zone holds max_locks, {3} when the lock would pass
// max_lock_bytes, {4} when its creator holds max_locks_per_owner.
var xCreateScript = redis.NewScript(xPurge + `
local h = KEYS[3]
local root, tok, scope, depth = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', h) == 1 then
  return {1, redis.call('HGETALL', h)}
end
local conflicts = {}
local function check(ms, onlyInfinite)
  for _, m in ipairs(ms) do
    local s, d = string.match(m, '%z([SX])([0I])%z')
    if (not onlyInfinite or d == 'I') and (scope == 'X' or s == 'X') then
      conflicts[#conflicts + 1] = redis.call('HGETALL', ARGV[11] .. tokenOf(m))
      if #conflicts >= 64 then return true end -- enough to report
    end
  end
  return false
end
-- ARGV[11] is the hash key prefix
-- locks on the root itself
if check(inRange('[' .. root .. '\0', '(' .. root .. '\1', 0, {}), false) then return {0, conflicts} end
-- infinite locks on ancestors cover the root
for a in ancestorsOf(root) do
  if check(inRange('[' .. a .. '\0', '(' .. a .. '\1', 0, {}), true) then return {0, conflicts} end
end
-- an infinite lock covers the locks below its root
if depth == 'I' and ARGV[9] ~= '' then
  -- every lock below conflicts with an exclusive one, so 64 will do; a
  -- shared one conflicts only with the exclusive ones, which may come
  -- after any number of shared ones
  local lim = 64
  if scope ~= 'X' then lim = 0 end
  check(inRange(ARGV[9], ARGV[10], lim, {}), false)
end
if #conflicts > 0 then return {0, conflicts} end
-- the zone is full only for a lock that could be granted: a conflicting
-- one is refused as such, as in memory
if redis.call('ZCARD', xexp) - redis.call('ZCOUNT', xexp, '-inf', now) >= tonumber(ARGV[12]) then
  return {2}
end
local who, bytes = ARGV[7], tonumber(ARGV[13])
local maxBytes, perOwner = tonumber(ARGV[14]), tonumber(ARGV[15])
local function over()
  if perOwner > 0 and tonumber(redis.call('HGET', xown, who) or '0') >= perOwner then return 4 end
  if tonumber(redis.call('GET', xbytes) or '0') + bytes > maxBytes then return 3 end
  return 0
end
-- the counters include expired locks not purged yet: purge more before
-- refusing, in bounded steps
local limited = over()
for _ = 1, 16 do
  if limited == 0 or purge(256) == 0 then break end
  limited = over()
end
if limited > 0 then return {limited} end
local ttl = tonumber(ARGV[8])
local m = root .. '\0' .. scope .. depth .. '\0' .. tok
redis.call('HSET', h, 'root', root, 'href', ARGV[5], 'scope', scope, 'depth', depth,
  'owner', ARGV[6], 'creator', who, 'created', now, 'timeout', ttl, 'expires', now + ttl, 'm', m)
redis.call('PEXPIRE', h, ttl)
redis.call('ZADD', idx, 0, m)
redis.call('ZADD', xexp, now + ttl, m)
account(m, bytes, who)
return {1, redis.call('HGETALL', h)}
`)

// xRefreshScript restarts a lock's timeout. Safe to run twice. A lock
// whose index entries were purged (its hash outlives them by at most the
// millisecond of its expiry) is gone: refreshing it would bring back an
// entry that no longer counts against the budget.
//
// KEYS: xidx xexp hash; ARGV: timeout ms. Returns the hash fields, or
// false when the lock is gone.
var xRefreshScript = redis.NewScript(xPurge + `
local h = KEYS[3]
local m = redis.call('HGET', h, 'm')
if not m or not live(m) then return false end
local ttl = tonumber(ARGV[1])
redis.call('HSET', h, 'timeout', ttl, 'expires', now + ttl)
redis.call('PEXPIRE', h, ttl)
redis.call('ZADD', xexp, now + ttl, m)
return redis.call('HGETALL', h)
`)

// xRemoveScript deletes a lock and keeps what it was under the tombstone
// key for a while, marked with the caller's nonce: a retry of the same
// call returns it again, another call finds no lock.
//
// KEYS: xidx xexp hash tombstone; ARGV: nonce, tombstone ttl ms. Returns
// the hash fields, or false.
var xRemoveScript = redis.NewScript(xPurge + `
local h, gone = KEYS[3], KEYS[4]
local m = redis.call('HGET', h, 'm')
if not m then
  if redis.call('HGET', gone, 'by') == ARGV[1] then return redis.call('HGETALL', gone) end
  return false
end
local v = redis.call('HGETALL', h)
redis.call('ZREM', idx, m)
redis.call('ZREM', xexp, m)
unaccount(m)
redis.call('RENAME', h, gone)
redis.call('HSET', gone, 'by', ARGV[1])
redis.call('PEXPIRE', gone, tonumber(ARGV[2]))
return v
`)

// xRemoveUnderScript deletes up to a batch of the locks rooted at a key
// or below it. Running it twice removes nothing more.
//
// KEYS: xidx xexp; ARGV: 1 key, 2-3 BYLEX range below key ("" = none),
// 4 hash key prefix, 5 batch size. Returns {removed, more}, more being 1
// when the batch was full.
var xRemoveUnderScript = redis.NewScript(xPurge + `
local lim = tonumber(ARGV[5])
local ms = inRange('[' .. ARGV[1] .. '\0', '(' .. ARGV[1] .. '\1', lim, {})
if ARGV[2] ~= '' and #ms < lim then
  inRange(ARGV[2], ARGV[3], lim, ms)
end
for _, m in ipairs(ms) do
  redis.call('DEL', ARGV[4] .. tokenOf(m))
  redis.call('ZREM', idx, m)
  redis.call('ZREM', xexp, m)
  unaccount(m)
end
local more = 0
if #ms >= lim then more = 1 end
return {#ms, more}
`)

// xAffectingScript returns the live locks whose scope includes a key and,
// when asked, those rooted below it.
//
// KEYS: xidx xexp; ARGV: 1 key, 2-3 BYLEX range below key ("" = not
// asked), 4 hash key prefix (the script derives the key's ancestors).
// Returns a list of hash field lists.
var xAffectingScript = redis.NewScript(xPurge + `
local ms = inRange('[' .. ARGV[1] .. '\0', '(' .. ARGV[1] .. '\1', 0, {})
for a in ancestorsOf(ARGV[1]) do
  for _, m in ipairs(inRange('[' .. a .. '\0', '(' .. a .. '\1', 0, {})) do
    if string.match(m, '%z[SX]I%z') then ms[#ms + 1] = m end
  end
end
if ARGV[2] ~= '' then inRange(ARGV[2], ARGV[3], 0, ms) end
local out = {}
for _, m in ipairs(ms) do
  local v = redis.call('HGETALL', ARGV[4] .. tokenOf(m))
  if #v > 0 then out[#out + 1] = v end
end
return out
`)

func (s *RedisLockStore) hashKey(token string) string { return s.base + "x:" + token }

func (s *RedisLockStore) call(ctx context.Context, op string, sc *redis.Script, keys []string, args ...any) (any, error) {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := sc.Run(cctx, s.client, keys, args...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("redis explicit lock %s: %w: %w", op, storeErr(err), err)
	}
	return v, nil
}

func checkToken(op, token string) error {
	if token == "" || strings.IndexByte(token, 0) >= 0 {
		return fmt.Errorf("redis explicit lock %s: invalid token %q", op, token)
	}
	return nil
}

// Create implements LockStore.
func (s *RedisLockStore) Create(ctx context.Context, l lockstore.ExplicitLock) (lockstore.ExplicitLock, error) {
	if err := checkToken("create", l.Token); err != nil {
		return lockstore.ExplicitLock{}, err
	}
	if l.Root == "" || strings.IndexByte(l.Root, 0) >= 0 {
		return lockstore.ExplicitLock{}, fmt.Errorf("redis explicit lock create: invalid root %q", l.Root)
	}
	if l.Scope != lockstore.Shared && l.Scope != lockstore.Exclusive {
		return lockstore.ExplicitLock{}, fmt.Errorf("redis explicit lock create: invalid scope %v", l.Scope)
	}
	if l.Depth != lockstore.DepthZero && l.Depth != lockstore.DepthInfinity {
		return lockstore.ExplicitLock{}, fmt.Errorf("redis explicit lock create: depth must be 0 or infinity, got %v", l.Depth)
	}
	if l.Timeout < time.Millisecond {
		return lockstore.ExplicitLock{}, fmt.Errorf("redis explicit lock create: timeout %s is too short", l.Timeout)
	}
	scope, depth := "S", "0"
	if l.Scope == lockstore.Exclusive {
		scope = "X"
	}
	lo, hi := "", ""
	if l.Depth == lockstore.DepthInfinity {
		depth = "I"
		lo, hi = descRange(l.Root)
	}
	perOwner := s.perOwner.Load()
	if !l.OwnerLimited() {
		perOwner = 0
	}
	args := []any{l.Root, l.Token, scope, depth, l.Href, l.Owner, l.Creator, l.Timeout.Milliseconds(), lo, hi,
		s.base + "x:", s.max.Load(), lockstore.LockBytes(&l), s.maxBytes.Load(), perOwner}
	v, err := s.call(ctx, "create", xCreateScript, []string{s.kIdx, s.kExp, s.hashKey(l.Token)}, args...)
	if err != nil {
		// The script may have run though its reply was lost; nobody has
		// the token to unlock what it made.
		s.forget(l.Token)
		return lockstore.ExplicitLock{}, err
	}
	reply, _ := v.([]any)
	if len(reply) == 1 {
		code, _ := reply[0].(int64)
		lim := &lockstore.ExplicitLimitError{Limit: lockstore.LimitLocks, Max: s.max.Load()}
		switch code {
		case 3:
			lim = &lockstore.ExplicitLimitError{Limit: lockstore.LimitLockBytes, Max: s.maxBytes.Load()}
		case 4:
			lim = &lockstore.ExplicitLimitError{Limit: lockstore.LimitLocksPerOwner, Max: s.perOwner.Load()}
		}
		return lockstore.ExplicitLock{}, fmt.Errorf("redis explicit lock create on %s: %w", l.Root, lim)
	}
	if len(reply) != 2 {
		return lockstore.ExplicitLock{}, fmt.Errorf("redis explicit lock create: unexpected reply %v", v)
	}
	if ok, _ := reply[0].(int64); ok == 1 {
		return decodeLock(l.Token, reply[1])
	}
	conflicts, err := decodeLocks(reply[1])
	if err != nil {
		return lockstore.ExplicitLock{}, err
	}
	return lockstore.ExplicitLock{}, &lockstore.LockConflictError{Conflicts: conflicts}
}

// forget removes, in the background, the lock of a create call that got
// no answer, so that it does not stand until its timeout with its token
// never handed out. The removal is repeated once after a timeout, in case
// the create reaches Redis after the first one.
func (s *RedisLockStore) forget(token string) {
	go func() {
		for i := range 2 {
			if i > 0 {
				time.Sleep(s.timeout)
			}
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			_, _ = s.Remove(ctx, token)
			cancel()
		}
	}()
}

// Refresh implements LockStore.
func (s *RedisLockStore) Refresh(ctx context.Context, token string, timeout time.Duration) (lockstore.ExplicitLock, error) {
	if err := checkToken("refresh", token); err != nil {
		return lockstore.ExplicitLock{}, err
	}
	if timeout < time.Millisecond {
		return lockstore.ExplicitLock{}, fmt.Errorf("redis explicit lock refresh: timeout %s is too short", timeout)
	}
	v, err := s.call(ctx, "refresh", xRefreshScript, []string{s.kIdx, s.kExp, s.hashKey(token)}, timeout.Milliseconds())
	if err != nil {
		return lockstore.ExplicitLock{}, err
	}
	return decodeLock(token, v)
}

// Get implements LockStore. Redis drops a lock's hash when its timeout
// ends, so what it returns is live.
func (s *RedisLockStore) Get(ctx context.Context, token string) (lockstore.ExplicitLock, error) {
	if err := checkToken("get", token); err != nil {
		return lockstore.ExplicitLock{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := s.client.HGetAll(cctx, s.hashKey(token)).Result()
	if err != nil {
		if ctx.Err() != nil {
			return lockstore.ExplicitLock{}, ctx.Err()
		}
		return lockstore.ExplicitLock{}, fmt.Errorf("redis explicit lock get: %w: %w", storeErr(err), err)
	}
	return lockFromMap(token, v)
}

// Remove implements LockStore.
func (s *RedisLockStore) Remove(ctx context.Context, token string) (lockstore.ExplicitLock, error) {
	if err := checkToken("remove", token); err != nil {
		return lockstore.ExplicitLock{}, err
	}
	var nonce [12]byte
	_, _ = rand.Read(nonce[:])
	v, err := s.call(ctx, "remove", xRemoveScript,
		[]string{s.kIdx, s.kExp, s.hashKey(token), s.base + "xgone:" + token},
		hex.EncodeToString(nonce[:]), xGoneTTL.Milliseconds())
	if err != nil {
		return lockstore.ExplicitLock{}, err
	}
	return decodeLock(token, v)
}

// Affecting implements LockStore.
func (s *RedisLockStore) Affecting(ctx context.Context, key string, below bool) ([]lockstore.ExplicitLock, error) {
	lo, hi := "", ""
	if below {
		lo, hi = descRange(key)
	}
	args := []any{key, lo, hi, s.base + "x:"}
	v, err := s.call(ctx, "affecting", xAffectingScript, []string{s.kIdx, s.kExp}, args...)
	if err != nil {
		return nil, err
	}
	return decodeLocks(v)
}

// decodeLocks decodes a script's list of HGETALL replies, sorted; the
// replies of locks that vanished meanwhile are skipped.
func decodeLocks(v any) ([]lockstore.ExplicitLock, error) {
	rows, _ := v.([]any)
	locks := make([]lockstore.ExplicitLock, 0, len(rows))
	for _, row := range rows {
		l, err := decodeLock("", row)
		if errors.Is(err, lockstore.ErrNoSuchLock) {
			continue
		}
		if err != nil {
			return nil, err
		}
		locks = append(locks, l)
	}
	lockstore.SortLocks(locks)
	return locks, nil
}

// RemoveUnder implements LockStore, in batches of one script call each.
func (s *RedisLockStore) RemoveUnder(ctx context.Context, key string) (int, error) {
	lo, hi := descRange(key)
	total := 0
	for {
		v, err := s.call(ctx, "remove under", xRemoveUnderScript, []string{s.kIdx, s.kExp},
			key, lo, hi, s.base+"x:", xRemoveBatch)
		if err != nil {
			return total, err
		}
		reply, _ := v.([]any)
		if len(reply) != 2 {
			return total, fmt.Errorf("redis explicit lock remove under: unexpected reply %v", v)
		}
		n, _ := reply[0].(int64)
		more, _ := reply[1].(int64)
		total += int(n)
		if more == 0 {
			return total, nil
		}
	}
}

// List implements LockStore. It walks the zone's index with ZSCAN (never
// KEYS, never one unbounded call) and reads each page's locks in one
// pipelined round trip.
func (s *RedisLockStore) List(ctx context.Context) ([]lockstore.ExplicitLock, error) {
	var locks []lockstore.ExplicitLock
	seen := map[string]bool{} // ZSCAN may return an entry twice
	var cursor uint64
	for {
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		members, next, err := s.client.ZScan(cctx, s.kIdx, cursor, "", 256).Result()
		if err != nil {
			cancel()
			return nil, s.listErr(ctx, err)
		}
		var toks []string
		var cmds []*redis.MapStringStringCmd
		_, err = s.client.Pipelined(cctx, func(p redis.Pipeliner) error {
			for i := 0; i < len(members); i += 2 { // member, score pairs
				tok := xTokenOf(members[i])
				if tok == "" || seen[tok] {
					continue
				}
				seen[tok] = true
				toks = append(toks, tok)
				cmds = append(cmds, p.HGetAll(cctx, s.hashKey(tok)))
			}
			return nil
		})
		cancel()
		if err != nil {
			return nil, s.listErr(ctx, err)
		}
		for i, c := range cmds {
			if l, err := lockFromMap(toks[i], c.Val()); err == nil {
				locks = append(locks, l)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	lockstore.SortLocks(locks)
	return locks, nil
}

func (s *RedisLockStore) listErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("redis explicit lock list: %w: %w", storeErr(err), err)
}

// xTokenOf returns the token of an index member.
func xTokenOf(m string) string {
	i := strings.LastIndexByte(m, 0)
	if i < 0 {
		return ""
	}
	return m[i+1:]
}

// decodeLock decodes a script's HGETALL reply (a flat list of fields and
// values); a false reply (nil) means there is no such lock.
func decodeLock(token string, v any) (lockstore.ExplicitLock, error) {
	flat, _ := v.([]any)
	m := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		k, _ := flat[i].(string)
		val, _ := flat[i+1].(string)
		m[k] = val
	}
	if token == "" {
		token = xTokenOf(m["m"])
	}
	return lockFromMap(token, m)
}

// lockFromMap builds a lock from its hash; an empty hash means there is
// no such lock.
func lockFromMap(token string, m map[string]string) (lockstore.ExplicitLock, error) {
	if len(m) == 0 || m["root"] == "" {
		return lockstore.ExplicitLock{}, lockstore.ErrNoSuchLock
	}
	num := func(f string) int64 {
		n, _ := strconv.ParseInt(m[f], 10, 64)
		return n
	}
	l := lockstore.ExplicitLock{
		Token:   token,
		Root:    m["root"],
		Href:    m["href"],
		Scope:   lockstore.Shared,
		Depth:   lockstore.DepthZero,
		Creator: m["creator"],
		Created: time.UnixMilli(num("created")),
		Timeout: time.Duration(num("timeout")) * time.Millisecond,
		Expires: time.UnixMilli(num("expires")),
	}
	if m["owner"] != "" {
		l.Owner = []byte(m["owner"])
	}
	if m["scope"] == "X" {
		l.Scope = lockstore.Exclusive
	}
	if m["depth"] == "I" {
		l.Depth = lockstore.DepthInfinity
	}
	return l, nil
}

var _ lockstore.LockStore = (*RedisLockStore)(nil)
