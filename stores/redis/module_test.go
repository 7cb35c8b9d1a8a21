package redisstore

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// releaseGate is a go-redis hook that holds the next script call at the
// door until opened, so a test can act while a release is under way.
type releaseGate struct {
	passHooks
	armed   atomic.Bool
	entered chan struct{}
	open    chan struct{}
}

func (g *releaseGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "evalsha" && g.armed.CompareAndSwap(true, false) {
			close(g.entered)
			<-g.open
		}
		return next(ctx, cmd)
	}
}

// Closing a zone's Redis tables (a reload that changed the store's
// settings) waits for a release that is under way: the client must not
// be closed under it, or the lock would stay in Redis until its lease ran
// out and refuse the writes that follow.
func TestRedisZoneCloseWaitsForRelease(t *testing.T) {
	srv := startRedis(t)
	store := &Store{
		// The timeout outlasts the release held at the gate.
		Config: Config{Addresses: []string{srv.Addr}, Lease: caddy.Duration(time.Minute), Timeout: caddy.Duration(10 * time.Second)}.withDefaults(),
		logger: zap.NewNop(),
	}
	tables, err := store.OpenZone(t.Name(), false)
	if err != nil {
		t.Fatal(err)
	}
	l := tables.Locker.(*Locker)
	gate := &releaseGate{entered: make(chan struct{}), open: make(chan struct{})}
	l.client.AddHook(gate)
	ls := redisAcquire(t, l, "/doc", lockstore.Exclusive)

	gate.armed.Store(true)
	released := make(chan struct{})
	go func() {
		ls.Release()
		close(released)
	}()
	<-gate.entered
	if l.Idle() {
		t.Error("the locker reports idle while a release is under way")
	}
	// The closer runs under this label: once it waits in its poll, it
	// has looked and found the release under way. One that closed the
	// client never waits.
	label := t.Name()
	labelled(label, func() { err = tables.Close() })
	if err != nil {
		t.Fatal(err)
	}
	waitParked(t, label, "(*Store).OpenZone")
	close(gate.open)
	<-released

	// The lock is gone from Redis: another node takes it at once.
	other := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Minute})
	redisAcquire(t, other, "/doc", lockstore.Exclusive).Release()
	waitFor(t, 5*time.Second, "the idle tables to close", l.closed.Load)
}

func TestStoreErrClassified(t *testing.T) {
	srv := startRedis(t)
	c := redisClient(t, srv)
	ctx := context.Background()
	if err := c.Set(ctx, "s", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	err := c.ZAdd(ctx, "s", redis.Z{Member: "m"}).Err() // WRONGTYPE
	if got := storeErr(err); got != lockstore.ErrStoreFailed {
		t.Fatalf("WRONGTYPE: %v, want ErrStoreFailed", got)
	}
	err = c.Eval(ctx, "return redis.call('NOSUCHCOMMAND')", nil).Err()
	if got := storeErr(err); got != lockstore.ErrStoreFailed {
		t.Fatalf("script error %v: %v, want ErrStoreFailed", err, got)
	}
	srv.Stop()
	err = c.Ping(ctx).Err()
	if got := storeErr(err); got != lockstore.ErrStoreUnavailable {
		t.Fatalf("server down %v: %v, want ErrStoreUnavailable", err, got)
	}
}
