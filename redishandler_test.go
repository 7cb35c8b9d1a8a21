package caddylock

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	redisstore "github.com/caddy-lock/caddy-lock/stores/redis"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// redisSite is a site block whose lock zone lives in the test's Redis,
// with a short lease and timeout; store and lock add lines to the store
// and lock blocks. The backend's reply carries {http.lock.fence} and
// {http.lock.result} as X-Fence and X-Result.
func redisSite(srv *testRedis, zone, store, lock string) string {
	return fmt.Sprintf(`lock {
	zone %s
	%s
	store redis {
		address %s
		lease 1s
		timeout 200ms
		%s
	}
}
reverse_proxy {backend} {
	header_down X-Fence {http.lock.fence}
	header_down X-Result {http.lock.result}
}`, zone, lock, srv.Addr, store)
}

// redisClient is a plain client of the test's Redis, to look at and
// disturb what the lock store keeps there.
func redisClient(t *testing.T, srv *testRedis) redis.UniversalClient {
	t.Helper()
	c, err := redisstore.NewClient(redisstore.Config{Addresses: []string{srv.Addr}, Timeout: caddy.Duration(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// heldInRedis counts the zone's held locks as Redis has them.
func heldInRedis(t *testing.T, c redis.UniversalClient, zone string) int64 {
	t.Helper()
	n, err := c.ZCard(context.Background(), "{"+redisstore.DefaultKeyPrefix+":"+zone+"}:exp").Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// metricValue reads one sample from a Prometheus text exposition; 0 when
// it is absent. The collectors live as long as the process, so tests
// compare values before and after.
func metricValue(t *testing.T, metricsURL, sample string) float64 {
	t.Helper()
	body := mustDo(t, http.MethodGet, metricsURL, nil, http.StatusOK).body
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: %v", sample, err)
	}
	return v
}

var resumeGates atomic.Int64

// assertLockingResumes waits until writes to url are locked again (after
// Redis came back), then checks that a write in flight refuses another.
func assertLockingResumes(t *testing.T, url string, b *backend) {
	t.Helper()
	waitFor(t, 5*time.Second, "locking to resume", func() bool {
		return do(http.DefaultClient, http.MethodPut, url+"/doc", nil).header.Get("X-Result") == resultAcquired
	})
	id := fmt.Sprintf("resume-%d", resumeGates.Add(1)) // a gate opens once
	done := holdWrite(t, b, http.MethodPut, url+"/doc", id)
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	b.open(id)
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the held write: %d %s", r.status, r.body)
	}
}

// assertHeldIn checks that a write to url's /doc, held at the backend
// under the hold id, has its lock in the Redis that c talks to, refuses
// a conflicting write with 423 and lets a write elsewhere pass; it then
// lets the held write finish and returns its result.
func assertHeldIn(t *testing.T, url string, b *backend, c redis.UniversalClient, zone, id string) result {
	t.Helper()
	held := holdWrite(t, b, http.MethodPut, url+"/doc", id)
	if n := heldInRedis(t, c, zone); n != 1 {
		t.Fatalf("Redis holds %d locks of zone %s, want 1 (hold %s)", n, zone, id)
	}
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	mustDo(t, http.MethodPut, url+"/other", nil, http.StatusOK)
	b.open(id)
	r := <-held
	if r.status != http.StatusOK {
		t.Fatalf("the held write: %d %s", r.status, r.body)
	}
	return r
}

// A Redis with ACL users only and the store's username, password and db
// from the Caddyfile: the locks are taken as that user, in that database.
func TestRedisHandlerACLUserAndDB(t *testing.T) {
	srv := startRedis(t, "--user", "default", "off", "--user", "caddy", "on", ">s3cret", "~*", "&*", "+@all")
	b := newBackend(t)
	url := startCaddy(t, redisSite(srv, "racl", "username caddy\n\t\tpassword s3cret\n\t\tdb 3", ""), b)
	conf := redisstore.Config{Addresses: []string{srv.Addr}, Username: "caddy", Password: "s3cret", Timeout: caddy.Duration(time.Second)}
	db0, err := redisstore.NewClient(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db0.Close() })
	conf.DB = 3
	db3, err := redisstore.NewClient(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db3.Close() })
	assertHeldIn(t, url, b, db3, "racl", "acl")
	if keys, err := db0.Keys(context.Background(), "*racl*").Result(); err != nil || len(keys) != 0 {
		t.Fatalf("database 0 holds %q (%v)", keys, err)
	}
}

// Writes through a Caddy whose zone is in Redis: a conflicting write is
// refused while the first is in flight, and each grant carries a fresh
// fencing number to the backend, which a client cannot forge.
func TestRedisHandlerConflictAndFence(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	url := startCaddy(t, redisSite(srv, "rfence", "", "fence_header X-Lock-Fence"), b)

	first := holdWrite(t, b, http.MethodPut, url+"/doc", "w", "X-Lock-Fence", "999999")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/doc", nil), "/doc")
	assertLocked(t, do(http.DefaultClient, http.MethodDelete, url+"/./doc/", nil), "/doc")
	b.open("w")
	r := <-first
	if r.status != http.StatusOK || r.header.Get("X-Result") != resultAcquired {
		t.Fatalf("first write: %d %v %s", r.status, r.header, r.body)
	}
	f1, err := strconv.ParseInt(r.header.Get("X-Got-Fence"), 10, 64)
	if err != nil || f1 == 999999 || r.header.Get("X-Fence") != r.header.Get("X-Got-Fence") {
		t.Fatalf("first write: backend got fence %q, placeholder %q", r.header.Get("X-Got-Fence"), r.header.Get("X-Fence"))
	}
	r = mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	if f2, _ := strconv.ParseInt(r.header.Get("X-Got-Fence"), 10, 64); f2 <= f1 {
		t.Fatalf("second grant's fence %d is not above the first's %d", f2, f1)
	}
	// A request that takes no lock gets no fence, and not the client's.
	r = mustDo(t, http.MethodGet, url+"/doc", map[string]string{"X-Lock-Fence": "999999"}, http.StatusOK)
	if r.header.Get("X-Got-Fence") != "" || r.header.Get("X-Fence") != "" {
		t.Fatalf("a read carried fence %q / %q", r.header.Get("X-Got-Fence"), r.header.Get("X-Fence"))
	}
	if writes, _, overlaps := b.counts(); writes != 2 || overlaps != 0 {
		t.Fatalf("backend: %d writes, %d overlapping; want 2, 0", writes, overlaps)
	}
	if n := heldInRedis(t, redisClient(t, srv), "rfence"); n != 0 {
		t.Fatalf("%d locks left in Redis", n)
	}
}

// Redis down: fail_closed answers 503 with Retry-After and a problem
// document at once; when Redis is back, locking works again without a
// reload.
func TestRedisHandlerFailClosed(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	url := startCaddy(t, redisSite(srv, "rclosed", "", ""), b)
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)

	srv.Stop()
	start := time.Now()
	r := do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusal took %s with a 200ms timeout", d)
	}
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" ||
		r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("write with Redis down: %d %v %s", r.status, r.header, r.body)
	}
	var p problem
	if err := json.Unmarshal([]byte(r.body), &p); err != nil || p.Status != 503 || p.Title != "Lock store unavailable" {
		t.Fatalf("problem document %s (%v)", r.body, err)
	}
	// Reads take no lock and pass.
	mustDo(t, http.MethodGet, url+"/doc", nil, http.StatusOK)
	if writes, _, _ := b.counts(); writes != 1 {
		t.Fatalf("backend saw %d writes, want 1: a refused write reached it", writes)
	}

	srv.Start()
	assertLockingResumes(t, url, b)
}

// Redis down: fail_open passes writes unlocked and counts them; the
// Redis calls' failures and times are in the metrics.
func TestRedisHandlerFailOpen(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	admin := freePort(t)
	url := loadCaddy(t, freePort(t), fmt.Sprintf("admin 127.0.0.1:%d\nmetrics", admin),
		redisSite(srv, "ropen", "on_error fail_open", ""), b)
	t.Cleanup(func() { _ = caddy.Stop() })
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", admin)
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	if v := metricValue(t, metrics, `caddy_lock_redis_seconds_count{op="acquire",zone="ropen"}`); v < 1 {
		t.Fatalf("acquire round trips not timed: %v", v)
	}

	failOpen := `caddy_lock_requests_total{result="fail_open",zone="ropen"}`
	acquireErrors := `caddy_lock_redis_errors_total{op="acquire",zone="ropen"}`
	failOpen0, acquireErrors0 := metricValue(t, metrics, failOpen), metricValue(t, metrics, acquireErrors)
	srv.Stop()
	for range 3 {
		r := mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
		if r.header.Get("X-Result") != resultFailOpen || r.header.Get("X-Fence") != "" {
			t.Fatalf("write with Redis down: result %q fence %q", r.header.Get("X-Result"), r.header.Get("X-Fence"))
		}
	}
	if writes, _, _ := b.counts(); writes != 4 {
		t.Fatalf("backend saw %d writes, want 4", writes)
	}
	if v := metricValue(t, metrics, failOpen) - failOpen0; v != 3 {
		t.Fatalf("fail_open passes counted: %v, want 3", v)
	}
	if v := metricValue(t, metrics, acquireErrors) - acquireErrors0; v < 3 {
		t.Fatalf("acquire errors counted: %v, want at least 3", v)
	}

	srv.Start()
	assertLockingResumes(t, url, b)
}

// A lease lost before the upstream request is sent cancels it: the write
// never reaches the backend, even when the backend comes up while
// reverse_proxy is still retrying.
func TestRedisHandlerLeaseLostBeforeSent(t *testing.T) {
	srv := startRedis(t)
	c := redisClient(t, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := ln.Addr().String()
	ln.Close() // down for now
	admin := freePort(t)
	site := fmt.Sprintf(`lock {
	zone rlost
	store redis {
		address %s
		lease 900ms
		timeout 200ms
	}
}
reverse_proxy %s {
	lb_try_duration 4s
	lb_try_interval 50ms
}`, srv.Addr, upstream)
	url := loadCaddy(t, freePort(t), fmt.Sprintf("admin 127.0.0.1:%d\nmetrics", admin), site, nil)
	t.Cleanup(func() { _ = caddy.Stop() })

	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", admin)
	lost := `caddy_lock_leases_lost_total{zone="rlost"}`
	lost0 := metricValue(t, metrics, lost)
	done := make(chan result, 1)
	go func() { done <- do(http.DefaultClient, http.MethodPut, url+"/doc", nil) }()
	waitFor(t, 5*time.Second, "the lock to be held", func() bool { return heldInRedis(t, c, "rlost") == 1 })
	// The lock vanishes from Redis (as after a failover to a replica
	// that never saw it); the next renewal finds it gone.
	if err := c.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the loss to be noticed", func() bool {
		return metricValue(t, metrics, lost) == lost0+1
	})
	// Now the upstream comes up; the cancelled request must not reach it.
	var reached atomic.Int32
	ln, err = net.Listen("tcp", upstream)
	if err != nil {
		t.Fatal(err)
	}
	srvUp := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached.Add(1) })}
	go srvUp.Serve(ln)
	t.Cleanup(func() { srvUp.Close() })
	r := <-done
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("a write whose lease was lost: %d %v (%v)", r.status, r.header, r.err)
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("the upstream received %d requests after the lease was lost", n)
	}
}

// A lease lost while the upstream request is in flight does not cut the
// write short (that would leave it half done); it is counted and logged.
func TestRedisHandlerLeaseLostAfterSent(t *testing.T) {
	srv := startRedis(t)
	c := redisClient(t, srv)
	b := newBackend(t)
	admin := freePort(t)
	url := loadCaddy(t, freePort(t), fmt.Sprintf("admin 127.0.0.1:%d\nmetrics", admin),
		strings.Replace(redisSite(srv, "rlost2", "", ""), "lease 1s", "lease 900ms", 1), b)
	t.Cleanup(func() { _ = caddy.Stop() })
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", admin)
	lost := `caddy_lock_leases_lost_total{zone="rlost2"}`
	lost0 := metricValue(t, metrics, lost)
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	if err := c.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the loss to be noticed", func() bool {
		return metricValue(t, metrics, lost) == lost0+1
	})
	b.open("w")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the in-flight write: %d %s", r.status, r.body)
	}
	b.mu.Lock()
	cancelled := b.cancelled["w"]
	b.mu.Unlock()
	if cancelled {
		t.Fatal("the in-flight write was cancelled at the backend")
	}
}

// clientCommands returns the commands that clients sent to srv while fn
// ran, as MONITOR shows them: by name, without the commands that scripts
// ran inside Redis (which INFO commandstats would count as well).
func clientCommands(t *testing.T, srv *testRedis, fn func()) []string {
	t.Helper()
	c := redisClient(t, srv)
	if err := c.Ping(context.Background()).Err(); err != nil { // connects before MONITOR
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("MONITOR: %q %v", line, err)
	}
	fn()
	const end = "caddy-lock-monitor-end"
	if err := c.Echo(context.Background(), end).Err(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	// +1700000000.000000 [0 127.0.0.1:4567] "evalsha" "…" …
	re := regexp.MustCompile(`^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"`)
	var cmds []string
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("reading MONITOR: %v (so far %v)", err, cmds)
		}
		if strings.Contains(line, end) {
			return cmds
		}
		if m := re.FindStringSubmatch(line); m != nil && m[1] != "lua" {
			cmds = append(cmds, strings.ToLower(m[2]))
		}
	}
}

// A locked write costs Redis one acquire and one release script call,
// and nothing else.
func TestRedisHandlerRoundTrips(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	url := startCaddy(t, strings.Replace(redisSite(srv, "rtrips", "", ""), "lease 1s", "lease 1m", 1), b)
	mustDo(t, http.MethodPut, url+"/warm", nil, http.StatusOK) // loads the scripts
	const n = 10
	cmds := clientCommands(t, srv, func() {
		for i := range n {
			mustDo(t, http.MethodPut, fmt.Sprintf("%s/doc%d", url, i), nil, http.StatusOK)
		}
	})
	if len(cmds) != 2*n || slices.ContainsFunc(cmds, func(c string) bool { return c != "evalsha" }) {
		t.Fatalf("%d locked writes sent %v; want %d evalsha and nothing else", n, cmds, 2*n)
	}
}

// zoneKeys lists the pool keys of a zone's tables.
func zoneKeys(name string) []string {
	var keys []string
	zones.Range(func(k, _ any) bool {
		if s := k.(string); s == name || strings.HasPrefix(s, name+"\x00") {
			keys = append(keys, s)
		}
		return true
	})
	slices.Sort(keys)
	return keys
}

// A reload keeps the zone's Redis tables (and client) when the store's
// settings stay, and opens new ones when they change; either way a write
// in flight under the old config keeps its lock, and its lease is renewed
// until it is done.
func TestRedisHandlerReload(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	port, admin := freePort(t), freePort(t)
	global := fmt.Sprintf("admin 127.0.0.1:%d\nmetrics", admin)
	site := strings.Replace(redisSite(srv, "rreload", "", ""), "lease 1s", "lease 600ms", 1)
	url := loadCaddy(t, port, global, site, b)
	t.Cleanup(func() { _ = caddy.Stop() })
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", admin)
	lost := `caddy_lock_leases_lost_total{zone="rreload"}`
	lost0 := metricValue(t, metrics, lost)
	first := zoneKeys("rreload")
	if len(first) != 1 {
		t.Fatalf("zone tables %q", first)
	}
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "reload")

	// A connection kept alive from before a reload may still reach the
	// old server: each request here gets a new one.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	loadCaddy(t, port, global, site+"\nheader X-Config two", b)
	if got := zoneKeys("rreload"); !slices.Equal(got, first) {
		t.Fatalf("same store settings: tables %q, before %q", got, first)
	}
	// The old server may accept a connection or two while it shuts
	// down in the background.
	var r result
	waitFor(t, 5*time.Second, "the new config to serve", func() bool {
		r = do(fresh, http.MethodPut, url+"/doc", nil)
		return r.header.Get("X-Config") == "two"
	})
	assertLocked(t, r, "/doc")

	loadCaddy(t, port, global, strings.Replace(site, "timeout 200ms", "timeout 250ms", 1)+"\nheader X-Config three", b)
	if got := zoneKeys("rreload"); len(got) != 1 || got[0] == first[0] {
		t.Fatalf("changed store settings: tables %q, before %q", got, first)
	}
	waitFor(t, 5*time.Second, "the new config to serve", func() bool {
		r = do(fresh, http.MethodPut, url+"/doc", nil)
		return r.header.Get("X-Config") == "three"
	})
	assertLocked(t, r, "/doc")
	// Several leases long: the write under the first config still holds.
	time.Sleep(1500 * time.Millisecond)
	assertLocked(t, do(fresh, http.MethodPut, url+"/doc", nil), "/doc")
	if v := metricValue(t, metrics, lost) - lost0; v > 0 {
		t.Fatalf("%v leases lost across the reloads", v)
	}
	b.open("reload")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the write under the first config: %d", r.status)
	}
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	// Now that its last lease is released, the old tables close: one
	// renewal loop is left, the current zone's.
	waitFor(t, 5*time.Second, "the old zone's locker to close", func() bool {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "stores/redis.(*Locker).renewLoop") == 1
	})
}

// A request that is still in a handler before the lock when a reload
// unloads its config (here forward_auth, waiting for the auth service)
// is locked all the same once it reaches the lock: a reload that changed
// the zone's Redis settings has closed the old client by then, since no
// request was under way in the lock handler. Neither refused (as if Redis
// were down) nor, with fail_open, let through without its lock.
func TestRedisHandlerReloadBeforeLock(t *testing.T) {
	for _, onError := range []string{redisstore.OnErrorFailClosed, redisstore.OnErrorFailOpen} {
		t.Run(onError, func(t *testing.T) { testReloadBeforeLock(t, onError) })
	}
}

func testReloadBeforeLock(t *testing.T, onError string) {
	srv := startRedis(t)
	b := newBackend(t)
	authEntered, authGate := make(chan struct{}, 1), make(chan struct{})
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Hold-Auth") != "" {
			authEntered <- struct{}{}
			<-authGate
		}
	}))
	t.Cleanup(auth.Close)
	zone := "rbeforelock_" + onError
	site := "forward_auth " + strings.TrimPrefix(auth.URL, "http://") + " {\n uri /auth\n}\n" +
		redisSite(srv, zone, "on_error "+onError, "")
	port := freePort(t)
	url := loadCaddy(t, port, "", site, b)
	t.Cleanup(func() { _ = caddy.Stop() })
	old := redisZoneLocker(t, zone)

	done := make(chan result, 1)
	go func() {
		done <- do(http.DefaultClient, http.MethodPut, url+"/doc", map[string]string{"X-Hold-Auth": "1", "X-Hold": "w"})
	}()
	<-authEntered
	loadCaddy(t, port, "", strings.Replace(site, "timeout 200ms", "timeout 250ms", 1)+"\nheader X-Config two", b)
	waitFor(t, 5*time.Second, "the old zone's locker to close", old.Closed)
	close(authGate)

	// The write holds its lock at the backend: the new config refuses
	// another write to /doc.
	select {
	case r := <-done:
		t.Fatalf("the write that was in forward_auth across the reload: %d %s", r.status, r.body)
	case <-b.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the write never reached the backend")
	}
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var r result
	waitFor(t, 5*time.Second, "the new config to serve", func() bool {
		r = do(fresh, http.MethodPut, url+"/doc", nil)
		return r.header.Get("X-Config") == "two"
	})
	assertLocked(t, r, "/doc")
	b.open("w")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the write that was in forward_auth across the reload: %d %s", r.status, r.body)
	}
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	// The tables it opened again go with it.
	waitFor(t, 5*time.Second, "the old config's tables to go", func() bool {
		zs, done := zonesNamed(zone)
		done()
		return len(zs) == 1
	})
}

// redisZoneLocker returns the Redis locker of the zone's only table.
func redisZoneLocker(t *testing.T, name string) *redisstore.Locker {
	t.Helper()
	zs, done := zonesNamed(name)
	defer done()
	if len(zs) != 1 {
		t.Fatalf("zone %q has %d tables", name, len(zs))
	}
	l, ok := zs[0].locker.(*redisstore.Locker)
	if !ok {
		t.Fatalf("zone %q is not in Redis", name)
	}
	return l
}

// A Redis that accepts connections but does not answer (stopped with
// SIGSTOP) costs a request at most about the timeout, not go-redis'
// seconds-long defaults; when it answers again, locking resumes.
func TestRedisHandlerRedisHangs(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	url := startCaddy(t, redisSite(srv, "rhang", "", ""), b)
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	if err := srv.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = srv.Signal(syscall.SIGCONT)
		}
	})
	for range 3 {
		start := time.Now()
		r := do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
		// timeout is 200ms; a pooled connection and a new dial each
		// count against it, with room for a loaded machine.
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("a write took %s while Redis hung", d)
		}
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("write while Redis hung: %d %s", r.status, r.body)
		}
	}
	if err := srv.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	assertLockingResumes(t, url, b)
}

// Sentinel mode: the store asks a real Sentinel for the master named
// master_name and locks there; a name the Sentinel does not know leaves
// the store unavailable.
func TestRedisHandlerSentinel(t *testing.T) {
	srv := startRedis(t)
	sentinel := startSentinel(t, srv, "mymaster")
	b := newBackend(t)
	zone := func(name, master string) string {
		return fmt.Sprintf(`lock {
		zone %s
		store redis {
			address %s
			master_name %s
			lease 1s
			timeout 200ms
		}
	}
	reverse_proxy {backend}`, name, sentinel.Addr, master)
	}
	url := startCaddy(t, fmt.Sprintf("handle /unknown/* {\n\t%s\n}\nhandle {\n\t%s\n}",
		zone("rsentinelx", "nosuchmaster"), zone("rsentinel", "mymaster")), b)

	// The lock is in the master that the Sentinel named.
	c := redisClient(t, srv)
	assertHeldIn(t, url, b, c, "rsentinel", "s")
	if n := heldInRedis(t, c, "rsentinel"); n != 0 {
		t.Fatalf("%d locks left in the master", n)
	}
	if writes, _, overlaps := b.counts(); writes != 2 || overlaps != 0 {
		t.Fatalf("backend: %d writes, %d overlapping; want 2, 0", writes, overlaps)
	}

	mustDo(t, http.MethodPut, url+"/unknown/doc", nil, http.StatusServiceUnavailable)
	if writes, _, _ := b.counts(); writes != 2 {
		t.Fatalf("a write refused for an unknown master reached the backend")
	}
}

// A lock handler that finds its lock held by an earlier one of its zone
// still removes a client's own fence header: the earlier handler may have
// no fence_header (or another one), and the backend must never get the
// client's value.
func TestRedisHandlerNestedFenceHeader(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	store := fmt.Sprintf("store redis {\n address %s\n lease 1s\n timeout 200ms\n }", srv.Addr)
	url := startCaddy(t, fmt.Sprintf(`route {
	lock {
		zone rnestfence
		%s
	}
	handle /docs/* {
		lock {
			zone rnestfence
			%s
			fence_header X-Lock-Fence
		}
		reverse_proxy {backend} {
			header_down X-Fence {http.lock.fence}
		}
	}
}`, store, store), b)
	r := mustDo(t, http.MethodPut, url+"/docs/a", map[string]string{"X-Lock-Fence": "999999"}, http.StatusOK)
	if got := r.header.Get("X-Got-Fence"); got != r.header.Get("X-Fence") || got == "999999" || got == "" {
		t.Fatalf("backend got fence %q, the lock's is %q", got, r.header.Get("X-Fence"))
	}
}
