package redisstore

// Listing the in-flight locks of a Redis zone, for the admin API: every
// node sees the locks that any node holds.

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/redis/go-redis/v9"
)

// listPage is the COUNT of each ZSCAN step of a listing: it bounds
// the work of one script call, so that a listing never holds Redis up
// for long, whatever the size of the zone.
const listPage = 256

// livePageScript reads one ZSCAN step of a sorted set whose scores are
// expiry times (ms, server clock) and returns the entries that have not
// expired, each with its value in a hash when one is given.
//
// KEYS: the sorted set [, the hash]; ARGV: cursor, count. Returns {next
// cursor, member, value, member, value, …}, value being "" without a hash.
var livePageScript = redis.NewScript(scriptTime + lua("held_page"))

// HeldLocks lists the zone's in-flight locks as Redis holds them, whoever
// holds them: per key its kind, its holders, the earliest grant among them
// (by the Redis server's clock) and the waiters queued on it. Leases that
// have run out are left out even before a grant purges them.
//
// The zone's holders and waiters are walked with ZSCAN, a bounded step
// per call, each call bounded by the timeout; the table itself is bounded
// by max_locks. The list is consistent per step only: a lock taken or
// released meanwhile may be missing or listed.
func (l *Locker) HeldLocks(ctx context.Context) ([]lockstore.HeldLock, error) {
	byKey := map[string]*lockstore.HeldLock{}
	seen := map[string]bool{} // ZSCAN may return an entry twice
	err := l.scanLive(ctx, l.kExp, l.kInfo, func(member, info string) {
		key, tok, ok := splitMember(member)
		if !ok || seen[member] {
			return
		}
		seen[member] = true
		h := byKey[key]
		if h == nil {
			h = &lockstore.HeldLock{Key: key, Kind: lockstore.Shared}
			byKey[key] = h
		}
		h.Holders++
		if tok[0] == 'X' {
			h.Kind = lockstore.Exclusive
		}
		// info is "grant-µs fence".
		us, _, _ := strings.Cut(info, " ")
		if n, err := strconv.ParseInt(us, 10, 64); err == nil {
			if s := time.UnixMicro(n); h.Since.IsZero() || s.Before(h.Since) {
				h.Since = s
			}
		}
	})
	if err != nil {
		return nil, l.listErr(ctx, err)
	}
	clear(seen)
	err = l.scanLive(ctx, l.kWexp, "", func(member, _ string) {
		key, _, ok := splitMember(member)
		if h := byKey[key]; ok && h != nil && !seen[member] {
			seen[member] = true
			h.Waiting++
		}
	})
	if err != nil {
		return nil, l.listErr(ctx, err)
	}
	out := make([]lockstore.HeldLock, 0, len(byKey))
	for _, h := range byKey {
		out = append(out, *h)
	}
	slices.SortFunc(out, func(a, b lockstore.HeldLock) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// scanLive calls fn for every live entry of the sorted set set (holders
// or waiters), with its value in hash ("" for none).
func (l *Locker) scanLive(ctx context.Context, set, hash string, fn func(member, value string)) error {
	keys := []string{set}
	if hash != "" {
		keys = append(keys, hash)
	}
	cursor := "0"
	for {
		cctx, cancel := context.WithTimeout(ctx, l.timeout)
		v, err := livePageScript.Run(cctx, l.client, keys, cursor, listPage).Slice()
		cancel()
		if err != nil {
			return err
		}
		next, ok := v[0].(string)
		if !ok || len(v)%2 != 1 {
			return &badReplyError{v}
		}
		cursor = next
		for i := 1; i < len(v); i += 2 {
			m, _ := v[i].(string)
			val, _ := v[i+1].(string)
			fn(m, val)
		}
		if cursor == "0" {
			return nil
		}
	}
}

func (l *Locker) listErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("redis in-flight lock list: %w", ctx.Err())
	}
	return fmt.Errorf("redis in-flight lock list: %w: %w", storeErr(err), err)
}

// splitMember splits a holder or waiter member, "key\0token", the token
// starting with its kind letter.
func splitMember(m string) (key, token string, ok bool) {
	i := strings.LastIndexByte(m, 0)
	if i < 0 || i == len(m)-1 {
		return "", "", false
	}
	return m[:i], m[i+1:], true
}
