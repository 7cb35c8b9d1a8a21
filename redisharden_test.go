package caddylock

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/redis/go-redis/v9"
)

// loadCaddyErr loads a Caddy config with site as loadCaddy does, and
// returns the error of the load instead of failing the test.
func loadCaddyErr(t *testing.T, port int, site string, b *backend) error {
	t.Helper()
	site = strings.ReplaceAll(site, "{backend}", strings.TrimPrefix(b.URL, "http://"))
	caddyfile := fmt.Sprintf("{\nadmin off\npersist_config off\nauto_https off\nlog {\n output discard\n}\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", port, site)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	return caddy.Load(cfg, true)
}

// fillRedis sets a small maxmemory with noeviction on srv and fills it,
// so that every command that may use memory (and every script calling
// one) fails with OOM, as a flood of LOCKs can bring about.
func fillRedis(t *testing.T, c redis.UniversalClient) {
	t.Helper()
	ctx := context.Background()
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`used_memory:(\d+)`).FindStringSubmatch(info)
	used, _ := strconv.ParseInt(m[1], 10, 64)
	if err := c.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used+512<<10, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	junk := strings.Repeat("x", 32<<10)
	for i := 0; ; i++ {
		err := c.Set(ctx, fmt.Sprintf("junk:%d", i), junk, 0).Err()
		if err != nil {
			if !redis.IsOOMError(err) {
				t.Fatalf("filling Redis: %v", err)
			}
			// Keep it out of memory when buffers shrink: a limit
			// well below the data set.
			if err := c.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used/2, 10)).Err(); err != nil {
				t.Fatal(err)
			}
			return
		}
		if i > 1000 {
			t.Fatal("Redis never ran out of memory")
		}
	}
}

// fail_open passes writes only while Redis cannot be reached. A Redis
// that answers with an error (here out of memory, which a flood of LOCKs
// can bring about) refuses them with 503 and result store_error: a
// client able to make the store fail must not be able to skip locks.
func TestRedisFailOpenNotOnErrorReply(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	url := startCaddy(t, redisSite(srv, "room", "on_error fail_open", ""), b)
	r := mustDo(t, http.MethodPut, url+"/warm", nil, http.StatusOK) // loads the scripts
	if got := r.header.Get("X-Result"); got != resultAcquired {
		t.Fatalf("result %q, want %q", got, resultAcquired)
	}
	fillRedis(t, redisClient(t, srv))
	writes, _, _ := b.counts()
	r = do(http.DefaultClient, http.MethodPut, url+"/doc", nil)
	if r.err != nil || r.status != http.StatusServiceUnavailable {
		t.Fatalf("PUT with Redis out of memory under fail_open: %d %v %s (result %s); want 503", r.status, r.err, r.body, r.header.Get("X-Result"))
	}
	if w, _, _ := b.counts(); w != writes {
		t.Fatal("a write reached the backend without its lock while Redis was out of memory")
	}
	if !strings.Contains(r.body, "answered with an error") || r.header.Get("Content-Type") != "application/problem+json" ||
		r.header.Get("Retry-After") == "" {
		t.Fatalf("refusal: %v %s", r.header, r.body)
	}
	// A Redis that cannot be reached still lets writes through.
	srv.Stop()
	r = mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	if got := r.header.Get("X-Result"); got != resultFailOpen {
		t.Fatalf("result with Redis down %q, want %q", got, resultFailOpen)
	}
}

// The same in a WebDAV zone: a LOCK and a write refused with 503 while
// Redis is out of memory.
func TestRedisFailOpenNotOnErrorReplyWebDAV(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	url := startCaddy(t, redisSite(srv, "roomdav", "on_error fail_open", "webdav"), b)
	mustDo(t, http.MethodPut, url+"/warm", nil, http.StatusOK)
	fillRedis(t, redisClient(t, srv))
	writes, _, _ := b.counts()
	for _, r := range []result{
		do(http.DefaultClient, http.MethodPut, url+"/doc", nil),
		davDo(t, "LOCK", url+"/doc", fmt.Sprintf(lockBody, "exclusive", "me"), nil),
	} {
		if r.err != nil || r.status != http.StatusServiceUnavailable {
			t.Fatalf("with Redis out of memory under fail_open: %d %v %s; want 503", r.status, r.err, r.body)
		}
	}
	if w, _, _ := b.counts(); w != writes {
		t.Fatal("a write reached the backend without its lock while Redis was out of memory")
	}
}

// otherInstance records, in Redis, the zone's settings as another live
// Caddy instance would have them (see stores/redis/agree.go): the record
// an instance keeps while it runs, here for 30s.
func otherInstance(t *testing.T, srv *testRedis, zone string, hierarchy, caseInsensitive bool) {
	t.Helper()
	c := redisClient(t, srv)
	ctx := context.Background()
	now, err := c.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	base := redisZoneBase(zone)
	settings := fmt.Sprintf("hierarchy=%t case_insensitive=%t", hierarchy, caseInsensitive)
	const ttl = 30 * time.Second
	_, err = c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, base+"settings", "other-instance", settings)
		p.ZAdd(ctx, base+"settings:exp", redis.Z{Score: float64(now.Add(ttl).UnixMilli()), Member: "other-instance"})
		p.PExpire(ctx, base+"settings", ttl)
		p.PExpire(ctx, base+"settings:exp", ttl)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// An instance whose hierarchy differs from that of another live instance
// sharing the zone in Redis is refused at load, with both values named;
// one that agrees loads; deleting the record lets the setting change.
func TestRedisZoneSettingsDisagreeHierarchy(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	otherInstance(t, srv, "agree", true, false)
	port := freePort(t)
	t.Cleanup(func() { _ = caddy.Stop() })
	err := loadCaddyErr(t, port, redisSite(srv, "agree", "", ""), b)
	if err == nil {
		t.Fatal("an instance without hierarchy loaded while another shares the zone with hierarchy")
	}
	for _, want := range []string{`lock zone "agree"`, "another Caddy instance", "hierarchy=true", "hierarchy=false", "{caddy-lock:agree}:settings"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("refusal %q does not say %q", err, want)
		}
	}
	url := loadCaddy(t, port, "", redisSite(srv, "agree", "", "hierarchy"), b)
	mustDo(t, http.MethodPut, url+"/a", nil, http.StatusOK)
	// The documented way to change a setting while a record stands.
	if err := redisClient(t, srv).Del(context.Background(), "{caddy-lock:agree}:settings").Err(); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	loadCaddy(t, port, "", redisSite(srv, "agree", "", ""), b)
}

// The same for case_insensitive.
func TestRedisZoneSettingsDisagreeCase(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	otherInstance(t, srv, "agreecase", false, true)
	t.Cleanup(func() { _ = caddy.Stop() })
	err := loadCaddyErr(t, freePort(t), redisSite(srv, "agreecase", "", ""), b)
	if err == nil || !strings.Contains(err.Error(), "case_insensitive=true") || !strings.Contains(err.Error(), "case_insensitive=false") {
		t.Fatalf("load of a zone that folds case unlike another instance: %v", err)
	}
	loadCaddy(t, freePort(t), "", redisSite(srv, "agreecase", "", "case_insensitive"), b)
}

// A reload in one process may change a setting: the old config and the
// new one are one instance.
func TestRedisZoneSettingsReloadChanges(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	port := freePort(t)
	t.Cleanup(func() { _ = caddy.Stop() })
	loadCaddy(t, port, "", redisSite(srv, "agreereload", "", "hierarchy"), b)
	url := loadCaddy(t, port, "", redisSite(srv, "agreereload", "", ""), b)
	mustDo(t, http.MethodPut, url+"/a", nil, http.StatusOK)
}

// key_prefix p with zone a:b and key_prefix p:a with zone b would share
// the table {p:a:b}: a zone name with ':' is refused with Redis.
func TestRedisZoneColonRefused(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	t.Cleanup(func() { _ = caddy.Stop() })
	err := loadCaddyErr(t, freePort(t), redisSite(srv, "a:b", "key_prefix p", ""), b)
	if err == nil || !strings.Contains(err.Error(), `zone "a:b" must not contain ':'`) {
		t.Fatalf("zone a:b with key_prefix p: %v", err)
	}
	loadCaddy(t, freePort(t), "", redisSite(srv, "b", "key_prefix p:a", ""), b)
}

// An instance that stops removes its record: restarted with another
// setting (here a new process, another instance), it is not refused.
func TestRedisZoneSettingsForgottenOnStop(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	loadCaddy(t, freePort(t), "", redisSite(srv, "agreestop", "", "hierarchy"), b)
	c := redisClient(t, srv)
	if n, err := c.HLen(context.Background(), "{caddy-lock:agreestop}:settings").Result(); err != nil || n != 1 {
		t.Fatalf("records of the zone's settings: %d, %v; want 1", n, err)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the stopped instance's record to go", func() bool {
		n, err := c.HLen(context.Background(), "{caddy-lock:agreestop}:settings").Result()
		return err == nil && n == 0
	})
	otherInstance(t, srv, "agreestop", false, false)
}

// Two Caddy processes sharing a zone in Redis but disagreeing on
// hierarchy: the second refuses to start, naming the setting and both
// values, while the first goes on locking.
func TestClusterZoneSettingsDisagree(t *testing.T) {
	srv := startRedis(t)
	b := newBackend(t)
	a := startCaddyProc(t, "a", clusterLock(srv, "hierarchy", ""), b)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "Caddyfile")
	caddyfile := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n}\nhttp://127.0.0.1:%d {\n\t%s\n\treverse_proxy %s\n}\n",
		freePort(t), clusterLock(srv, "", ""), b.Listener.Addr())
	if err := os.WriteFile(cfgPath, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddyBinary(t), "run", "--config", cfgPath, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "HOME="+dir)
	var buf bytes.Buffer
	mu := new(sync.Mutex)
	cmd.Stdout = lockedWriter{mu, &buf}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("the disagreeing instance started:\n%s", buf.String())
	}
	out := buf.Bytes() // the process has exited: nothing writes any more
	if err == nil {
		t.Fatalf("the disagreeing instance exited cleanly:\n%s", out)
	}
	for _, want := range []string{"another Caddy instance", "hierarchy=true", "hierarchy=false"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("the refusal does not say %s:\n%s", want, out)
		}
	}
	mustDo(t, http.MethodPut, a.URL+"/a", nil, http.StatusOK)
}
