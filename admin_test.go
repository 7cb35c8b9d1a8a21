package caddylock

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

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
	adminPort := freePort(t)
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
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
	url := loadCaddy(t, freePort(t), fmt.Sprintf("admin 127.0.0.1:%d", adminPort), site, bk)
	t.Cleanup(func() { _ = caddy.Stop() })

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
	assertDAVError(t, davDo(t, "DELETE", url+"/billing", "", map[string]string{"Depth": "infinity"}), http.StatusLocked, CondLockTokenSubmitted, "/billing")
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
	done := make(chan result)
	go func() { done <- do(http.DefaultClient, "PUT", url+"/busy", map[string]string{"X-Hold": "busy"}) }()
	bk.waitStarted(t, "busy")
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
		{"POST", "/lock/AdminDAV", `{"path": "/x", "timeout": "1m", "depth": "1"}`, http.StatusBadRequest},
		{"POST", "/lock/AdminDAV", `{"path": "/x", "timeout": "1m", "colour": "red"}`, http.StatusBadRequest},
		{"POST", "/lock/AdminDAV", `{"path": "/x", "timeout": "1m", "scope": "both"}`, http.StatusBadRequest},
		{"DELETE", "/lock/AdminDAV/urn:uuid", "", http.StatusBadRequest},
		{"DELETE", "/lock/AdminDAV/urn:uuid:00000000", "", http.StatusNotFound},
		{"PUT", "/lock/AdminDAV", "", http.StatusNotFound},
	} {
		if status, body := adminDo(t, admin, c.method, c.path, c.body); status != c.want || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s %s: %d %s, want %d with an error", c.method, c.path, c.body, status, body, c.want)
		}
	}

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
