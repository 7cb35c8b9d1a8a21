package caddylock

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        Handler
	}{
		{"bare", `lock`, Handler{}},
		{"empty block", "lock {\n}", Handler{}},
		{"every subdirective", `lock {
			key {http.request.header.X-Doc}
			exclusive put post
			shared GET HEAD
			hierarchy
			case_insensitive
			wait 2s
			max_waiters 8
			retry_after 1m
			max_hold 30s
			max_locks 500
			max_lock_bytes 8MiB
			max_locks_per_owner 20
			zone billing
			use_handle_errors
		}`, Handler{
			Key:              "{http.request.header.X-Doc}",
			Exclusive:        []string{"PUT", "POST"},
			Shared:           []string{"GET", "HEAD"},
			Hierarchy:        true,
			CaseInsensitive:  true,
			Wait:             caddy.Duration(2 * time.Second),
			MaxWaiters:       8,
			RetryAfter:       caddy.Duration(time.Minute),
			MaxHold:          caddy.Duration(30 * time.Second),
			MaxLocks:         500,
			MaxLockBytes:     8 << 20,
			MaxLocksPerOwner: 20,
			Zone:             "billing",
			UseHandleErrors:  true,
		}},
		{"repeated method lists add up", "lock {\n exclusive PUT\n exclusive DELETE\n}", Handler{Exclusive: []string{"PUT", "DELETE"}}},
		{"day durations", "lock {\n max_hold 1d\n}", Handler{MaxHold: caddy.Duration(24 * time.Hour)}},
		{"webdav", "lock {\n webdav\n max_timeout 2h\n default_timeout 5m\n max_lock_body 64KiB\n}", Handler{
			WebDAV:         true,
			MaxTimeout:     caddy.Duration(2 * time.Hour),
			DefaultTimeout: caddy.Duration(5 * time.Minute),
			MaxLockBody:    64 << 10,
		}},
		{"webdav with the path key", "lock {\n webdav\n key {http.request.uri.path}\n}", Handler{WebDAV: true, Key: "{http.request.uri.path}"}},
		{"lock body in MB", "lock {\n webdav\n max_lock_body 1MB\n}", Handler{WebDAV: true, MaxLockBody: 1000000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h, tc.want) {
				t.Fatalf("got %+v\nwant %+v", h, tc.want)
			}
		})
	}
}

// TestCaddyfileErrors adapts whole Caddyfiles, as `caddy adapt` and
// `caddy run` do, and checks that each mistake names the file, the line
// and what was expected.
func TestCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		block, want string
	}{
		{"lock {\n\tfrobnicate\n}", `unknown subdirective "frobnicate"`},
		{"lock {\n\twait soon\n}", `wait: expected a duration such as 500ms or 30s, got "soon"`},
		{"lock {\n\twait -1s\n}", `wait: expected a duration that is not negative`},
		{"lock {\n\tretry_after\n}", `retry_after: expected a duration`},
		{"lock {\n\tmax_hold 0s\n}", `max_hold: expected a positive duration`},
		{"lock {\n\tstore memory extra\n}", `wrong argument count`},
		{"lock {\n\tstore memory {\n\t\tsize 1\n\t}\n}", `store memory: unexpected "size": the memory store takes no options`},
		{"lock {\n\tmax_locks -5\n}", `max_locks: expected a positive whole number, got "-5"`},
		{"lock {\n\tmax_locks many\n}", `max_locks: expected a positive whole number, got "many"`},
		{"lock {\n\tmax_waiters\n}", `max_waiters: expected a positive whole number`},
		{"lock {\n\tmax_waiters 1 2\n}", `max_waiters: expected one number, got also "2"`},
		{"lock {\n\tkey\n}", `key: expected a template`},
		{"lock {\n\tzone\n}", `zone: expected a zone name`},
		{"lock {\n\tzone tenants/a\n}", `zone: "tenants/a" must not contain '/'`},
		{"lock {\n\tzone a\n\tzone b\n}", `zone is given twice`},
		{"lock {\n\tkey {http.request.header.X-Doc}\n\tkey {path}\n}", `key is given twice`},
		{"lock {\n\twait 1s\n\twait 2s\n}", `wait is given twice`},
		{"lock {\n\thierarchy\n\thierarchy\n}", `hierarchy is given twice`},
		{"lock {\n\texclusive\n}", `exclusive: expected at least one HTTP method`},
		{"lock {\n\tshared GET/HEAD\n}", `shared: "GET/HEAD" is not an HTTP method`},
		{"lock {\n\texclusive PUT\n\tshared get put\n}", `shared: method PUT is already listed as exclusive`},
		{"lock {\n\thierarchy yes\n}", `hierarchy takes no arguments, got "yes"`},
		{"lock {\n\twait 1s 2s\n}", `wait: expected one duration, got also "2s"`},
		{"lock extra", `unexpected argument "extra"`},
		{"lock {\n\twebdav on\n}", `webdav takes no arguments, got "on"`},
		{"lock {\n\tmax_timeout 0s\n}", `max_timeout: expected a positive duration`},
		{"lock {\n\tdefault_timeout forever\n}", `default_timeout: expected a duration such as 500ms or 30s, got "forever"`},
		{"lock {\n\tmax_lock_body lots\n}", `max_lock_body: expected a positive size such as 64KiB or 1MB, got "lots"`},
		{"lock {\n\tmax_lock_body 0\n}", `max_lock_body: expected a positive size`},
		{"lock {\n\tmax_lock_body\n}", `max_lock_body: expected a size such as 64KiB`},
		{"lock {\n\tmax_lock_bytes -1MiB\n}", `max_lock_bytes: expected a positive size such as 64MiB or 1MB, got "-1MiB"`},
		{"lock {\n\tmax_lock_bytes 0\n}", `max_lock_bytes: expected a positive size`},
		{"lock {\n\tmax_lock_bytes\n}", `max_lock_bytes: expected a size such as 64MiB`},
		{"lock {\n\tmax_lock_bytes 1MiB\n\tmax_lock_bytes 2MiB\n}", `max_lock_bytes is given twice`},
		{"lock {\n\tmax_locks_per_owner -3\n}", `max_locks_per_owner: expected a positive whole number, got "-3"`},
		{"lock {\n\tmax_locks_per_owner 0\n}", `max_locks_per_owner: expected a positive whole number, got "0"`},
		{"lock {\n\tmax_locks_per_owner 1 2\n}", `max_locks_per_owner: expected one number, got also "2"`},
		// Mistakes that only the whole block shows, reported at the line
		// of the setting that cannot stand, wherever the other one is.
		{"lock {\n\tzone z\n\tfence_header X-Lock-Fence\n}",
			`fence_header "X-Lock-Fence" needs a store that issues fencing numbers, such as store redis; the memory store has none, at Caddyfile.test:4`},
		{"lock {\n\twebdav\n\tkey {http.request.header.X-Doc}\n}",
			`webdav locks resources by their path, so key must be left out (or be {http.request.uri.path}), got "{http.request.header.X-Doc}", at Caddyfile.test:4`},
		{"lock {\n\tkey {http.request.host}\n\twebdav\n}", `so key must be left out (or be {http.request.uri.path}), got "{http.request.host}", at Caddyfile.test:3`},
	} {
		t.Run(tc.want, func(t *testing.T) { assertAdaptError(t, tc.block, tc.want) })
	}
}

// assertAdaptError adapts a site with the given lock block and checks
// that the error says want and names the file and the line.
func assertAdaptError(t *testing.T, block, want string) {
	t.Helper()
	input := "example.com {\n" + block + "\n\treverse_proxy localhost:9000\n}\n"
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": "Caddyfile.test"})
	if err == nil {
		t.Fatalf("adapted without error:\n%s", input)
	}
	msg := err.Error()
	if !strings.Contains(msg, want) {
		t.Fatalf("error %q does not say %q", msg, want)
	}
	if !regexp.MustCompile(`Caddyfile\.test:[2-9]\b`).MatchString(msg) {
		t.Fatalf("error %q does not name the file and line", msg)
	}
}

// TestValidateErrors covers what only the whole config can tell, as
// `caddy run` reports it.
func TestValidateErrors(t *testing.T) {
	for _, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{Exclusive: []string{"PUT"}, Shared: []string{"put"}}, "both exclusive and shared"},
		{Handler{Shared: []string{"GE T"}}, "is not an HTTP method"},
		{Handler{Wait: -1}, "wait must not be negative"},
		{Handler{MaxLocks: -1}, "must not be negative"},
		{Handler{MaxLockBytes: -1}, "max_lock_bytes and max_locks_per_owner must not be negative"},
		{Handler{MaxLocksPerOwner: -1}, "max_lock_bytes and max_locks_per_owner must not be negative"},
		{Handler{Zone: "tenants/a"}, `zone: "tenants/a" must not contain '/'`},
		{Handler{WebDAV: true, Key: "{http.request.header.X-Doc}"}, "webdav locks resources by their path, so key must be left out"},
		{Handler{MaxTimeout: caddy.Duration(time.Hour)}, "need webdav"},
		{Handler{WebDAV: true, MaxTimeout: caddy.Duration(time.Minute), DefaultTimeout: caddy.Duration(time.Hour)}, "default_timeout 1h0m0s is longer than max_timeout 1m0s"},
	} {
		if err := tc.h.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.h, err, tc.want)
		}
	}
}

// TestAdaptRoundTrip checks that the directive orders itself before
// reverse_proxy without an order option, and that the JSON it adapts to
// loads back into the same handler.
func TestAdaptRoundTrip(t *testing.T) {
	input := "example.com {\n\treverse_proxy localhost:9000\n\tlock {\n\t\tshared GET\n\t\twait 1s\n\t\tzone z\n\t}\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	lockAt, proxyAt := strings.Index(s, `"handler":"lock"`), strings.Index(s, `"handler":"reverse_proxy"`)
	if lockAt < 0 || proxyAt < 0 || lockAt > proxyAt {
		t.Fatalf("lock is not ordered before reverse_proxy:\n%s", s)
	}
	start := strings.LastIndex(s[:lockAt], "{")
	var h Handler
	dec := json.NewDecoder(strings.NewReader(s[start:]))
	dec.DisallowUnknownFields()
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		t.Fatal(err)
	}
	delete(raw, "handler")
	obj, _ := json.Marshal(raw)
	strict := json.NewDecoder(strings.NewReader(string(obj)))
	strict.DisallowUnknownFields()
	if err := strict.Decode(&h); err != nil {
		t.Fatalf("adapted JSON %s does not load into Handler: %v", obj, err)
	}
	want := Handler{Shared: []string{"GET"}, Wait: caddy.Duration(time.Second), Zone: "z", Source: "Caddyfile:3"}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("round trip: %+v, want %+v", h, want)
	}
}

// TestZoneSettingsNameBothSites loads, through a real Caddy, configs
// whose handlers of one zone disagree, which only the whole config
// shows: the error names both handlers by their Caddyfile lines and
// says what each has, or, for JSON without lines, still says both values.
func TestZoneSettingsNameBothSites(t *testing.T) {
	for _, tc := range []struct {
		site, want string
	}{
		{
			"route /dav/* {\n lock {\n  webdav\n }\n reverse_proxy localhost:9\n}\nroute {\n lock\n reverse_proxy localhost:9\n}",
			`lock zone "default": its handlers differ in hierarchy: the lock at Caddyfile:8 has hierarchy on (webdav turns it on), ` +
				`the lock at Caddyfile:14 has hierarchy off, so they would keep separate lock tables`,
		},
		{
			"@put method PUT\nlock @put {\n zone mixed\n}\nlock {\n zone mixed\n hierarchy\n}\nreverse_proxy localhost:9",
			`lock zone "mixed": its handlers differ in hierarchy: the lock at Caddyfile:8 has hierarchy off, ` +
				`the lock at Caddyfile:11 has hierarchy on, so they`,
		},
		{
			"@put method PUT\nlock @put {\n zone mixedcase\n case_insensitive\n}\nlock {\n zone mixedcase\n}\nreverse_proxy localhost:9",
			`lock zone "mixedcase": its handlers differ in case_insensitive: the lock at Caddyfile:8 has it on, ` +
				`the lock at Caddyfile:12 has it off, so one would lock /Doc`,
		},
		{
			"@put method PUT\nlock @put {\n zone stores\n}\nlock {\n zone stores\n store redis {\n  address 127.0.0.1:1\n }\n}\nreverse_proxy localhost:9",
			`lock zone "stores": its handlers differ in store settings (the lock at Caddyfile:8 and the lock at Caddyfile:11), ` +
				`so they would keep separate lock tables`,
		},
	} {
		caddyfile := fmt.Sprintf("{\nadmin off\npersist_config off\nauto_https off\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", freePort(t), tc.site)
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
		if err != nil {
			t.Fatal(err)
		}
		assertLoadError(t, cfg, tc.want)
	}
	// JSON written by hand has no lines: the handlers are still told
	// apart by what each has.
	cfg := fmt.Sprintf(`{"admin":{"disabled":true},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:%d"],"routes":[{"handle":[`+
		`{"handler":"lock","zone":"json","case_insensitive":true},{"handler":"lock","zone":"json"}]}]}}}}}`, freePort(t))
	assertLoadError(t, []byte(cfg), `lock zone "json": its handlers differ in case_insensitive: one lock handler has it on, another lock handler has it off`)
}

// assertLoadError loads cfg into a real Caddy and checks that it fails
// saying want.
func assertLoadError(t *testing.T, cfg []byte, want string) {
	t.Helper()
	err := caddy.Load(cfg, true)
	if err == nil {
		_ = caddy.Stop()
		t.Fatalf("loaded a config whose handlers of one zone disagree:\n%s", cfg)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}
