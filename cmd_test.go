package caddylock

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// runLockCmd runs `caddy lock args...` in the test process, as Caddy's
// command line would, and returns what it printed on stdout.
func runLockCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := &cobra.Command{Use: "lock", SilenceErrors: true}
	setupLockCommand(cmd)
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func mustLockCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runLockCmd(t, args...)
	if err != nil {
		t.Fatalf("caddy lock %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

const cliSite = `lock {
	zone CliZone
}
reverse_proxy {backend}`

func TestLockCommandRegistered(t *testing.T) {
	if _, ok := caddycmd.Commands()["lock"]; !ok {
		t.Fatal("caddy lock is not registered with Caddy's command line")
	}
}

func TestLockCommandList(t *testing.T) {
	bk := newBackend(t)
	url, admin := startCaddyAdmin(t, "", cliSite, bk)
	addr := strings.TrimPrefix(admin, "http://")

	out := mustLockCmd(t, "list", "--address", addr)
	if strings.TrimSpace(out) != "no locks" {
		t.Fatalf("list with nothing held:\n%s", out)
	}

	held := holdWrite(t, bk, "PUT", url+"/docs/report", "held")
	out = mustLockCmd(t, "list", "--address", addr)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ZONE") {
		t.Fatalf("list: want a header and one lock:\n%s", out)
	}
	for _, want := range []string{"CliZone", "/docs/report", "in-flight", "exclusive", "held ", "1 request"} {
		if !strings.Contains(lines[1], want) {
			t.Fatalf("list: %q missing from the lock's line:\n%s", want, out)
		}
	}

	out = mustLockCmd(t, "list", "--json", "--address", addr)
	var locks []adminLock
	if err := json.Unmarshal([]byte(out), &locks); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	if len(locks) != 1 || locks[0].Zone != "CliZone" || locks[0].Root != "/docs/report" || !locks[0].InFlight || locks[0].Holders != 1 {
		t.Fatalf("list --json:\n%s", out)
	}

	// --zone keeps the other zones out.
	if out := mustLockCmd(t, "list", "--zone", "Other", "--address", addr); strings.TrimSpace(out) != "no locks in zone Other" {
		t.Fatalf("list --zone Other:\n%s", out)
	}
	if out := mustLockCmd(t, "list", "--zone", "Other", "--json", "--address", addr); strings.TrimSpace(out) != "[]" {
		t.Fatalf("list --zone Other --json:\n%s", out)
	}
	if out := mustLockCmd(t, "list", "--zone", "CliZone", "--address", addr); !strings.Contains(out, "/docs/report") {
		t.Fatalf("list --zone CliZone:\n%s", out)
	}

	// Without --address, the admin address comes from --config, as for
	// caddy reload.
	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("{\n\tadmin %s\n}\n:0\n", addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := mustLockCmd(t, "list", "--config", cfg, "--adapter", "caddyfile"); !strings.Contains(out, "/docs/report") {
		t.Fatalf("list --config:\n%s", out)
	}

	bk.open("held")
	if r := <-held; r.err != nil || r.status != http.StatusOK {
		t.Fatalf("held write: %d %v", r.status, r.err)
	}
}

func TestLockCommandMaintenanceAndUnlock(t *testing.T) {
	bk := newBackend(t)
	url, admin := startCaddyAdmin(t, "", cliSite, bk)
	addr := strings.TrimPrefix(admin, "http://")

	out := mustLockCmd(t, "maintenance", "CliZone", "/billing", "--timeout", "10m", "--drain", "0", "--owner", "ops", "--address", addr)
	if !strings.Contains(out, "locked /billing (depth infinity, exclusive) in zone CliZone") {
		t.Fatalf("maintenance:\n%s", out)
	}
	var token string
	for _, l := range strings.Split(out, "\n") {
		if t, ok := strings.CutPrefix(l, "token "); ok {
			token = t
		}
	}
	if !strings.HasPrefix(token, "urn:uuid:") {
		t.Fatalf("maintenance printed no token:\n%s", out)
	}

	// The lock is real: writes under /billing are refused, others pass.
	mustDo(t, "PUT", url+"/billing/invoice/7", nil, http.StatusLocked)
	mustDo(t, "PUT", url+"/other", nil, http.StatusOK)

	out = mustLockCmd(t, "list", "--address", addr)
	prefix := token[:minTokenPrefix]
	for _, want := range []string{"/billing", "maintenance", "infinity", "expires in ", prefix, "ops"} {
		if !strings.Contains(out, want) {
			t.Fatalf("list: %q missing:\n%s", want, out)
		}
	}
	if strings.Contains(out, token) {
		t.Fatalf("list shows the whole token:\n%s", out)
	}

	// A depth-0 lock with --depth.
	out = mustLockCmd(t, "maintenance", "CliZone", "/plain", "--timeout", "1m", "--depth", "0", "--drain", "0", "--address", addr)
	if !strings.Contains(out, "locked /plain (depth 0, exclusive)") {
		t.Fatalf("maintenance --depth 0:\n%s", out)
	}
	mustDo(t, "PUT", url+"/plain", nil, http.StatusLocked)
	mustDo(t, "PUT", url+"/plain/a/b", nil, http.StatusOK)

	// Unlock by the prefix that list shows.
	out = mustLockCmd(t, "unlock", "CliZone", prefix, "--address", addr)
	if !strings.Contains(out, "unlocked /billing in zone CliZone") {
		t.Fatalf("unlock:\n%s", out)
	}
	mustDo(t, "PUT", url+"/billing/invoice/7", nil, http.StatusOK)
	if out := mustLockCmd(t, "list", "--address", addr); strings.Contains(out, "/billing") || !strings.Contains(out, "/plain") {
		t.Fatalf("list after unlock:\n%s", out)
	}

	// The admin API's refusals come through with its reason.
	if _, err := runLockCmd(t, "unlock", "CliZone", prefix, "--address", addr); err == nil ||
		!strings.Contains(err.Error(), "answered 404") || !strings.Contains(err.Error(), "holds no lock") {
		t.Fatalf("unlock of a removed lock: %v", err)
	}
	if _, err := runLockCmd(t, "maintenance", "NoSuchZone", "/x", "--timeout", "1m", "--address", addr); err == nil ||
		!strings.Contains(err.Error(), `no lock zone "NoSuchZone"`) {
		t.Fatalf("maintenance in an unknown zone: %v", err)
	}
	if _, err := runLockCmd(t, "maintenance", "CliZone", "/x", "--address", addr); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("maintenance without --timeout: %v", err)
	}
}

func TestLockCommandUnreachable(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	for _, args := range [][]string{
		{"list"},
		{"maintenance", "z", "/x", "--timeout", "1m"},
		{"unlock", "z", "urn:uuid:12345678"},
	} {
		_, err := runLockCmd(t, append(args, "--address", addr)...)
		if err == nil || !strings.Contains(err.Error(), "cannot reach Caddy's admin API at "+addr) ||
			!strings.Contains(err.Error(), "is Caddy running, with the admin endpoint on?") {
			t.Fatalf("%s against nothing: %v", args[0], err)
		}
	}

	// A config that turns the admin endpoint off says so.
	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfg, []byte("{\n\tadmin off\n}\n:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := runLockCmd(t, "list", "--config", cfg, "--adapter", "caddyfile")
	if err == nil || !strings.Contains(err.Error(), "the admin API is off in "+cfg) {
		t.Fatalf("list with admin off: %v", err)
	}
}

// A Caddy without caddy-lock has no /lock/ route: its admin endpoint's
// mux answers 404, which the command explains. (The test binary always
// includes caddy-lock, so a plain mux stands in for that Caddy.)
func TestLockCommandWithoutModule(t *testing.T) {
	srv := httptest.NewServer(http.NewServeMux())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	_, err := runLockCmd(t, "list", "--address", addr)
	if err == nil || !strings.Contains(err.Error(), "answered 404") || !strings.Contains(err.Error(), "include caddy-lock?") {
		t.Fatalf("list against a Caddy without caddy-lock: %v", err)
	}
}
