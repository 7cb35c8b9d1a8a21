package caddylock

// Cluster tests: two Caddy processes (the built cmd/caddy) sharing one
// redis-server, in front of one backend that records overlapping writes.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var caddyBuild struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// caddyBinary builds cmd/caddy once per test run (with -race when the
// tests run with it, which reuses their compiled packages) and returns
// its path.
func caddyBinary(t *testing.T) string {
	t.Helper()
	caddyBuild.once.Do(func() {
		// TestMain points XDG_DATA_HOME at a directory it removes at the
		// end of the run.
		dir := filepath.Join(os.Getenv("XDG_DATA_HOME"), "caddy-lock-bin")
		caddyBuild.path = filepath.Join(dir, "caddy")
		args := []string{"build", "-o", caddyBuild.path}
		if raceEnabled() {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/caddy")...)
		caddyBuild.out, caddyBuild.err = cmd.CombinedOutput()
	})
	if caddyBuild.err != nil {
		t.Fatalf("building cmd/caddy: %v\n%s", caddyBuild.err, caddyBuild.out)
	}
	return caddyBuild.path
}

func raceEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// caddyProc is one Caddy process of a cluster test.
type caddyProc struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	exit  chan struct{}
	log   *bytes.Buffer
	logMu *sync.Mutex
	URL   string // the site
	Admin string // the admin endpoint
}

// lockedWriter is a log buffer that the process's output goroutine and the
// test share.
type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// startCaddyProc runs the built Caddy with a site whose lock block is
// lock, in front of b, and waits until it serves. It is killed when the
// test ends.
func startCaddyProc(t *testing.T, name, lock string, b *backend) *caddyProc {
	t.Helper()
	dir := t.TempDir()
	port, admin := freePort(t), freePort(t)
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
}
http://127.0.0.1:%d {
	%s
	reverse_proxy %s {
		header_down X-Node %s
		header_down X-Result {http.lock.result}
		# No idle upstream connections, whose goroutines would blur
		# the leak check.
		transport http {
			keepalive off
		}
	}
}
`, admin, port, lock, b.Listener.Addr(), name)
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &caddyProc{
		t: t, name: name, exit: make(chan struct{}), log: new(bytes.Buffer), logMu: new(sync.Mutex),
		URL:   fmt.Sprintf("http://127.0.0.1:%d", port),
		Admin: fmt.Sprintf("http://127.0.0.1:%d", admin),
	}
	p.cmd = exec.Command(caddyBinary(t), "run", "--config", cfgPath, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "HOME="+dir)
	p.cmd.Stdout = lockedWriter{p.logMu, p.log}
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exit)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("caddy %s output:\n%s", name, p.output())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r := do(http.DefaultClient, http.MethodGet, p.Admin+"/config/", nil); r.err == nil && r.status == http.StatusOK {
			return p
		}
		select {
		case <-p.exit:
			t.Fatalf("caddy %s exited at start:\n%s", name, p.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy %s did not start within 30s:\n%s", name, p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *caddyProc) output() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

// Kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *caddyProc) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exit
}

// alive fails the test if the process has exited.
func (p *caddyProc) alive() {
	p.t.Helper()
	select {
	case <-p.exit:
		p.t.Fatalf("caddy %s exited:\n%s", p.name, p.output())
	default:
	}
}

// goroutines reads the process's goroutine count from its admin
// endpoint's pprof.
func (p *caddyProc) goroutines() int {
	p.t.Helper()
	r := mustDo(p.t, http.MethodGet, p.Admin+"/debug/pprof/goroutine?debug=1", nil, http.StatusOK)
	m := regexp.MustCompile(`goroutine profile: total (\d+)`).FindStringSubmatch(r.body)
	if m == nil {
		p.t.Fatalf("no goroutine count in %.200s", r.body)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// clusterLock is a lock block whose zone lives in srv, with a lease of
// 1s so that a dead node's locks run out quickly.
func clusterLock(srv *testRedis, extra, store string) string {
	return fmt.Sprintf(`lock {
		zone cluster
		%s
		store redis {
			address %s
			lease 1s
			timeout 200ms
			%s
		}
	}`, extra, srv.Addr, store)
}

// Concurrent writes through both instances, queueing across them, never
// overlap at the backend, and all get through.
func TestClusterWritesNeverOverlap(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	// What is asserted is exclusion, not how an outage is answered: the
	// bound per Redis call is generous, as 48 queued writes under the
	// race detector on a busy machine can take longer than 200ms a call.
	// (A lease must be at least twice the timeout.)
	lock := strings.NewReplacer("timeout 200ms", "timeout 2s", "lease 1s", "lease 4s").Replace(clusterLock(srv, "wait 20s\n\t\tmax_waiters 100", ""))
	nodes := []*caddyProc{startCaddyProc(t, "a", lock, b), startCaddyProc(t, "b", lock, b)}
	const paths, perPath = 3, 16
	results := make(chan result, paths*perPath)
	for i := range paths * perPath {
		node := nodes[i%2]
		go func() {
			results <- do(http.DefaultClient, http.MethodPut, fmt.Sprintf("%s/doc%d", node.URL, i%paths),
				map[string]string{"X-Delay": "10ms"})
		}()
	}
	byNode := map[string]int{}
	for range paths * perPath {
		r := <-results
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("a queued write: %d %v %s", r.status, r.err, r.body)
		}
		byNode[r.header.Get("X-Node")]++
	}
	writes, _, overlaps := b.counts()
	if writes != paths*perPath || overlaps != 0 {
		t.Fatalf("backend saw %d writes, %d overlapping; want %d, 0", writes, overlaps, paths*perPath)
	}
	if byNode["a"] != paths*perPath/2 || byNode["b"] != paths*perPath/2 {
		t.Fatalf("writes by node: %v", byNode)
	}

}

// A node killed while it holds a lock: the other node refuses the
// conflicting write until the dead node's lease runs out, then grants it.
func TestClusterKilledHolder(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	lock := clusterLock(srv, "", "")
	a, other := startCaddyProc(t, "a", lock, b), startCaddyProc(t, "b", lock, b)

	// Each node refuses the other's conflicting write at once.
	for _, pair := range [][2]*caddyProc{{a, other}, {other, a}} {
		holder, rival := pair[0], pair[1]
		id := "held-by-" + holder.name
		done := holdWrite(t, b, http.MethodPost, holder.URL+"/doc", id)
		assertLocked(t, do(http.DefaultClient, http.MethodPut, rival.URL+"/doc", nil), "/doc")
		b.open(id)
		if r := <-done; r.status != http.StatusOK {
			t.Fatalf("held write through %s: %d", holder.name, r.status)
		}
	}

	holdWrite(t, b, http.MethodPut, a.URL+"/doc", "dies")
	a.Kill()
	killed := time.Now()
	assertLocked(t, do(http.DefaultClient, http.MethodPut, other.URL+"/doc", nil), "/doc")
	var granted time.Duration
	waitFor(t, 5*time.Second, "the dead node's lease to run out", func() bool {
		r := do(http.DefaultClient, http.MethodPut, other.URL+"/doc", nil)
		if r.status == http.StatusLocked {
			return false
		}
		if r.status != http.StatusOK {
			t.Fatalf("write after the kill: %d %s", r.status, r.body)
		}
		granted = time.Since(killed)
		return true
	})
	// The lease is 1s and renewed every third of it: the lock stays
	// about 2/3s or more after the kill (less when the machine is so
	// loaded that a renewal came late), never a moment.
	if granted < 200*time.Millisecond {
		t.Fatalf("granted %s after the kill, before the lease could run out", granted)
	}
	other.alive()
}

// Redis stopped under load: the fail_closed node answers 503, the
// fail_open node passes writes; neither crashes nor leaks goroutines, and
// both lock again once Redis is back.
func TestClusterRedisOutage(t *testing.T) {
	srv := startRedis(t)
	// While Redis is down the fail_open node lets writes through
	// unlocked, so writes may overlap at the backend: that is the choice
	// fail_open makes, and this test checks it is made.
	b := newUncheckedBackend(t)
	closed := startCaddyProc(t, "closed", clusterLock(srv, "", "on_error fail_closed"), b)
	open := startCaddyProc(t, "open", clusterLock(srv, "", "on_error fail_open"), b)
	nodes := []*caddyProc{closed, open}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

	// load sends writes through both nodes until stop is closed and
	// returns the statuses each node answered.
	load := func(stop chan struct{}) func() map[string]map[int]int {
		var mu sync.Mutex
		var wg sync.WaitGroup
		seen := map[string]map[int]int{"closed": {}, "open": {}}
		for w := range 8 {
			node := nodes[w%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					r := do(client, http.MethodPut, fmt.Sprintf("%s/load%d", node.URL, i%4), map[string]string{"X-Delay": "2ms"})
					mu.Lock()
					seen[node.name][r.status]++
					mu.Unlock()
				}
			}()
		}
		return func() map[string]map[int]int {
			close(stop)
			wg.Wait()
			return seen
		}
	}

	// Warm up both nodes the way the load will use them, then count.
	load(make(chan struct{}))()
	time.Sleep(200 * time.Millisecond)
	before := []int{closed.goroutines(), open.goroutines()}

	stopUp := make(chan struct{})
	up := load(stopUp)
	time.Sleep(300 * time.Millisecond)
	srv.Stop()
	time.Sleep(300 * time.Millisecond) // in-flight writes finish
	seenUp := up()
	stopDown := make(chan struct{})
	down := load(stopDown)
	time.Sleep(time.Second)
	seenDown := down()
	t.Logf("Redis up: %v; down: %v", seenUp, seenDown)
	for _, p := range nodes {
		p.alive()
	}
	if seenUp["closed"][http.StatusOK] == 0 || seenUp["open"][http.StatusOK] == 0 {
		t.Fatalf("no write got through with Redis up: %v", seenUp)
	}
	if n := seenDown["closed"]; n[http.StatusServiceUnavailable] == 0 || len(n) != 1 {
		t.Fatalf("fail_closed with Redis down answered %v; want only 503", n)
	}
	if n := seenDown["open"]; n[http.StatusOK] == 0 || len(n) != 1 {
		t.Fatalf("fail_open with Redis down answered %v; want only 200", n)
	}
	// Hundreds of requests, one warning each: the log is rate-limited.
	for p, msg := range map[*caddyProc]string{
		closed: "lock store unavailable: refusing requests with 503",
		open:   "lock store unavailable: passing requests WITHOUT locks",
	} {
		if n := strings.Count(p.output(), msg); n != 1 {
			t.Errorf("caddy %s logged %q %d times, want once", p.name, msg, n)
		}
	}

	srv.Start()
	// Each node reconnects on its own; until then the fail_open one
	// still passes writes.
	for _, p := range nodes {
		waitFor(t, 5*time.Second, "locking to resume on "+p.name, func() bool {
			return do(client, http.MethodPut, p.URL+"/after", nil).header.Get("X-Result") == resultAcquired
		})
	}
	for _, pair := range [][2]*caddyProc{{closed, open}, {open, closed}} {
		holder, rival := pair[0], pair[1]
		id := "after-" + holder.name
		done := holdWriteVia(t, client, b, http.MethodPut, holder.URL+"/after", id)
		assertLocked(t, do(client, http.MethodPut, rival.URL+"/after", nil), "/after")
		b.open(id)
		<-done
	}

	for i, p := range nodes {
		deadline := time.Now().Add(10 * time.Second)
		for p.goroutines() > before[i]+2 {
			if time.Now().After(deadline) {
				dump := mustDo(t, http.MethodGet, p.Admin+"/debug/pprof/goroutine?debug=1", nil, http.StatusOK).body
				t.Fatalf("caddy %s: %d goroutines before the outage, now:\n%s", p.name, before[i], dump)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// A WebDAV LOCK taken through one node is enforced by the other, the
// admin API of either lists it, and an UNLOCK through the other ends it.
func TestClusterWebDAVLock(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	lock := clusterLock(srv, "webdav", "")
	a, c := startCaddyProc(t, "a", lock, b), startCaddyProc(t, "b", lock, b)

	const lockinfo = `<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>cluster test</D:owner></D:lockinfo>`
	r := davMust(t, http.StatusOK, "LOCK", a.URL+"/doc", lockinfo, map[string]string{"Timeout": "Second-60", "Depth": "0"})
	token := strings.TrimSuffix(strings.TrimPrefix(r.header.Get("Lock-Token"), "<"), ">")
	if !strings.HasPrefix(token, "urn:uuid:") {
		t.Fatalf("LOCK answered Lock-Token %q", r.header.Get("Lock-Token"))
	}
	writes, _, _ := b.counts()

	// The other node refuses a write without the token, before the backend.
	davMust(t, http.StatusLocked, http.MethodPut, c.URL+"/doc", "x", nil)
	if w, _, _ := b.counts(); w != writes {
		t.Fatalf("a refused write reached the backend (%d writes, want %d)", w, writes)
	}
	// ... and lets the token's holder write.
	davMust(t, http.StatusOK, http.MethodPut, c.URL+"/doc", "x", map[string]string{"If": "(<" + token + ">)"})

	for _, n := range []*caddyProc{a, c} {
		r := mustDo(t, http.MethodGet, n.Admin+"/lock/", nil, http.StatusOK)
		if !strings.Contains(r.body, `"root":"/doc"`) || !strings.Contains(r.body, `"token_prefix":"`+tokenPrefix(token)+`"`) {
			t.Fatalf("admin API of node %s does not list the lock: %s", n.name, r.body)
		}
		if strings.Contains(r.body, token) {
			t.Fatalf("admin API of node %s shows the whole token: %s", n.name, r.body)
		}
	}

	davMust(t, http.StatusNoContent, "UNLOCK", c.URL+"/doc", "", map[string]string{"Lock-Token": "<" + token + ">"})
	davMust(t, http.StatusOK, http.MethodPut, a.URL+"/doc", "x", nil)
	if r := mustDo(t, http.MethodGet, a.Admin+"/lock/", nil, http.StatusOK); strings.Contains(r.body, `"/doc"`) {
		t.Fatalf("the lock is still listed after UNLOCK: %s", r.body)
	}
}

// A maintenance lock taken through one node's admin API refuses writes
// through the other node of a zone without webdav, and lifting it through
// the other node's admin API lets them through again.
func TestClusterMaintenanceLock(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	lock := clusterLock(srv, "", "")
	a, c := startCaddyProc(t, "a", lock, b), startCaddyProc(t, "b", lock, b)

	davMust(t, http.StatusOK, http.MethodPut, c.URL+"/billing/1", "x", nil)
	// A write under /billing is in flight through node b when node a
	// takes the maintenance lock: a's answer waits for it to end.
	held := holdWrite(t, b, http.MethodPut, c.URL+"/billing/2", "drain")
	go func() {
		time.Sleep(300 * time.Millisecond)
		b.open("drain")
	}()
	start := time.Now()
	r := davMust(t, http.StatusCreated, http.MethodPost, a.Admin+"/lock/cluster",
		`{"path": "/billing", "depth": "infinity", "timeout": "10m", "owner": "maintenance"}`,
		map[string]string{"Content-Type": "application/json"})
	var created struct {
		Token   string `json:"token"`
		Running int    `json:"writes_in_flight"`
	}
	if err := json.Unmarshal([]byte(r.body), &created); err != nil || created.Token == "" {
		t.Fatalf("POST /lock/cluster answered %s (%v)", r.body, err)
	}
	if waited := time.Since(start); created.Running != 0 || waited < 250*time.Millisecond {
		t.Fatalf("POST answered after %s with %d writes in flight; want it to wait for node b's write", waited, created.Running)
	}
	if hr := <-held; hr.status != http.StatusOK {
		t.Fatalf("the write in flight through node b: %d", hr.status)
	}
	writes, _, _ := b.counts()
	r = davMust(t, http.StatusLocked, http.MethodPut, c.URL+"/billing/1", "x", nil)
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 60 {
		t.Fatalf("Retry-After %q during a 10m maintenance lock", r.header.Get("Retry-After"))
	}
	davMust(t, http.StatusOK, http.MethodPut, c.URL+"/other", "x", nil)
	if w, _, _ := b.counts(); w != writes+1 {
		t.Fatalf("backend saw %d writes, want %d: the refused one must not reach it", w, writes+1)
	}
	davMust(t, http.StatusOK, http.MethodDelete, c.Admin+"/lock/cluster/"+created.Token, "", nil)
	davMust(t, http.StatusOK, http.MethodPut, a.URL+"/billing/1", "x", nil)
}

// inFlight returns the in-flight locks that a node's admin API lists.
func inFlight(t *testing.T, p *caddyProc) map[string]adminLock {
	t.Helper()
	r := mustDo(t, http.MethodGet, p.Admin+"/lock/", nil, http.StatusOK)
	var list []adminLock
	if err := json.Unmarshal([]byte(r.body), &list); err != nil {
		t.Fatalf("admin API of node %s: %v in %s", p.name, err, r.body)
	}
	out := map[string]adminLock{}
	for _, l := range list {
		if l.InFlight {
			out[l.Zone+" "+l.Root] = l
		}
	}
	return out
}

// A write held at the backend through one node, with another queued
// behind it through the other, is listed by the admin API of either node,
// and is gone from it once both are done. With Redis down the listing
// answers 503.
func TestClusterAdminListsInFlight(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	lock := clusterLock(srv, "wait 20s", "")
	a, c := startCaddyProc(t, "a", lock, b), startCaddyProc(t, "b", lock, b)

	first := holdWrite(t, b, http.MethodPut, a.URL+"/doc", "listed")
	granted := time.Now()
	queued := make(chan result, 1)
	go func() { queued <- do(http.DefaultClient, http.MethodPut, c.URL+"/doc", nil) }()
	waitFor(t, 5*time.Second, "the second write to queue", func() bool {
		return inFlight(t, c)["cluster /doc"].Waiting == 1
	})
	for _, n := range []*caddyProc{a, c} {
		got := inFlight(t, n)
		l, ok := got["cluster /doc"]
		if len(got) != 1 || !ok || l.Scope != "exclusive" || l.Depth != "0" || l.Holders != 1 || l.Waiting != 1 {
			t.Fatalf("admin API of node %s lists in flight: %+v; want /doc, exclusive, depth 0, 1 holder, 1 waiting", n.name, got)
		}
		if d := l.Created.Sub(granted); d < -5*time.Second || d > 5*time.Second {
			t.Fatalf("admin API of node %s: /doc held since %s, granted about %s", n.name, l.Created, granted)
		}
	}

	b.open("listed")
	for _, ch := range []<-chan result{first, queued} {
		if r := <-ch; r.status != http.StatusOK {
			t.Fatalf("a write: %d %s", r.status, r.body)
		}
	}
	for _, n := range []*caddyProc{a, c} {
		if got := inFlight(t, n); len(got) != 0 {
			t.Fatalf("admin API of node %s lists after the writes: %+v", n.name, got)
		}
	}

	srv.Stop()
	r := mustDo(t, http.MethodGet, c.Admin+"/lock/", nil, http.StatusServiceUnavailable)
	if !strings.Contains(r.body, "lock store unavailable") {
		t.Fatalf("listing with Redis down: %s", r.body)
	}
}
