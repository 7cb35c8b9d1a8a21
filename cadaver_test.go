package caddylock

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCadaver drives cadaver, a neon-based command-line WebDAV client,
// through Caddy with the lock handler: it locks a file, another client
// is refused, cadaver writes with its token, discovers the lock and
// unlocks. Skipped when cadaver (Debian package cadaver) is not
// installed, except under CI.
func TestCadaver(t *testing.T) {
	bin := requireTool(t, "cadaver")
	url, b := davSite(t, "")
	b.put(t, "/f.txt", "original")
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/up.txt", []byte("from cadaver"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-t", url+"/")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir) // no ~/.cadaverrc or ~/.netrc of the user's
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
		t.Logf("cadaver session:\n%s", out.String())
	}()
	// say sends a command and waits for want in what cadaver prints.
	say := func(command, want string) {
		t.Helper()
		start := out.Len()
		if _, err := io.WriteString(stdin, command+"\n"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "cadaver to print "+want, func() bool {
			return strings.Contains(out.String()[start:], want)
		})
	}

	say("lock f.txt", "Locking `f.txt': succeeded.")
	// Another client, without the token, is refused.
	if r := davDo(t, "PUT", url+"/f.txt", "intruder", nil); r.status != http.StatusLocked {
		t.Fatalf("PUT without the token: %d", r.status)
	}
	say("discover f.txt", "Scope: exclusive  Type: write  Timeout: 600 seconds")
	say("put up.txt f.txt", "succeeded.")
	if got := davMust(t, http.StatusOK, "GET", url+"/f.txt", "", nil).body; got != "from cadaver" {
		t.Fatalf("content after cadaver's put: %q", got)
	}
	say("unlock f.txt", "Unlocking `f.txt': succeeded.")
	say("discover f.txt", "no locks found.")
	davMust(t, http.StatusCreated, "PUT", url+"/f.txt", "anybody", nil)
	say("quit", "closed.")
}

// syncBuffer is a bytes.Buffer that a process writes to while the test
// reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Len()
}

// requireTool returns the path of a program from Debian's package of the
// same name; without it the test is skipped, except under CI, which
// installs it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed; .ci/run installs it (Debian package %s)", name, name)
		}
		t.Skipf("%s not installed (apt-get install %s)", name, name)
	}
	return bin
}
