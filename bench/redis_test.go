package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-lock/caddy-lock"
)

// redisCommand sends one command in inline form and returns the answer's
// lines: the first line, and for an array the bulk strings in it.
func redisCommand(t *testing.T, addr, cmd string) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting to redis-server: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\r\n", cmd); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	r := bufio.NewReader(c)
	first, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", cmd, err)
	}
	lines := []string{strings.TrimRight(first, "\r\n")}
	if n := 0; strings.HasPrefix(first, "*") {
		fmt.Sscanf(first, "*%d", &n)
		for range 2 * n { // "$<len>" and the string, for each element
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: reading the answer: %v", cmd, err)
			}
			if l = strings.TrimRight(l, "\r\n"); !strings.HasPrefix(l, "$") {
				lines = append(lines, l)
			}
		}
	}
	return lines
}

// The driver's redis-server: it serves on loopback with nothing
// persisted and its files in a scratch directory, and stopping it ends
// the process and removes the directory.
func TestStartRedisServesAndStopsClean(t *testing.T) {
	p, err := startRedis(t.TempDir())
	if errors.Is(err, errNoRedis) {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			p.stop()
		}
	}()
	if got := redisCommand(t, p.addr, "PING"); got[0] != "+PONG" {
		t.Fatalf("PING answered %q", got)
	}
	for _, c := range []struct{ cmd, want string }{
		{"CONFIG GET bind", "bind 127.0.0.1"},
		{"CONFIG GET save", "save "},
		{"CONFIG GET appendonly", "appendonly no"},
		{"CONFIG GET dir", "dir " + p.dir},
	} {
		if got := strings.Join(redisCommand(t, p.addr, c.cmd)[1:], " "); got != c.want {
			t.Errorf("%s: %q, want %q", c.cmd, got, c.want)
		}
	}
	if _, err := p.usage(); err != nil {
		t.Errorf("reading redis-server's CPU time: %v", err)
	}
	if !strings.HasPrefix(p.dir, os.TempDir()) {
		t.Errorf("redis-server's directory %s is not under %s", p.dir, os.TempDir())
	}
	p.stop()
	stopped = true
	if p.cmd.ProcessState == nil {
		t.Error("redis-server still running after stop")
	}
	if _, err := os.Stat(p.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("redis-server's directory %s is still there after stop (%v)", p.dir, err)
	}
	for _, q := range running.list() {
		if q == p {
			t.Error("a stopped redis-server is still listed as running")
		}
	}
	if c, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
		c.Close()
		t.Errorf("something still listens on %s after stop", p.addr)
	}
}

// The Redis scenario's Caddyfile adapts, with Caddy's own adapter and this
// module, to a lock handler whose store is the redis-server given.
func TestRedisSiteAdaptsToARedisStore(t *testing.T) {
	handlers, out := siteHandlers(t, "lock-redis", redisSite("127.0.0.1:6390"))
	if len(handlers) != 2 || handlers[0]["handler"] != "lock" || handlers[1]["handler"] != "reverse_proxy" {
		t.Fatalf("handlers %v, want lock then reverse_proxy; config:\n%s", handlers, out)
	}
	store, _ := handlers[0]["store"].(map[string]any)
	if store["type"] != "redis" || fmt.Sprint(store["addresses"]) != "[127.0.0.1:6390]" {
		t.Errorf("lock's store is %v, want redis at 127.0.0.1:6390", handlers[0]["store"])
	}
}

// siteHandlers adapts the Caddyfile of run name with site, with Caddy's
// own adapter and this module, and returns its handlers in order, and the
// JSON config.
func siteHandlers(t *testing.T, name, site string) ([]map[string]any, []byte) {
	t.Helper()
	path, err := caddyfile(t.TempDir(), name, 8080, "off", "127.0.0.1:9", site)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": path})
	if err != nil {
		t.Fatalf("adapting:\n%s\n%v", src, err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []struct {
							Routes []struct {
								Handle []json.RawMessage `json:"handle"`
							} `json:"routes"`
						} `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	var handlers []map[string]any
	for _, srv := range cfg.Apps.HTTP.Servers {
		for _, r := range srv.Routes {
			for _, h := range r.Handle {
				for _, sub := range h.Routes {
					for _, raw := range sub.Handle {
						var m map[string]any
						if err := json.Unmarshal(raw, &m); err != nil {
							t.Fatal(err)
						}
						handlers = append(handlers, m)
					}
				}
			}
		}
	}
	return handlers, out
}

// Scenario 4's ceiling is Caddy's static_response answering 423 with a
// body as long as scenario 4's, ahead of reverse_proxy, which it never
// reaches.
func TestStaticRefusalSiteAdaptsToAStatic423(t *testing.T) {
	handlers, out := siteHandlers(t, "static-423", staticRefusalSite)
	if len(handlers) != 2 || handlers[0]["handler"] != "static_response" || handlers[1]["handler"] != "reverse_proxy" {
		t.Fatalf("handlers %v, want static_response then reverse_proxy; config:\n%s", handlers, out)
	}
	body, _ := handlers[0]["body"].(string)
	if fmt.Sprint(handlers[0]["status_code"]) != "423" || len(body) != staticRefusalBytes {
		t.Errorf("static_response answers %v with %d bytes, want 423 with %d", handlers[0]["status_code"], len(body), staticRefusalBytes)
	}
}
