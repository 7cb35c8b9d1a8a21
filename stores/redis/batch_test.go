package redisstore

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/testsupport"
	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
)

// timedCalls is the number of calls of op that zone's metrics timed.
func timedCalls(t *testing.T, zone, op string) uint64 {
	t.Helper()
	metricsOnce.Do(initMetrics)
	var m dto.Metric
	if err := storeMetrics.seconds.WithLabelValues(zone, op).(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// scriptGate holds the next lone script call at the door until opened
// (see releaseGate), and records the size of every pipeline.
type scriptGate struct {
	releaseGate
	mu    sync.Mutex
	piped []int
}

func (g *scriptGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		g.mu.Lock()
		g.piped = append(g.piped, len(cmds))
		g.mu.Unlock()
		return next(ctx, cmds)
	}
}

// holdRelease takes a lock and starts releasing it, holding the release
// at the gate it returns (which records the pipelines from then on)
// until the gate opens; released is closed when the release returns.
func holdRelease(t *testing.T, l *Locker) (gate *scriptGate, released chan struct{}) {
	t.Helper()
	first := redisAcquire(t, l, "/first", lockstore.Exclusive)
	gate = &scriptGate{releaseGate: releaseGate{entered: make(chan struct{}), open: make(chan struct{})}}
	l.client.AddHook(gate)
	gate.armed.Store(true)
	released = make(chan struct{})
	go func() {
		first.Release()
		close(released)
	}()
	<-gate.entered
	return gate, released
}

func (l *Locker) queuedCalls() int {
	l.batch.mu.Lock()
	defer l.batch.mu.Unlock()
	return len(l.batch.pending)
}

// Acquires that arrive while another call is on its way to Redis go out
// together in one pipeline, each still one EVALSHA with its own reply:
// every one is granted, once, with its own fence. A script that Redis has
// forgotten meanwhile (SCRIPT FLUSH, as a restart or failover does) is
// loaded again rather than failing the batch. The metrics time the
// pipeline as an acquire, which is what each of its callers waited for.
func TestRedisConcurrentCallsPipelined(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Minute, timeout: 5 * time.Second})
	l.client.AddHook(metricsHook{zone: t.Name()})
	acquires := timedCalls(t, t.Name(), "acquire")
	gate, released := holdRelease(t, l)
	const n = 6
	type result struct {
		ls  lockstore.Lease
		err error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/p/" + string(rune('a'+i)), Kind: lockstore.Exclusive})
			results <- result{ls, err}
		}()
	}
	waitFor(t, 5*time.Second, "the acquires to queue", func() bool { return l.queuedCalls() == n })
	if err := redisClient(t, srv).ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	close(gate.open)
	<-released
	fences := map[int64]bool{}
	var held []lockstore.Lease
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatalf("acquire: %v", r.err)
		}
		held = append(held, r.ls)
		f := r.ls.(*Lease).Fence()
		if fences[f] {
			t.Fatalf("fence %d granted twice", f)
		}
		fences[f] = true
	}
	gate.mu.Lock()
	piped := gate.piped
	gate.mu.Unlock()
	if len(piped) != 1 || piped[0] != n {
		t.Fatalf("pipelines of %v, want one of %d", piped, n)
	}
	if s := redisStats(t, l); s.Held != n {
		t.Fatalf("stats %+v, want %d held", s, n)
	}
	if got, other := timedCalls(t, t.Name(), "acquire")-acquires, timedCalls(t, t.Name(), "pipeline"); got < 1 || other != 0 {
		t.Fatalf("metrics timed %d acquire calls and %d pipelines, want the pipeline timed as an acquire", got, other)
	}
	for i := range n {
		testsupport.Conflict(t, l, "/p/"+string(rune('a'+i)), lockstore.Shared)
	}
	for _, ls := range held {
		ls.Release()
	}
	if s := redisStats(t, l); s.Held != 0 {
		t.Fatalf("stats %+v after the releases, want none held", s)
	}
}

// An acquire whose caller gives up while it is queued is not sent: the
// caller's clean-up has already run, and a grant arriving after it would
// hold the key, for nobody, until its lease ran out.
func TestRedisQueuedCallOfLeftCallerNotSent(t *testing.T) {
	srv := startRedis(t)
	l := newRedisLocker(t, srv, t.Name(), redisOpts{lease: time.Minute, timeout: 5 * time.Second})
	gate, released := holdRelease(t, l)
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := l.Acquire(ctx, lockstore.Request{Key: "/left", Kind: lockstore.Exclusive})
		gaveUp <- err
	}()
	waitFor(t, 5*time.Second, "the acquire to queue", func() bool { return l.queuedCalls() == 1 })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("acquire: %v, want context.Canceled", err)
	}
	// The caller's clean-up (a release of the token it was to get) queues
	// behind it.
	waitFor(t, 5*time.Second, "the clean-up to queue", func() bool { return l.queuedCalls() == 2 })
	close(gate.open)
	<-released
	pipelines := func() []int {
		gate.mu.Lock()
		defer gate.mu.Unlock()
		return append([]int(nil), gate.piped...)
	}
	waitFor(t, 5*time.Second, "the queued calls to go out", func() bool { return len(pipelines()) == 1 })
	if p := pipelines(); p[0] != 1 {
		t.Fatalf("pipeline of %d calls, want the clean-up alone", p[0])
	}
	if s := redisStats(t, l); s.Held != 0 {
		t.Fatalf("stats %+v, want nothing held", s)
	}
}
