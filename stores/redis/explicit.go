package redisstore

// LockStore: explicit locks (LOCK, admin API) of a zone in Redis,
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

// LockStore is a LockStore in Redis.
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
type LockStore struct {
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

// NewLockStore returns the explicit lock store of zone in Redis.
// cfg supplies the key prefix and timeout. The client is not owned.
func NewLockStore(client redis.UniversalClient, zone string, cfg Config) (*LockStore, error) {
	if client == nil {
		return nil, errors.New("redis explicit lock store: nil client")
	}
	cfg = cfg.withDefaults()
	if strings.ContainsAny(cfg.KeyPrefix+zone, "{}") {
		return nil, fmt.Errorf("redis explicit lock store: key prefix %q and zone %q must not contain '{' or '}'", cfg.KeyPrefix, zone)
	}
	base := "{" + cfg.KeyPrefix + ":" + zone + "}:"
	s := &LockStore{
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
func (s *LockStore) SetBudget(maxBytes int64, perOwner int) {
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
func (s *LockStore) Usage(ctx context.Context, owner string) (bytes int64, owned int64, err error) {
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
func (s *LockStore) SetMax(maxLocks int) {
	if maxLocks <= 0 {
		maxLocks = lockstore.DefaultMaxLocks
	}
	s.max.Store(int64(maxLocks))
}

// SetLimits implements LockStore.
func (s *LockStore) SetLimits(maxLocks int, maxBytes int64, perOwner int) {
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
var xPurge = scriptTime + luaAncestors + lua("explicit_prelude")

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
var xCreateScript = redis.NewScript(xPurge + lua("explicit_create"))

// xRefreshScript restarts a lock's timeout. Safe to run twice. A lock
// whose index entries were purged (its hash outlives them by at most the
// millisecond of its expiry) is gone: refreshing it would bring back an
// entry that no longer counts against the budget.
//
// KEYS: xidx xexp hash; ARGV: timeout ms. Returns the hash fields, or
// false when the lock is gone.
var xRefreshScript = redis.NewScript(xPurge + lua("explicit_refresh"))

// xRemoveScript deletes a lock and keeps what it was under the tombstone
// key for a while, marked with the caller's nonce: a retry of the same
// call returns it again, another call finds no lock.
//
// KEYS: xidx xexp hash tombstone; ARGV: nonce, tombstone ttl ms. Returns
// the hash fields, or false.
var xRemoveScript = redis.NewScript(xPurge + lua("explicit_remove"))

// xRemoveUnderScript deletes up to a batch of the locks rooted at a key
// or below it. Running it twice removes nothing more.
//
// KEYS: xidx xexp; ARGV: 1 key, 2-3 BYLEX range below key ("" = none),
// 4 hash key prefix, 5 batch size. Returns {removed, more}, more being 1
// when the batch was full.
var xRemoveUnderScript = redis.NewScript(xPurge + lua("explicit_remove_under"))

// xAffectingScript returns the live locks whose scope includes a key and,
// when asked, those rooted below it.
//
// KEYS: xidx xexp; ARGV: 1 key, 2-3 BYLEX range below key ("" = not
// asked), 4 hash key prefix (the script derives the key's ancestors).
// Returns a list of hash field lists.
var xAffectingScript = redis.NewScript(xPurge + lua("explicit_affecting"))

func (s *LockStore) hashKey(token string) string { return s.base + "x:" + token }

func (s *LockStore) call(ctx context.Context, op string, sc *redis.Script, keys []string, args ...any) (any, error) {
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
func (s *LockStore) Create(ctx context.Context, l lockstore.ExplicitLock) (lockstore.ExplicitLock, error) {
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
func (s *LockStore) forget(token string) {
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
func (s *LockStore) Refresh(ctx context.Context, token string, timeout time.Duration) (lockstore.ExplicitLock, error) {
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
func (s *LockStore) Get(ctx context.Context, token string) (lockstore.ExplicitLock, error) {
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
func (s *LockStore) Remove(ctx context.Context, token string) (lockstore.ExplicitLock, error) {
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
func (s *LockStore) Affecting(ctx context.Context, key string, below bool) ([]lockstore.ExplicitLock, error) {
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
func (s *LockStore) RemoveUnder(ctx context.Context, key string) (int, error) {
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
func (s *LockStore) List(ctx context.Context) ([]lockstore.ExplicitLock, error) {
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

func (s *LockStore) listErr(ctx context.Context, err error) error {
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

var _ lockstore.LockStore = (*LockStore)(nil)
