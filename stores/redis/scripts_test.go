package redisstore

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/testsupport"
	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/redis/go-redis/v9"
)

// go-redis may send a script again after a lost reply: a second run with
// the same tokens must neither grant twice nor fail.
func TestRedisScriptIdempotent(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	ctx := context.Background()
	tok := newToken(lockstore.Exclusive)
	args := l.acquireArgs(lockstore.Request{Key: "/i", Kind: lockstore.Exclusive}, tok, "")
	r1, err := l.runAcquire(ctx, args)
	if err != nil || !r1.granted {
		t.Fatalf("first run: %+v, %v", r1, err)
	}
	r2, err := l.runAcquire(ctx, args)
	if err != nil || !r2.granted || r2.fence != r1.fence {
		t.Fatalf("second run: %+v, %v (first fence %d)", r2, err, r1.fence)
	}
	if s := redisStats(t, l); s.Held != 1 {
		t.Fatalf("stats = %+v", s)
	}
	// A queued waiter keeps one place when its attempt is repeated.
	wtok := newToken(lockstore.Exclusive)
	wargs := l.acquireArgs(lockstore.Request{Key: "/i", Kind: lockstore.Exclusive}, newToken(lockstore.Exclusive), wtok)
	for range 2 {
		r, err := l.runAcquire(ctx, wargs)
		if err != nil || r.granted || !r.queued {
			t.Fatalf("waiter run: %+v, %v", r, err)
		}
	}
	if s := redisStats(t, l); s.Waiting != 1 {
		t.Fatalf("stats = %+v", s)
	}
	l.leave("/i", wtok)
	l.leave("/i", wtok)
	keys := l.holderKeys()
	for i, want := range []int64{1, 0} {
		n, err := releaseScript.Run(ctx, l.client, keys, "/i\x00"+tok, "/i", l.channel).Int64()
		if err != nil || n != want {
			t.Fatalf("release run %d: %d, %v", i, n, err)
		}
	}
	if s := redisStats(t, l); s.Held != 0 || s.Waiting != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func commandCalls(t *testing.T, c redis.UniversalClient) map[string]int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, m := range regexp.MustCompile(`cmdstat_(\w+):calls=(\d+)`).FindAllStringSubmatch(info, -1) {
		calls[m[1]], _ = strconv.Atoi(m[2])
	}
	return calls
}

// An uncontended acquire and its release each cost one script call.
func TestRedisOneRoundTrip(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Minute})
	redisAcquire(t, l, "/warm", lockstore.Exclusive).Release() // loads the scripts
	ctx := context.Background()
	if err := l.client.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	ls := redisAcquire(t, l, "/one", lockstore.Exclusive)
	calls := commandCalls(t, l.client)
	if calls["evalsha"] != 1 || calls["eval"] != 0 {
		t.Fatalf("acquire: command stats %v", calls)
	}
	ls.Release()
	calls = commandCalls(t, l.client)
	if calls["evalsha"] != 2 || calls["eval"] != 0 {
		t.Fatalf("release: command stats %v", calls)
	}
}

// netInput is the number of bytes srv has received from all its clients.
func netInput(t *testing.T, c redis.UniversalClient) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`total_net_input_bytes:(\d+)`).FindStringSubmatch(info)
	if m == nil {
		t.Fatalf("no total_net_input_bytes in INFO stats:\n%s", info)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// deepRedisKey is a "/"-rooted key of depth segments of seg bytes each.
func deepRedisKey(depth, seg int) string {
	return strings.Repeat("/"+strings.Repeat("s", seg-1), depth)
}

// bytesPerAcquire is what Redis receives for one uncontended acquire of
// key (scripts loaded), as INFO counts it, less what the INFO call costs.
func bytesPerAcquire(t *testing.T, l *Locker, key string) (int64, *Lease) {
	t.Helper()
	before := netInput(t, l.client)
	idle := netInput(t, l.client) - before // one INFO call
	before = netInput(t, l.client)
	ls := redisAcquire(t, l, key, lockstore.Exclusive)
	return netInput(t, l.client) - before - idle, ls
}

// A deep key reaches Redis once per attempt, not with each of its
// ancestors in full: a key of 250 segments within the key limit costs
// about its own length, where sending the ancestors cost ~125 times that.
func TestRedisDeepKeySentOnce(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{hierarchy: true, lease: time.Minute})
	redisAcquire(t, l, "/warm", lockstore.Exclusive).Release() // loads the scripts
	key := deepRedisKey(250, 16)                               // 4000 bytes
	n, ls := bytesPerAcquire(t, l, key)
	t.Logf("acquire of a %d-byte key of 250 segments: %d bytes to Redis", len(key), n)
	if max := int64(len(key) + 1024); n > max {
		t.Fatalf("acquiring a %d-byte key sent %d bytes to Redis, want at most %d", len(key), n, max)
	}
	if ls.Key() != key {
		t.Fatalf("a key within the limit was locked as %q", ls.Key())
	}
	// The script still finds the conflicts on ancestors and below.
	testsupport.Conflict(t, l, key[:len(key)/2], lockstore.Exclusive)
	testsupport.Conflict(t, l, key+"/below", lockstore.Shared)
	ls.Release()
}

// A key longer than MaxKeyBytes is locked as its longest ancestor
// within the limit: the bytes Redis gets (and the work of the script)
// stay bounded, and two such keys under that ancestor conflict, which is
// safe, while a write beside it passes.
func TestRedisLongKeyCut(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{hierarchy: true, lease: time.Minute})
	redisAcquire(t, l, "/warm", lockstore.Exclusive).Release()
	key := deepRedisKey(200, 75) // 15 000 bytes, as a path within Caddy's default header limit
	n, ls := bytesPerAcquire(t, l, key)
	t.Logf("acquire of a %d-byte key of 200 segments: %d bytes to Redis", len(key), n)
	if max := int64(MaxKeyBytes + 1024); n > max {
		t.Fatalf("acquiring a %d-byte key sent %d bytes to Redis, want at most %d", len(key), n, max)
	}
	want := key[:strings.LastIndexByte(key[:MaxKeyBytes+1], '/')]
	if ls.Key() != want {
		t.Fatalf("a %d-byte key was locked as %d bytes, want its %d-byte ancestor", len(key), len(ls.Key()), len(want))
	}
	other := want + deepRedisKey(100, 100)
	if ce := testsupport.Conflict(t, l, other, lockstore.Shared); ce.Key != want {
		t.Fatalf("another key cut to the same ancestor conflicts on %d bytes, want %d", len(ce.Key), len(want))
	}
	testsupport.Conflict(t, l, want, lockstore.Shared)
	redisAcquire(t, l, "/beside"+deepRedisKey(3, 75), lockstore.Exclusive).Release()
	ls.Release()
	redisAcquire(t, l, other, lockstore.Exclusive).Release()
}

func TestCutKey(t *testing.T) {
	for _, c := range []struct {
		key  string
		max  int
		want string
		cut  bool
	}{
		{"/a/b/c", 10, "/a/b/c", false},
		{"/a/b/c", 5, "/a/b", true},
		{"/a/b/c", 4, "/a/b", true},
		{"/a/b/c", 3, "/a", true},
		{"/abcdef", 3, "/", true},
		{"/a/", 2, "/a", true},
		{"abcdef", 3, "abcdef", false},
	} {
		got, cut := cutKey(c.key, c.max)
		if got != c.want || cut != c.cut {
			t.Errorf("cutKey(%q, %d) = %q, %v; want %q, %v", c.key, c.max, got, cut, c.want, c.cut)
		}
		if cut && !lockstore.Below(c.key, got) {
			t.Errorf("cutKey(%q, %d) = %q is not an ancestor", c.key, c.max, got)
		}
	}
}

// The explicit lock store, too, derives ancestors in its scripts: a deep
// key costs a write's check and a LOCK about its own length, not the sum
// of its ancestors'; and the ancestors are still found.
func TestRedisStoreDeepKeySentOnce(t *testing.T) {
	srv := startRedis(t)
	s := newRedisLockStore(t, srv, t.Name())
	c := redisClient(t, srv)
	ctx := context.Background()
	key := deepRedisKey(250, 16) // 4000 bytes
	top := testsupport.MustCreate(t, s, testsupport.XLock(key[:16], lockstore.Exclusive, lockstore.DepthInfinity))
	if _, err := s.Affecting(ctx, "/warm", true); err != nil { // loads the script
		t.Fatal(err)
	}
	before := netInput(t, c)
	idle := netInput(t, c) - before
	before = netInput(t, c)
	ls, err := s.Affecting(ctx, key, true)
	n := netInput(t, c) - before - idle
	t.Logf("explicit locks affecting a %d-byte key of 250 segments: %d bytes to Redis", len(key), n)
	if err != nil || len(ls) != 1 || ls[0].Token != top.Token {
		t.Fatalf("affecting %d-byte key: %v, %v; want the lock on its ancestor", len(key), testsupport.Roots(ls), err)
	}
	// The key and the bounds of the range below it.
	if max := int64(3*len(key) + 1024); n > max {
		t.Fatalf("checking a %d-byte key sent %d bytes to Redis, want at most %d", len(key), n, max)
	}
	l := testsupport.XLock(key, lockstore.Shared, lockstore.DepthZero)
	l.Token = "deep-token"
	if _, err := s.Create(ctx, l); !errors.As(err, new(*lockstore.LockConflictError)) {
		t.Fatalf("LOCK below an exclusive infinite lock: %v, want a conflict", err)
	}
}

// A lease's release tells Redis how long it was held: the release script
// then reads neither the server clock nor the grant time, the two
// commands that made up a fifth of its cost. The undoing of an
// unanswered acquire, which does not know, still measures it in Redis.
func TestRedisReleaseReadsNoClock(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Minute})
	redisAcquire(t, l, "/warm", lockstore.Exclusive).Release() // loads the scripts
	ctx := context.Background()
	ls := redisAcquire(t, l, "/one", lockstore.Exclusive)
	if err := l.client.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	ls.Release()
	if calls := commandCalls(t, l.client); calls["evalsha"] != 1 || calls["time"] != 0 || calls["hget"] != 0 || calls["hset"] != 1 {
		t.Fatalf("release: command stats %v, want one script call that reads no clock and no grant time but records the hold", calls)
	}
	ls = redisAcquire(t, l, "/two", lockstore.Exclusive)
	if err := l.client.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	l.release(ls.member, "/two", -1)
	if calls := commandCalls(t, l.client); calls["time"] != 1 || calls["hget"] != 1 || calls["hset"] != 1 {
		t.Fatalf("release of an unknown hold: command stats %v, want the clock and the grant time read and the hold recorded", calls)
	}
	ls.Release() // stops its renewal; Redis has nothing left to do
}

// A grant writes the server clock's µs as TIME's own digits, padded, not
// through string.format: a clock whose µs part has fewer than six digits
// must still give the fence and grant time of the whole µs count. The
// script runs as it is, with TIME answering a fixed instant.
func TestRedisGrantClockDigits(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{})
	ctx := context.Background()
	// A local redis shadows the global one for the whole script.
	fake := "local redis = setmetatable({call = function(c, ...)\n" +
		"  if c == 'TIME' then return {'1700000000', '42'} end\n" +
		"  return redis.call(c, ...)\n" +
		"end}, {__index = redis})\n"
	script := redis.NewScript(fake + acquireSource)
	keys := []string{l.kExp, l.kHeld, l.kInfo, l.kMeta, l.kQueue, l.kWexp, l.kWseq, l.kXidx}
	tok := newToken(lockstore.Exclusive)
	v, err := script.Run(ctx, l.client, keys, l.acquireArgs(lockstore.Request{Key: "/c", Kind: lockstore.Exclusive}, tok, "")...).Slice()
	if err != nil {
		t.Fatal(err)
	}
	const us = 1700000000000042
	if len(v) != 3 || v[0] != int64(1) || v[1] != int64(us) {
		t.Fatalf("grant = %v, want {1, %d, 0}: the fence is the clock in µs", v, us)
	}
	if got, _ := l.client.HGet(ctx, l.kInfo, "/c\x00"+tok).Result(); got != "1700000000000042 1700000000000042" {
		t.Fatalf("grant time and fence recorded as %q", got)
	}
	// The next grant at the same instant takes the counter's next value.
	tok = newToken(lockstore.Exclusive)
	v, err = script.Run(ctx, l.client, keys, l.acquireArgs(lockstore.Request{Key: "/d", Kind: lockstore.Exclusive}, tok, "")...).Slice()
	if err != nil || len(v) != 3 || v[1] != int64(us+1) {
		t.Fatalf("second grant = %v, %v, want fence %d", v, err, us+1)
	}
	if got, _ := l.client.HGet(ctx, l.kInfo, "/d\x00"+tok).Result(); got != "1700000000000042 1700000000000043" {
		t.Fatalf("second grant recorded as %q", got)
	}
}
