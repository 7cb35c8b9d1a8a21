package redisstore

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

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
//
// Its fast path (lua/acquire.lua) grants a free key with nobody queued on
// it without purging expired entries; everything else runs on to the
// purge of expired entries and the full logic (lua/acquire_slow.lua).
// Expired entries left behind are harmless meanwhile (every check skips
// them) and bounded: a table that looks full takes the slow path.
var acquireScript = redis.NewScript(acquireSource)

var acquireSource = scriptTime + luaAncestors + lua("acquire") + lua("acquire_slow")

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
// lockstore.Ancestors defines them: "/" covers every other "/"-rooted key, other
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

func (l *Locker) acquireArgs(req lockstore.Request, tok, wtok string) []any {
	hier := ""
	if l.hierarchy {
		hier = "1"
	}
	return []any{
		req.Key, tok, l.lease.Milliseconds(), l.maxLocks.Load(),
		wtok, l.waiterTTL.Milliseconds(), l.maxWaiters.Load(), l.channel, hier,
	}
}

func (l *Locker) runAcquire(ctx context.Context, args []any) (acquireResult, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	keys := []string{l.kExp, l.kHeld, l.kInfo, l.kMeta, l.kQueue, l.kWexp, l.kWseq, l.kXidx}
	v, err := l.batch.run(ctx, acquireScript, keys, args...).Slice()
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
// lease is a *Lease. With hierarchy, a key longer than
// MaxKeyBytes is locked as its longest ancestor within the limit:
// the lease's Key tells which.
func (l *Locker) Acquire(ctx context.Context, req lockstore.Request) (lockstore.Lease, error) {
	if req.Kind != lockstore.Shared && req.Kind != lockstore.Exclusive {
		return nil, fmt.Errorf("redis lock acquire %q: invalid lock kind %v", req.Key, req.Kind)
	}
	l.calls.Add(1)
	defer l.calls.Add(-1)
	if strings.IndexByte(req.Key, 0) >= 0 {
		return nil, fmt.Errorf("redis lock acquire %q: key contains a NUL byte", req.Key)
	}
	if l.hierarchy {
		// The script walks every ancestor too: refuse what the memory table does.
		if err := lockstore.CheckDepth(req.Key); err != nil {
			return nil, fmt.Errorf("redis lock acquire: %w", err)
		}
		if cut, ok := cutKey(req.Key, MaxKeyBytes); ok {
			l.noteCut(req.Key, cut)
			req.Key = cut
		}
	}
	if l.closed.Load() {
		return nil, fmt.Errorf("redis lock acquire %q: %w: locker closed", req.Key, lockstore.ErrStoreUnavailable)
	}
	tok := newToken(req.Kind)
	var wtok string
	var w *waiter
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
			ls := &Lease{l: l, key: req.Key, member: req.Key + "\x00" + tok, fence: res.fence, explicit: res.explicit,
				queued: deadline != nil, lost: make(chan struct{}), granted: sent}
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

// MaxKeyBytes is the longest key a zone with hierarchy locks in
// Redis as it is. The script looks up every ancestor of a key, which costs
// Redis (single-threaded, serving every node) the sum of their lengths on
// every attempt: for a long and deep key, megabytes, long enough to time
// the call out and, under fail_open, to pass unlocked. A longer key is
// locked as its longest ancestor within the limit: that merges deep keys
// into one lock, which can only add conflicts, never miss one. 4096 is
// Linux's PATH_MAX; few real paths come near it.
const MaxKeyBytes = 4096

// cutKey returns key's longest ancestor (as lockstore.Ancestors defines them) of
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
func (l *Locker) noteCut(key, cut string) {
	n := l.cuts.Add(1)
	now := time.Now().UnixNano()
	last := l.cutLogged.Load()
	if now-last < int64(cutLogEvery) || !l.cutLogged.CompareAndSwap(last, now) {
		return
	}
	l.cuts.Add(-n)
	const show = 256
	caddy.Log().Named("http.handlers.lock.stores.redis").Warn("lock keys longer than the limit locked as their ancestor",
		zap.String("zone", l.zone), zap.Int64("keys", n), zap.Int("limit_bytes", MaxKeyBytes),
		zap.Int("key_bytes", len(key)), zap.String("key_start", key[:min(len(key), show)]),
		zap.Int("locked_as_bytes", len(cut)))
}

// leaveScript removes a waiter from its queue; if it was the head, the
// next waiter is told that it is the head now.
//
// KEYS: q wexp wseq; ARGV: key, waiter token, channel.
var leaveScript = redis.NewScript(lua("leave"))

// leave takes a waiter out of its queue; if that fails the entry expires
// on its own after waiterTTL.
func (l *Locker) leave(key, wtok string) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	_ = leaveScript.Run(ctx, l.client, []string{l.kQueue, l.kWexp, l.kWseq}, key, wtok, l.channel).Err()
}

// abandon undoes, in the background, whatever a failed acquire call may
// have done in Redis, so that an unanswered grant does not block the key
// until its lease runs out, nor an unanswered queue entry head the key's
// queue until it expires. Both are undone again after a timeout in case
// the abandoned call reaches Redis after the first clean-up.
func (l *Locker) abandon(key, tok, wtok string) {
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
			l.release(member, key, -1)
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
