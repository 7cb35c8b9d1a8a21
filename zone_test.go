package caddylock

// Zones across reloads: locks kept, settings that must agree, limits and
// records of configs that are gone (zone.go).

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

func TestReloadKeepsLocks(t *testing.T) {
	b := newBackend(t)
	port := freePort(t)
	site := "lock {\n zone reload\n}\nreverse_proxy {backend}"
	url := loadCaddy(t, port, "", site, b)
	t.Cleanup(func() { _ = caddy.Stop() })
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	// A new config (changed, so Caddy really reloads) while the write is
	// in flight under the old one.
	loadCaddy(t, port, "", site+"\nheader X-Config two", b)
	// A fresh connection each time: an idle keep-alive connection to the
	// old server would still be answered by the old config while it
	// shuts down.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	r := do(fresh, http.MethodPut, url+"/doc", nil)
	for deadline := time.Now().Add(5 * time.Second); r.header.Get("X-Config") != "two" && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		r = do(fresh, http.MethodPut, url+"/doc", nil)
	}
	if r.header.Get("X-Config") != "two" {
		t.Fatalf("the new config is not serving: %d %v", r.status, r.header)
	}
	assertLocked(t, r, "/doc")
	b.open("w")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the write under the old config: %d", r.status)
	}
	waitEmpty(t, zoneTable(t, "reload"))
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
}

// Two handlers of one config that name one zone but would get separate
// tables, or fold case differently, do not load: webdav turns hierarchy
// on, so a WebDAV route and a plain one on the default zone would not see
// each other's locks, nor would /Doc and /doc through handlers that fold
// case and do not. The
// same zone under a new config with another setting does load (a reload
// starts a new table, as README.md says).
func TestZoneSettingsMustAgree(t *testing.T) {
	b := newBackend(t)
	for _, site := range []string{
		"route /dav/* {\n lock {\n  webdav\n }\n reverse_proxy {backend}\n}\nroute {\n lock\n reverse_proxy {backend}\n}",
		"@put method PUT\nlock @put {\n zone mixed\n}\nlock {\n zone mixed\n hierarchy\n}\nreverse_proxy {backend}",
		"@put method PUT\nlock @put {\n zone mixedcase\n case_insensitive\n}\nlock {\n zone mixedcase\n}\nreverse_proxy {backend}",
	} {
		site = strings.ReplaceAll(site, "{backend}", strings.TrimPrefix(b.URL, "http://"))
		caddyfile := fmt.Sprintf("{\nadmin off\npersist_config off\nauto_https off\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", freePort(t), site)
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = caddy.Load(cfg, true)
		if err == nil {
			_ = caddy.Stop()
			t.Fatalf("loaded a config whose handlers of one zone keep separate tables:\n%s", caddyfile)
		}
		if !strings.Contains(err.Error(), "would keep separate lock tables") && !strings.Contains(err.Error(), "neither would see the other's lock") {
			t.Fatalf("error %q does not say why", err)
		}
	}
	port := freePort(t)
	url := loadCaddy(t, port, "", "lock {\n zone changing\n}\nreverse_proxy {backend}", b)
	t.Cleanup(func() { _ = caddy.Stop() })
	loadCaddy(t, port, "", "lock {\n zone changing\n hierarchy\n}\nreverse_proxy {backend}", b)
	// The old server may still accept a connection while it shuts down.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, 5*time.Second, "a write under the new config", func() bool {
		return do(fresh, http.MethodPut, url+"/doc", nil).status == http.StatusOK
	})
}

// A reload that fails leaves the running config as it was: the limits of
// a zone stay those of the config that serves it, not those of a handler
// of the failed config that was provisioned before another one failed.
func TestFailedReloadKeepsZoneLimits(t *testing.T) {
	b := newBackend(t)
	port := freePort(t)
	url := loadCaddy(t, port, "", "lock {\n zone keeplimits\n max_locks 2\n}\nreverse_proxy {backend}", b)
	t.Cleanup(func() { _ = caddy.Stop() })

	// The same zone with max_locks 1, then a handler that cannot be
	// provisioned (a store whose password resolves to nothing; adapting
	// cannot tell).
	bad := fmt.Sprintf("{\nadmin off\npersist_config off\nauto_https off\nlog {\n output discard\n}\n}\nhttp://127.0.0.1:%d {\n"+
		"route /x/* {\n lock {\n  zone keeplimits\n  max_locks 1\n }\n}\n"+
		"lock {\n zone keeplimits_other\n store redis {\n  address 127.0.0.1:1\n  password {env.CADDY_LOCK_UNSET_VARIABLE}\n }\n}\nreverse_proxy %s\n}\n",
		port, strings.TrimPrefix(b.URL, "http://"))
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(bad), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err == nil || !strings.Contains(err.Error(), "resolves to an empty value") {
		t.Fatalf("loading a config with a handler that cannot be provisioned: %v", err)
	}

	// The running config still lets two writes run at once.
	done := holdWrite(t, b, http.MethodPut, url+"/a", "a")
	mustDo(t, http.MethodPut, url+"/b", nil, http.StatusOK)
	b.open("a")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("the held write: %d %v", r.status, r.err)
	}
}

// Each config records the table keys of its zones while it loads; the
// record goes when the config is unloaded, so reloads do not pile up.
func TestReloadsForgetZoneRecords(t *testing.T) {
	b := newBackend(t)
	port := freePort(t)
	records := func() int {
		n := 0
		configZones.Range(func(any, any) bool { n++; return true })
		return n
	}
	before := records()
	for i := range 5 {
		loadCaddy(t, port, "", fmt.Sprintf("lock {\n zone records\n}\nheader X-Config %d\nreverse_proxy {backend}", i), b)
	}
	_ = caddy.Stop()
	waitFor(t, 5*time.Second, "the records of the unloaded configs to go", func() bool { return records() <= before })
}
