package caddylock

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
)

// adminDo sends a request to Caddy's admin endpoint.
func adminDo(t *testing.T, admin, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func TestAdminAPI(t *testing.T) {
	bk := newBackend(t)
	site := `handle /plain/* {
	lock {
		zone AdminPlain
	}
	reverse_proxy {backend}
}
handle {
	lock {
		webdav
		zone AdminDAV
	}
	reverse_proxy {backend}
}`
	url, admin := startCaddyAdmin(t, "", site, bk)

	// A maintenance window on /billing.
	status, body := adminDo(t, admin, "POST", "/lock/AdminDAV", `{"path": "/billing", "depth": "infinity", "timeout": "30m", "owner": "maintenance <ops>"}`)
	if status != http.StatusCreated {
		t.Fatalf("POST: %d %s", status, body)
	}
	var created struct {
		Token       string    `json:"token"`
		Root        string    `json:"root"`
		Expires     time.Time `json:"expires"`
		TokenPrefix string    `json:"token_prefix"`
	}
	if err := json.Unmarshal([]byte(body), &created); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.Token, "urn:uuid:") || created.Root != "/billing" || !strings.HasPrefix(created.Token, created.TokenPrefix) ||
		len(created.TokenPrefix) >= len(created.Token) || time.Until(created.Expires) < 29*time.Minute {
		t.Fatalf("created lock: %s", body)
	}

	// Every write under /billing gets 423 with Retry-After until the
	// window ends; reads pass.
	r := mustDo(t, "PUT", url+"/billing/invoice/7", nil, http.StatusLocked)
	if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); ra < 1790 || ra > 1800 {
		t.Fatalf("Retry-After = %q, want about 1800", r.header.Get("Retry-After"))
	}
	if !strings.Contains(r.body, `"explicit":true`) || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("refusal: %s", r.body)
	}
	assertDAVError(t, davDo(t, "DELETE", url+"/billing", "", map[string]string{"Depth": "infinity"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/billing")
	mustDo(t, "GET", url+"/billing/invoice/7", nil, http.StatusOK)
	mustDo(t, "PUT", url+"/other", nil, http.StatusOK)
	// Nobody can use the window's token through the proxy.
	davMust(t, http.StatusLocked, "PUT", url+"/billing/x", "", ifToken(created.Token))
	davMust(t, http.StatusForbidden, "UNLOCK", url+"/billing", "", map[string]string{"Lock-Token": "<" + created.Token + ">"})
	if w, _, _ := bk.counts(); w != 1 {
		t.Fatalf("backend saw %d writes, want only PUT /other", w)
	}

	// A zone without webdav honours maintenance locks too.
	status, body = adminDo(t, admin, "POST", "/lock/AdminPlain", `{"path": "/plain/doc", "depth": "0", "timeout": "1m", "owner": "ops"}`)
	if status != http.StatusCreated {
		t.Fatalf("POST: %d %s", status, body)
	}
	var plainLock struct{ Token string }
	_ = json.Unmarshal([]byte(body), &plainLock)
	mustDo(t, "PUT", url+"/plain/doc", nil, http.StatusLocked)
	mustDo(t, "PUT", url+"/plain/doc/below", nil, http.StatusOK) // depth 0

	// The listing shows both windows and an in-flight write, never a
	// whole token.
	done := holdWrite(t, bk, "PUT", url+"/busy", "busy")
	status, body = adminDo(t, admin, "GET", "/lock/", "")
	bk.open("busy")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("held write: %d", r.status)
	}
	if status != http.StatusOK {
		t.Fatalf("GET: %d %s", status, body)
	}
	if strings.Contains(body, created.Token) || strings.Contains(body, plainLock.Token) {
		t.Fatalf("the listing reveals a token: %s", body)
	}
	var list []adminLock
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatal(err)
	}
	var sawBilling, sawPlain, sawBusy bool
	for _, l := range list {
		switch {
		case l.Zone == "AdminDAV" && l.Root == "/billing":
			sawBilling = l.Scope == "exclusive" && l.Depth == "infinity" && l.Owner == "maintenance <ops>" &&
				l.Creator == "admin" && l.TokenPrefix == created.TokenPrefix && l.Expires != nil && !l.InFlight
		case l.Zone == "AdminPlain" && l.Root == "/plain/doc":
			sawPlain = l.Depth == "0" && !l.InFlight
		case l.Zone == "AdminDAV" && l.Root == "/busy":
			sawBusy = l.InFlight && l.Scope == "exclusive" && l.Holders == 1 && !l.Created.IsZero()
		}
	}
	if !sawBilling || !sawPlain || !sawBusy {
		t.Fatalf("listing (billing %v, plain %v, in-flight %v): %s", sawBilling, sawPlain, sawBusy, body)
	}

	// Conflicts and bad requests.
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/lock/AdminDAV", `{"path": "/billing/q", "timeout": "1m"}`, http.StatusConflict},
		{"POST", "/lock/nosuchzone", `{"path": "/x", "timeout": "1m"}`, http.StatusNotFound},
		{"POST", "/lock/AdminDAV", `{"path": "x", "timeout": "1m"}`, http.StatusBadRequest},
		{"POST", "/lock/AdminDAV", `{"path": "/x", "timeout": "soon"}`, http.StatusBadRequest},
		// Shorter than the stores keep (Redis expires in whole
		// milliseconds): refused as input, not created and gone.
		{"POST", "/lock/AdminDAV", `{"path": "/x", "timeout": "500us"}`, http.StatusBadRequest},
		{"POST", "/lock/AdminDAV", `{"path": "/x", "timeout": "1m", "depth": "1"}`, http.StatusBadRequest},
		// A NUL byte in the key, which no request may have (it gets
		// 400 too): a lock there protects nothing.
		{"POST", "/lock/AdminDAV", `{"path": "/nul%00x", "timeout": "1m"}`, http.StatusBadRequest},
		{"POST", "/lock/AdminDAV", `{"path": "/nul\u0000x", "timeout": "1m"}`, http.StatusBadRequest},
		{"POST", "/lock/AdminDAV", `{"path": "/x", "timeout": "1m", "colour": "red"}`, http.StatusBadRequest},
		{"POST", "/lock/AdminDAV", `{"path": "/x", "timeout": "1m", "scope": "both"}`, http.StatusBadRequest},
		{"DELETE", "/lock/AdminDAV/urn:uuid", "", http.StatusBadRequest},
		{"DELETE", "/lock/AdminDAV/urn:uuid:00000000", "", http.StatusNotFound},
		{"PUT", "/lock/AdminDAV", "", http.StatusNotFound},
		// A body with more after the request (two objects, a
		// truncated paste) is malformed, not half-read.
		{"POST", "/lock/AdminDAV", `{"path": "/trail", "timeout": "1m"} {"path": "/trail2"}`, http.StatusBadRequest},
		{"POST", "/lock/AdminDAV", `{"path": "/trail", "timeout": "1m"}]`, http.StatusBadRequest},
	} {
		if status, body := adminDo(t, admin, c.method, c.path, c.body); status != c.want || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s %s: %d %s, want %d with an error", c.method, c.path, c.body, status, body, c.want)
		}
	}
	// The refused requests locked nothing.
	mustDo(t, "PUT", url+"/trail", nil, http.StatusOK)

	// Force-unlock by the listed prefix; writes pass again.
	if status, body := adminDo(t, admin, "DELETE", "/lock/AdminDAV/"+created.TokenPrefix, ""); status != http.StatusOK {
		t.Fatalf("DELETE: %d %s", status, body)
	}
	mustDo(t, "PUT", url+"/billing/invoice/7", nil, http.StatusOK)
	if status, _ := adminDo(t, admin, "DELETE", "/lock/AdminDAV/"+created.TokenPrefix, ""); status != http.StatusNotFound {
		t.Fatalf("second DELETE: %d, want 404", status)
	}
	// The full token works too.
	if status, body := adminDo(t, admin, "DELETE", "/lock/AdminPlain/"+plainLock.Token, ""); status != http.StatusOK {
		t.Fatalf("DELETE by full token: %d %s", status, body)
	}
	mustDo(t, "PUT", url+"/plain/doc", nil, http.StatusOK)
}

// The admin API in front of the lock-less WebDAV backend: a maintenance
// lock shows in PROPFIND's lockdiscovery, refuses a WebDAV client's write
// below it before the backend, and a force-unlock lets the write through.
func TestAdminAPIOnWebDAVBackend(t *testing.T) {
	b := newDAVBackend(t)
	b.mkdir(t, "/billing")
	b.put(t, "/billing/invoice", "v1")
	url, admin := startCaddyAdmin(t, "", davSiteConfig(t, b, "", ""), nil)
	zone := "/lock/" + t.Name()

	status, body := adminDo(t, admin, "POST", zone, `{"path": "/billing", "timeout": "10m", "owner": "maintenance"}`)
	if status != http.StatusCreated {
		t.Fatalf("POST: %d %s", status, body)
	}
	var created struct {
		TokenPrefix string `json:"token_prefix"`
	}
	if err := json.Unmarshal([]byte(body), &created); err != nil {
		t.Fatal(err)
	}
	ms := propfind(t, url+"/billing/invoice", "0", "")
	var roots []string
	for _, resp := range ms.Responses {
		for _, ps := range resp.Propstat {
			if ps.Prop.LockDiscovery != nil {
				for _, l := range ps.Prop.LockDiscovery.Locks {
					roots = append(roots, l.Root+" "+l.Depth)
				}
			}
		}
	}
	if !slices.Equal(roots, []string{"/billing infinity"}) {
		t.Fatalf("lockdiscovery of /billing/invoice: %q, want the maintenance lock on /billing", roots)
	}
	assertDAVError(t, davDo(t, "PUT", url+"/billing/invoice", "v2", map[string]string{"Accept": "text/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/billing")
	if n := b.saw("PUT /billing/invoice"); n != 0 {
		t.Fatalf("%d refused writes reached the backend", n)
	}
	if status, body := adminDo(t, admin, "DELETE", zone+"/"+created.TokenPrefix, ""); status != http.StatusOK {
		t.Fatalf("DELETE: %d %s", status, body)
	}
	davMust(t, http.StatusCreated, "PUT", url+"/billing/invoice", "v2", nil)
	if n := b.saw("PUT /billing/invoice"); n != 1 {
		t.Fatalf("backend saw %d writes after the unlock, want 1", n)
	}
}

// With case_insensitive, a maintenance lock's path is folded as request
// paths are: a write to the path it names is refused. Each name is one
// whose letters lower-case differently once upper-cased (ς, ı, ſ).
func TestAdminLockCaseFolded(t *testing.T) {
	bk := newBackend(t)
	url, admin := startCaddyAdmin(t, "", "lock {\n zone AdminFold\n case_insensitive\n}\nreverse_proxy {backend}", bk)
	for _, name := range []string{"/λόγος", "/kapı", "/ſtate"} {
		if status, body := adminDo(t, admin, "POST", "/lock/AdminFold", `{"path": "`+name+`", "depth": "0", "timeout": "1m"}`); status != http.StatusCreated {
			t.Fatalf("POST %s: %d %s", name, status, body)
		}
		mustDo(t, "PUT", url+name, nil, http.StatusLocked)
	}
	if w, _, _ := bk.counts(); w != 0 {
		t.Fatalf("%d writes under maintenance locks reached the backend", w)
	}
}

// In a zone with hierarchy, a write covers what is below its key, so a
// write above a maintenance lock is refused too, as it would be by a
// write in flight there. Without hierarchy it passes.
func TestAdminLockBelowWriteWithHierarchy(t *testing.T) {
	bk := newBackend(t)
	site := `handle /flat/* {
	lock {
		zone AdminFlat
	}
	reverse_proxy {backend}
}
handle {
	lock {
		zone AdminTree
		hierarchy
	}
	reverse_proxy {backend}
}`
	url, admin := startCaddyAdmin(t, "", site, bk)
	// A write above the lock in flight is one the window must wait for.
	done := holdWrite(t, bk, "DELETE", url+"/billing", "above")
	for _, zone := range []string{"AdminTree", "AdminFlat"} {
		root, running := "/billing/invoice", 1
		if zone == "AdminFlat" {
			root, running = "/flat/billing/invoice", 0
		}
		status, body := adminDo(t, admin, "POST", "/lock/"+zone, `{"path": "`+root+`", "timeout": "1m", "drain": "0"}`)
		var c struct {
			Running int `json:"writes_in_flight"`
		}
		if err := json.Unmarshal([]byte(body), &c); status != http.StatusCreated || err != nil || c.Running != running {
			t.Fatalf("POST %s: %d %s, want 201 with %d writes in flight", zone, status, body, running)
		}
	}
	bk.open("above")
	<-done
	for _, p := range []string{"/billing", "/", "/billing/invoice/7"} {
		r := mustDo(t, "DELETE", url+p, nil, http.StatusLocked)
		if !strings.Contains(r.body, `"explicit":true`) {
			t.Fatalf("DELETE %s: %s", p, r.body)
		}
	}
	mustDo(t, "PUT", url+"/billing2", nil, http.StatusOK)
	mustDo(t, "DELETE", url+"/flat/billing", nil, http.StatusOK)
	if w, _, _ := bk.counts(); w != 3 {
		t.Fatalf("backend saw %d writes, want only the held DELETE /billing, PUT /billing2 and DELETE /flat/billing", w)
	}
}

// A maintenance lock refuses new writes at once, and its POST answers
// when the writes already in flight under it are done (or its drain
// bound passes), so that an operator knows nothing is writing.
func TestAdminMaintenanceDrain(t *testing.T) {
	bk := newBackend(t)
	url, admin := startCaddyAdmin(t, "", `lock {
	zone AdminDrain
}
reverse_proxy {backend}`, bk)

	type created struct {
		Token   string `json:"token"`
		Running int    `json:"writes_in_flight"`
	}
	post := func(body string) (int, created) {
		status, resp := adminDo(t, admin, "POST", "/lock/AdminDrain", body)
		var c created
		if status == http.StatusCreated {
			if err := json.Unmarshal([]byte(resp), &c); err != nil {
				t.Fatalf("POST answer %s: %v", resp, err)
			}
		}
		return status, c
	}

	// A write under /billing is in flight, one elsewhere too.
	under := holdWrite(t, bk, "PUT", url+"/billing/run", "under")
	other := holdWrite(t, bk, "PUT", url+"/elsewhere", "other")

	type answer struct {
		status int
		c      created
		at     time.Time
	}
	answered := make(chan answer, 1)
	go func() {
		s, c := post(`{"path": "/billing", "timeout": "1m", "drain": "20s"}`)
		answered <- answer{s, c, time.Now()}
	}()
	// While the POST waits, the lock already refuses new writes under it
	// (the lock exists before the drain starts; poll until it does).
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := do(http.DefaultClient, "PUT", url+"/billing/new", nil)
		if r.status == http.StatusLocked {
			break
		}
		if r.status != http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("PUT under the new maintenance lock: %d", r.status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// An answer before the write under /billing ends shows here, or as
	// an answer time before released below.
	select {
	case a := <-answered:
		t.Fatalf("POST answered %d (%+v) while a write under /billing was in flight", a.status, a.c)
	default:
	}
	released := time.Now()
	bk.open("under")
	if r := <-under; r.status != http.StatusOK {
		t.Fatalf("the write in flight: %d, want 200", r.status)
	}
	a := <-answered
	if a.status != http.StatusCreated || a.c.Running != 0 || a.at.Before(released) {
		t.Fatalf("POST: %d %+v, answered before the write ended: %v", a.status, a.c, a.at.Before(released))
	}
	// The write elsewhere was not waited for and is still running.
	select {
	case r := <-other:
		t.Fatalf("the write elsewhere ended early: %d", r.status)
	default:
	}

	// With "drain": "0" the answer comes at once and counts the writes
	// still running under the lock.
	status, c := post(`{"path": "/elsewhere", "depth": "0", "timeout": "1m", "drain": "0"}`)
	if status != http.StatusCreated || c.Running != 1 {
		t.Fatalf(`POST with "drain": "0": %d %+v, want 201 with 1 write in flight`, status, c)
	}
	bk.open("other")
	if r := <-other; r.status != http.StatusOK {
		t.Fatalf("the write elsewhere: %d", r.status)
	}
	if status, body := adminDo(t, admin, "POST", "/lock/AdminDrain", `{"path": "/x", "timeout": "1m", "drain": "-1s"}`); status != http.StatusBadRequest {
		t.Fatalf("negative drain: %d %s", status, body)
	}
}

// A maintenance lock ends by its timeout or DELETE, whatever reloads come
// in between: also one that turns the zone's hierarchy on or off, which
// gives the in-flight locks a new table.
func TestAdminLockOutlivesHierarchyReload(t *testing.T) {
	bk := newBackend(t)
	adminPort := freePort(t)
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	global := fmt.Sprintf("admin 127.0.0.1:%d", adminPort)
	port := freePort(t)
	url := loadCaddy(t, port, global, "lock {\n zone AdminReload\n}\nreverse_proxy {backend}", bk)
	t.Cleanup(func() { _ = caddy.Stop() })
	if status, body := adminDo(t, admin, "POST", "/lock/AdminReload", `{"path": "/billing", "timeout": "30m", "drain": "0"}`); status != http.StatusCreated {
		t.Fatalf("POST: %d %s", status, body)
	}
	mustDo(t, http.MethodPut, url+"/billing/7", nil, http.StatusLocked)

	// A fresh connection each time: one kept alive may reach the old
	// server while it shuts down.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i, settings := range []string{"hierarchy", ""} {
		config := strconv.Itoa(i + 2)
		loadCaddy(t, port, global, "lock {\n zone AdminReload\n "+settings+"\n}\nheader X-Config "+config+"\nreverse_proxy {backend}", bk)
		var r result
		waitFor(t, 5*time.Second, "the new config to serve", func() bool {
			r = do(fresh, http.MethodPut, url+"/billing/7", nil)
			return r.header.Get("X-Config") == config
		})
		if r.status != http.StatusLocked || !strings.Contains(r.body, `"explicit":true`) {
			t.Fatalf("a write under the maintenance lock after a reload to %q: %d %s", settings, r.status, r.body)
		}
		status, body := adminDo(t, admin, "GET", "/lock/", "")
		if status != http.StatusOK || !strings.Contains(body, `"root":"/billing"`) {
			t.Fatalf("listing after a reload to %q: %d %s", settings, status, body)
		}
	}
	if w, _, _ := bk.counts(); w != 0 {
		t.Fatalf("the backend saw %d writes under the maintenance lock", w)
	}
}

// A maintenance lock's drain goes on across a reload that changes the
// zone's Redis settings, which closes the old client once nothing uses
// it: the POST, which watches the zone it started with, still does, and
// waits for a write that another instance has in flight under the lock.
func TestAdminDrainAcrossRedisReload(t *testing.T) {
	srv := startRedis(t)
	bk := newBackend(t)
	adminPort := freePort(t)
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	global := fmt.Sprintf("admin 127.0.0.1:%d", adminPort)
	port := freePort(t)
	site := redisSite(srv, "AdminRedisDrain", "", "")
	url := loadCaddy(t, port, global, site, bk)
	t.Cleanup(func() { _ = caddy.Stop() })
	// Another instance's write under /billing is in flight.
	other := newRedisLocker(t, srv, "AdminRedisDrain", redisOpts{lease: time.Minute})
	write := redisAcquire(t, other, "/billing/run", lockstore.Exclusive)

	type answer struct {
		status int
		body   string
	}
	answered := make(chan answer, 1)
	go func() {
		status, body := adminDo(t, admin, "POST", "/lock/AdminRedisDrain", `{"path": "/billing", "timeout": "1m", "drain": "8s"}`)
		answered <- answer{status, body}
	}()
	waitFor(t, 5*time.Second, "the maintenance lock to refuse writes", func() bool {
		return do(http.DefaultClient, http.MethodPut, url+"/billing/new", nil).status == http.StatusLocked
	})
	// The reload hands the old zone to its closer, which runs under this
	// label: once a goroutine of it waits in its poll, it has looked and
	// found the zone in use. One that closed the client under the drain
	// never waits.
	label := t.Name()
	labelled(label, func() {
		loadCaddy(t, port, global, strings.Replace(site, "timeout 200ms", "timeout 250ms", 1), bk)
	})
	waitParked(t, label, "")
	select {
	case a := <-answered:
		t.Fatalf("POST answered %d %s while a write under /billing was in flight", a.status, a.body)
	default:
	}
	write.Release()
	a := <-answered
	var c struct {
		Running int `json:"writes_in_flight"`
	}
	if err := json.Unmarshal([]byte(a.body), &c); a.status != http.StatusCreated || err != nil || c.Running != 0 {
		t.Fatalf("POST: %d %s, want 201 with no write in flight", a.status, a.body)
	}
}

// Tokens are never logged in full: a LOCK, a refused write, an UNLOCK,
// and a maintenance lock taken and force-unlocked by its whole token
// through the admin API, with caddy-lock's loggers writing JSON at DEBUG
// to a file. Each of those log lines names its lock by the token's
// prefix, which shows that the lines were written.
func TestTokensNotLoggedInFull(t *testing.T) {
	b := newDAVBackend(t)
	logFile := filepath.Join(t.TempDir(), "lock.log")
	global := fmt.Sprintf("log locks {\n output file %s\n format json\n level DEBUG\n include http.handlers.lock admin.api.lock\n}", logFile)
	url, admin := startCaddyAdmin(t, global, davSiteConfig(t, b, "", ""), nil)

	b.put(t, "/doc", "x")
	tok, _ := davLock(t, url+"/doc", "exclusive", "a", nil, http.StatusOK)
	assertDAVError(t, davDo(t, "PUT", url+"/doc", "y", map[string]string{"Accept": "application/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/doc")
	davMust(t, http.StatusNoContent, "UNLOCK", url+"/doc", "", map[string]string{"Lock-Token": "<" + tok + ">"})
	status, body := adminDo(t, admin, "POST", "/lock/"+t.Name(), `{"path": "/maint", "timeout": "1m"}`)
	var maint struct{ Token string }
	if err := json.Unmarshal([]byte(body), &maint); status != http.StatusCreated || err != nil || maint.Token == "" {
		t.Fatalf("POST: %d %s", status, body)
	}
	if status, body := adminDo(t, admin, "DELETE", "/lock/"+t.Name()+"/"+maint.Token, ""); status != http.StatusOK {
		t.Fatalf("DELETE by the whole token: %d %s", status, body)
	}
	_ = caddy.Stop() // closes the log file

	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, full := range []string{tok, maint.Token} {
		// Not the token, nor the part of it that its prefix leaves out.
		if rest := full[len(tokenPrefix(full)):]; strings.Contains(string(data), full) || strings.Contains(string(data), rest) {
			t.Fatalf("the log holds the token %s in full:\n%s", full, data)
		}
	}
	want := map[string]string{
		"locked":                             tokenPrefix(tok),
		"explicit lock conflict":             tokenPrefix(tok),
		"unlocked":                           tokenPrefix(tok),
		"maintenance lock taken":             tokenPrefix(maint.Token),
		"lock removed through the admin API": tokenPrefix(maint.Token),
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		var entry struct{ Msg, Token string }
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if p, ok := want[entry.Msg]; ok && entry.Token == p {
			delete(want, entry.Msg)
		}
	}
	if len(want) > 0 {
		t.Fatalf("log lines missing, or without the token prefix: %v\n%s", want, data)
	}
}

func TestWritesUnder(t *testing.T) {
	inf := lockstore.ExplicitLock{Root: "/a", Depth: lockstore.DepthInfinity}
	zero := lockstore.ExplicitLock{Root: "/a", Depth: lockstore.DepthZero}
	root := lockstore.ExplicitLock{Root: "/", Depth: lockstore.DepthZero}
	for _, c := range []struct {
		l    lockstore.ExplicitLock
		key  string
		want bool
	}{
		{inf, "/a", true}, {inf, "/a/b/c", true}, {inf, "/ab", false}, {inf, "/", false},
		{zero, "/a", true}, {zero, "/a/b", true}, {zero, "/a/b/c", false}, {zero, "/ab", false},
		{root, "/x", true}, {root, "/x/y", false}, {root, "/", true},
	} {
		if got := writesUnder(c.l, c.key); got != c.want {
			t.Errorf("writesUnder(%s depth %s, %q) = %v, want %v", c.l.Root, c.l.Depth, c.key, got, c.want)
		}
	}
}

// A write refused by a maintenance lock is counted as a conflict, as its
// {http.lock.result} says, not as acquired: the in-flight lock it took
// first is let go without the write going upstream.
func TestAdminMaintenanceRefusalCounted(t *testing.T) {
	bk := newBackend(t)
	zone := fmt.Sprintf("AdminCount%d", meteredRuns.Add(1))
	url, admin := startCaddyAdmin(t, "metrics",
		"lock {\n\tzone "+zone+"\n}\nreverse_proxy {backend} {\n\theader_down X-Result {http.lock.result}\n}", bk)
	if status, body := adminDo(t, admin, "POST", "/lock/"+zone, `{"path": "/billing", "timeout": "1m", "drain": "0"}`); status != http.StatusCreated {
		t.Fatalf("POST: %d %s", status, body)
	}
	metrics := admin + "/metrics"
	acquired := fmt.Sprintf(`caddy_lock_requests_total{result="acquired",zone="%s"}`, zone)
	conflict := fmt.Sprintf(`caddy_lock_requests_total{result="conflict",zone="%s"}`, zone)
	mustDo(t, http.MethodPut, url+"/other", nil, http.StatusOK)
	r := mustDo(t, http.MethodPut, url+"/billing", nil, http.StatusLocked)
	if r.header.Get("Retry-After") == "" {
		t.Fatalf("refusal without Retry-After: %v", r.header)
	}
	if a, c := metricValue(t, metrics, acquired), metricValue(t, metrics, conflict); a != 1 || c != 1 {
		t.Fatalf("counted %v acquired and %v conflicts, want 1 and 1", a, c)
	}
}

// A shared maintenance lock lets a WebDAV client take a shared lock
// beside it (the scopes agree), but not write with that lock's token:
// nobody writes under a maintenance lock.
func TestAdminSharedLockNotOpenedByClientLock(t *testing.T) {
	b := newDAVBackend(t)
	b.put(t, "/f", "v1")
	url, admin := startCaddyAdmin(t, "", davSiteConfig(t, b, "", ""), nil)
	status, body := adminDo(t, admin, "POST", "/lock/"+t.Name(), `{"path": "/f", "timeout": "10m", "scope": "shared", "owner": "maintenance"}`)
	if status != http.StatusCreated {
		t.Fatalf("POST: %d %s", status, body)
	}
	tok, _ := davLock(t, url+"/f", "shared", "a", nil, http.StatusOK)
	assertDAVError(t, davDo(t, "PUT", url+"/f", "v2", map[string]string{"If": "(<" + tok + ">)", "Accept": "text/xml"}), http.StatusLocked, dav.CondLockTokenSubmitted, "/f")
	if n := b.saw("PUT /f"); n != 0 {
		t.Fatalf("%d writes under the maintenance lock reached the backend", n)
	}
}

// DELETE /lock/<zone>/<prefix> with a prefix that two tokens share gets
// 409 and removes neither lock: force-unlocking whichever came first
// would end a maintenance window nobody meant to end. Tokens are random,
// so the two locks are put into the zone's store with tokens chosen to
// share their first 8 hex digits, the shortest prefix DELETE accepts.
func TestAdminDeleteAmbiguousPrefix(t *testing.T) {
	bk := newBackend(t)
	url, admin := startCaddyAdmin(t, "", "lock {\n zone AdminAmbiguous\n}\nreverse_proxy {backend}", bk)
	store := zoneStore(t, "AdminAmbiguous")
	const shared = "urn:uuid:5eed0000"
	tokens := map[string]string{
		"/one": shared + "-0000-4000-8000-000000000001",
		"/two": shared + "-0000-4000-8000-000000000002",
	}
	for root, tok := range tokens {
		if _, err := store.Create(context.Background(), lockstore.ExplicitLock{Token: tok, Root: root, Href: root, Scope: lockstore.Exclusive,
			Depth: lockstore.DepthInfinity, Owner: []byte("ops"), Creator: lockstore.AdminCreator, Timeout: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	status, body := adminDo(t, admin, "DELETE", "/lock/AdminAmbiguous/"+shared, "")
	if status != http.StatusConflict || !strings.Contains(body, "give more of the token") {
		t.Fatalf("DELETE by a prefix of two tokens: %d %s, want 409 saying to give more", status, body)
	}
	for root, tok := range tokens {
		if _, err := store.Get(context.Background(), tok); err != nil {
			t.Fatalf("the lock on %s after the refused DELETE: %v", root, err)
		}
		mustDo(t, http.MethodPut, url+root, nil, http.StatusLocked)
	}
	// The whole token tells them apart.
	if status, body := adminDo(t, admin, "DELETE", "/lock/AdminAmbiguous/"+tokens["/one"], ""); status != http.StatusOK {
		t.Fatalf("DELETE by the whole token: %d %s", status, body)
	}
	mustDo(t, http.MethodPut, url+"/one", nil, http.StatusOK)
	mustDo(t, http.MethodPut, url+"/two", nil, http.StatusLocked)
	if w, _, _ := bk.counts(); w != 1 {
		t.Fatalf("the backend saw %d writes, want only the one after the unlock", w)
	}
}
