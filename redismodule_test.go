package caddylock

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	redisstore "github.com/caddy-lock/caddy-lock/stores/redis"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// adaptLock adapts a site with the given lock block and returns the lock
// handler's JSON.
func adaptLock(t *testing.T, block string) map[string]json.RawMessage {
	t.Helper()
	input := "example.com {\n" + block + "\n\treverse_proxy localhost:9000\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": "Caddyfile.test"})
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, input)
	}
	s := string(out)
	at := strings.Index(s, `"handler":"lock"`)
	if at < 0 {
		t.Fatalf("no lock handler in %s", s)
	}
	var h map[string]json.RawMessage
	if err := json.NewDecoder(strings.NewReader(s[strings.LastIndex(s[:at], "{"):])).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestRedisStoreCaddyfile(t *testing.T) {
	h := adaptLock(t, `lock {
		fence_header X-Lock-Fence
		store redis {
			address     10.0.0.1:6379 10.0.0.2:6379
			username    caddy
			password    {env.REDIS_PASSWORD}
			key_prefix  app
			lease       10s
			timeout     250ms
			pool_size   4
			on_error    fail_open
			tls {
				ca          /etc/redis/ca.pem
				client_cert /etc/redis/c.pem /etc/redis/c.key
				server_name redis.internal
			}
		}
	}`)
	if string(h["fence_header"]) != `"X-Lock-Fence"` {
		t.Fatalf("fence_header = %s", h["fence_header"])
	}
	var got struct {
		Type string `json:"type"`
		redisstore.Store
	}
	dec := json.NewDecoder(strings.NewReader(string(h["store"])))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("store JSON %s: %v", h["store"], err)
	}
	want := redisstore.Store{
		Config: redisstore.Config{
			Addresses: []string{"10.0.0.1:6379", "10.0.0.2:6379"},
			Username:  "caddy",
			Password:  "{env.REDIS_PASSWORD}",
			KeyPrefix: "app",
			Lease:     caddy.Duration(10 * time.Second),
			Timeout:   caddy.Duration(250 * time.Millisecond),
			PoolSize:  4,
		},
		OnError: redisstore.OnErrorFailOpen,
		TLS: &reverseproxy.TLSConfig{
			CARaw:                    json.RawMessage(`{"pem_files":["/etc/redis/ca.pem"],"provider":"file"}`),
			ClientCertificateFile:    "/etc/redis/c.pem",
			ClientCertificateKeyFile: "/etc/redis/c.key",
			ServerName:               "redis.internal",
		},
	}
	gotJSON, _ := json.Marshal(got.Store)
	wantJSON, _ := json.Marshal(want)
	if got.Type != "redis" || string(gotJSON) != string(wantJSON) {
		t.Fatalf("store = %s %s\nwant %s", got.Type, gotJSON, wantJSON)
	}
}

func TestRedisStoreCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		block, want string
	}{
		{"lock {\n\tstore\n}", "store: expected a store type"},
		{"lock {\n\tstore etcd {\n\t}\n}", `unknown store type "etcd"`},
		{"lock {\n\tstore redis {\n\t\taddress\n\t}\n}", "address: expected host:port"},
		{"lock {\n\tstore redis {\n\t\taddress localhost\n\t}\n}", `expected host:port, got "localhost"`},
		{"lock {\n\tstore redis {\n\t\ton_error maybe\n\t}\n}", `on_error: expected fail_closed or fail_open, got "maybe"`},
		{"lock {\n\tstore redis {\n\t\tlease 0s\n\t}\n}", "lease: expected a positive duration"},
		{"lock {\n\tstore redis {\n\t\ttimeout soon\n\t}\n}", `timeout: expected a duration such as 500ms or 30s, got "soon"`},
		{"lock {\n\tstore redis {\n\t\tdb -1\n\t}\n}", `db: expected a database number (0 or more), got "-1"`},
		{"lock {\n\tstore redis {\n\t\tkey_prefix a{b}\n\t}\n}", `key_prefix: "a{b}" must not contain`},
		{"lock {\n\tstore redis {\n\t\tcluster yes\n\t}\n}", `unknown option "cluster"`},
		{"lock {\n\tstore redis\n}", "store redis: expected at least one address"},
		{"lock {\n\tstore redis {\n\t\taddress 127.0.0.1:1\n\t\ttimeout 10s\n\t}\n}", "lease 15s must be at least twice the timeout 10s"},
		{"lock {\n\tstore redis {\n\t\taddress 127.0.0.1:1\n\t}\n\tstore redis {\n\t\taddress 127.0.0.1:2\n\t}\n}", `store is given twice`},
		{"lock {\n\tstore redis {\n\t\tpassword a\n\t\tpassword b\n\t}\n}", `store redis: password is given twice`},
		{"lock {\n\tstore redis {\n\t\ttls\n\t\ttls {\n\t\t\tinsecure_skip_verify\n\t\t}\n\t}\n}", `store redis: tls is given twice`},
		{"lock {\n\tstore redis {\n\t\ttls {\n\t\t\tca\n\t\t}\n\t}\n}", "tls: ca: expected PEM files"},
		{"lock {\n\tstore redis {\n\t\ttls {\n\t\t\tclient_cert only.pem\n\t\t}\n\t}\n}", "client_cert: expected a certificate file and a key file"},
		{"lock {\n\tstore redis {\n\t\ttls {\n\t\t\tverify no\n\t\t}\n\t}\n}", `tls: unknown option "verify"`},
		{"lock {\n\tfence_header\n}", "fence_header: expected a header name"},
		{"lock {\n\tfence_header X:Fence\n}", `fence_header: "X:Fence" is not a valid header name`},
	} {
		t.Run(tc.want, func(t *testing.T) { assertAdaptError(t, tc.block, tc.want) })
	}
}

// Mistakes only the whole config shows are reported when it loads, and
// the running config stays.
func TestRedisStoreConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		store, lock, want string
	}{
		{`"addresses":["127.0.0.1:1"],"lease":"1s","timeout":"1s"`, "", "lease 1s must be at least twice the timeout 1s"},
		{`"lease":"1s"`, "", "at least one address is required"},
		{`"addresses":["127.0.0.1:1"],"on_error":"maybe"`, "", "on_error must be fail_closed or fail_open"},
		{`"addresses":["127.0.0.1:1"],"password":"{env.CADDY_LOCK_UNSET_VARIABLE}"`, "", "resolves to an empty value"},
		{`"addresses":["a:1","b:1"],"db":2`, "", "db must be 0 with several addresses"},
		{`"addresses":["127.0.0.1:1"],"lease":"-1s"`, "", "lease, timeout and pool_size must not be negative"},
		{`"addresses":["127.0.0.1:1"],"timeout":"-500ms"`, "", "lease, timeout and pool_size must not be negative"},
		{`"addresses":["127.0.0.1:1"],"pool_size":-3`, "", "lease, timeout and pool_size must not be negative"},
		{"", `"fence_header":"X-Fence",`, "fence_header \"X-Fence\" needs a store"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			store := `"store":{"type":"redis",` + tc.store + `},`
			if tc.store == "" {
				store = ""
			}
			cfg := `{"admin":{"disabled":true},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[` +
				`{"handler":"lock",` + tc.lock + store + `"zone":"cfgerr"}]}]}}}}}`
			err := caddy.Load([]byte(cfg), true)
			if err == nil {
				_ = caddy.Stop()
				t.Fatalf("loaded %s", cfg)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// The password may come from the environment through a placeholder; a
// wrong one makes the store unreachable (503), not unlocked.
func TestRedisStorePasswordPlaceholder(t *testing.T) {
	srv := startRedis(t, "--requirepass", "s3cret")
	b := newBackend(t)
	t.Setenv("CADDY_LOCK_TEST_REDIS_PASSWORD", "s3cret")
	url := startCaddy(t, redisSite(srv, "rpass", "password {env.CADDY_LOCK_TEST_REDIS_PASSWORD}", ""), b)
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	assertLockingResumes(t, url, b)

	t.Setenv("CADDY_LOCK_TEST_REDIS_PASSWORD", "wrong")
	url = startCaddy(t, redisSite(srv, "rpass", "password {env.CADDY_LOCK_TEST_REDIS_PASSWORD}", ""), b)
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusServiceUnavailable)
}

// TLS to Redis with the Caddyfile's tls options: the CA from a file, the
// server's name from the address or from server_name; an unknown CA makes
// the store unreachable, not the lock optional.
func TestRedisStoreTLS(t *testing.T) {
	srv, ca := startRedisTLS(t)
	b := newBackend(t)
	for _, tc := range []struct {
		name, tls string
		want      int
	}{
		{"address", "tls {\n ca " + ca + "\n }", http.StatusOK},
		{"server_name", "tls {\n ca " + ca + "\n server_name redis.test\n }", http.StatusOK},
		{"system roots", "tls", http.StatusServiceUnavailable},
		{"wrong name", "tls {\n ca " + ca + "\n server_name other.test\n }", http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := startCaddy(t, redisSite(srv, "rtls", tc.tls, ""), b)
			mustDo(t, http.MethodPut, url+"/doc", nil, tc.want)
			if tc.want == http.StatusOK {
				assertLockingResumes(t, url, b)
			}
		})
	}
}
