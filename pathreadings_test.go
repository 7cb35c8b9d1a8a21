package caddylock

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/webdav"
)

// fileBackend is a real WebDAV server writing to a directory, reached
// directly or through Caddy: which file a request changed tells how the
// server read its path.
type fileBackend struct {
	name string
	url  string // http://host:port
	root string
}

func (b fileBackend) file(p string) string {
	return filepath.Join(b.root, filepath.FromSlash(p))
}

// read returns the content of the file at p, and whether it exists.
func (b fileBackend) read(p string) (string, bool) {
	data, err := os.ReadFile(b.file(p))
	return string(data), err == nil
}

func (b fileBackend) write(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(b.file(p)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.file(p), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startXNetWebDAV runs golang.org/x/net/webdav on a directory, as it is
// commonly deployed: behind net/http without ServeMux.
func startXNetWebDAV(t *testing.T) fileBackend {
	root := t.TempDir()
	srv := httptest.NewServer(&webdav.Handler{FileSystem: webdav.Dir(root), LockSystem: webdav.NewMemLS()})
	t.Cleanup(srv.Close)
	return fileBackend{name: "x/net/webdav", url: srv.URL, root: root}
}

// startNginx runs nginx with its dav module as a child process, on a
// free loopback port and with everything in a temporary directory. It
// skips the test without nginx, unless CI is set.
func startNginx(t *testing.T) fileBackend {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr == nil {
			bin, err = "/usr/sbin/nginx", nil
		}
	}
	if err != nil {
		msg := "nginx not found (install nginx-light and libnginx-mod-http-dav-ext to run the nginx tests)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	var mod, ext string
	if so := "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"; fileExists(so) {
		mod, ext = "load_module "+so+";", "dav_ext_methods PROPFIND OPTIONS;"
	}
	conf := fmt.Sprintf(`%s
daemon off;
master_process off;
pid %[2]s/nginx.pid;
error_log stderr warn;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	server {
		listen 127.0.0.1:%[3]d;
		root %[4]s;
		dav_methods PUT DELETE MKCOL COPY MOVE;
		%[5]s
		create_full_put_path on;
	}
}
`, mod, dir, port, root, ext)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", "stderr")
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("nginx output:\n%s", stderr.String())
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("nginx exited: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx did not listen on %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond) // polling for readiness, not ordering
	}
	return fileBackend{name: "nginx", url: "http://" + addr, root: root}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// rawDo sends a request whose target is raw, byte for byte.
func rawDo(t *testing.T, method, base, raw, body string, header map[string]string) result {
	t.Helper()
	req, err := http.NewRequest(method, base, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Opaque = raw
	for k, v := range header {
		req.Header.Set(k, v)
	}
	r := doRequest(http.DefaultClient, req)
	if r.err != nil {
		t.Fatalf("%s %s: %v", method, raw, r.err)
	}
	return r
}

// A spelling, the file each backend writes for it, and what the lock
// handler answers while /a/c, /a/café and /a/d#x are locked: 400 for a
// path backends read as different resources, 423 for one that some
// backend reads as a locked resource (NFC on Nextcloud and macOS, the
// Windows folds).
var pathSpellings = []struct {
	raw         string
	dav, nginx  string // the file written; "" when the server refuses
	caddy       int
	oldKey, why string
}{
	{"/a/b%252f..%252f../../c", "/a/c", "/a/c", 400, "/c", "decoded once, b%2f..%2f.. is one segment"},
	{"/a/b%255c..%255c../../c", "/a/c", "/a/c", 400, "/c", `decoded twice, \ separates on IIS`},
	{"/a/b%5c..%5c../../c", "/a/c", "/a/c", 400, "/c", `\ is a byte, not a separator, on Linux`},
	{`/a/b\..\../../c`, "/a/c", "/a/c", 400, "/c", `raw \ too (Caddy sends it as %5C)`},
	{"/a/b;x%252f..%252f../../c", "/a/c", "/a/c", 400, "/c", ";x is part of the name, not dropped"},
	{"/a/x//../c", "/a/c", "/a/c", 400, "/a/c", "// merged first; Apache reads /a/x/c"},
	{"/a/cafe%CC%81", "/a/cafe\u0301", "/a/cafe\u0301", 423, "/a/cafe\u0301", "NFD: one name with café on Nextcloud and macOS"},
	{"/a/c.", "/a/c.", "/a/c.", 423, "/a/c.", "a trailing dot: /a/c on Windows"},
	{"/a/c%20", "/a/c ", "/a/c ", 423, "/a/c ", "a trailing space: /a/c on Windows"},
	{"/a/c::$DATA", "/a/c::$DATA", "/a/c::$DATA", 423, "/a/c::$DATA", "the data stream of /a/c on Windows"},
}

// TestPathReadingsXNetWebDAV and TestPathReadingsNginx check, over the
// wire, how each server reads every spelling (sent to it directly), and
// that through Caddy none of them reaches a locked file.
func TestPathReadingsXNetWebDAV(t *testing.T) { testPathReadings(t, startXNetWebDAV(t)) }

func TestPathReadingsNginx(t *testing.T) { testPathReadings(t, startNginx(t)) }

func testPathReadings(t *testing.T, b fileBackend) {
	b.write(t, "/a/c", "locked")
	b.write(t, "/a/café", "locked")
	b.write(t, "/a/d#x", "locked")
	b.write(t, "/a/src", "source")
	// The servers' own readings, asserted: the file written directly.
	for i, s := range pathSpellings {
		want := s.dav
		if b.name == "nginx" {
			want = s.nginx
		}
		body := fmt.Sprintf("direct %d", i)
		r := rawDo(t, "PUT", b.url, s.raw, body, nil)
		if got, _ := b.read(want); r.status >= 300 || got != body {
			t.Fatalf("%s: PUT %s: %d; %s holds %q, want the PUT's body", b.name, s.raw, r.status, want, got)
		}
		if want == "/a/c" {
			b.write(t, want, "locked")
		} else if err := os.Remove(b.file(want)); err != nil {
			t.Fatal(err)
		}
	}

	site := startCaddy(t, fmt.Sprintf("lock {\n webdav\n zone %s\n}\nreverse_proxy %s", strings.ReplaceAll(t.Name(), "/", "_"), strings.TrimPrefix(b.url, "http://")), nil)
	for _, p := range []string{"/a/c", "/a/caf%C3%A9", "/a/d%23x"} {
		davLock(t, site+p, "exclusive", "other", nil, http.StatusOK)
	}
	for _, s := range pathSpellings {
		want := s.dav
		if b.name == "nginx" {
			want = s.nginx
		}
		before, existed := b.read(want)
		r := rawDo(t, "PUT", site, s.raw, "overwritten", nil)
		if r.status != s.caddy {
			t.Errorf("%s: PUT %s through Caddy: %d, want %d (%s; the key was %s): %s", b.name, s.raw, r.status, s.caddy, s.why, s.oldKey, r.body)
		}
		if r.status == http.StatusBadRequest && r.header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: PUT %s: a 400 with Content-Type %q, want a problem document", b.name, s.raw, r.header.Get("Content-Type"))
		}
		if after, exists := b.read(want); after != before || exists != existed {
			t.Errorf("%s: PUT %s through Caddy changed %s to %q", b.name, s.raw, want, after)
		}
	}

	// Destination: url.Parse drops #x, nginx keeps it; one decoding
	// of %252f leaves b%2f..%2f.. as one segment.
	host := strings.TrimPrefix(site, "http://")
	for _, c := range []struct {
		dest, dav, nginx string // the file each server writes; "" when it refuses
	}{
		{"/a/d#x", "/a/d", "/a/d#x"},
		{"http://" + host + "/a/b%252f..%252f../../c", "/a/c", ""},
	} {
		want := c.dav
		if b.name == "nginx" {
			want = c.nginx
		}
		// Directly: the backend's reading, with the backend's host.
		direct := strings.Replace(c.dest, host, strings.TrimPrefix(b.url, "http://"), 1)
		r := rawDo(t, "COPY", b.url, "/a/src", "", map[string]string{"Destination": direct})
		if want == "" {
			if r.status < 400 {
				t.Fatalf("%s: COPY to %s: %d, want refused", b.name, direct, r.status)
			}
		} else if got, _ := b.read(want); r.status >= 300 || got != "source" {
			t.Fatalf("%s: COPY to %s: %d; %s holds %q, want the source", b.name, direct, r.status, want, got)
		} else {
			b.write(t, want, "locked")
			if want == "/a/d" {
				os.Remove(b.file(want))
			}
		}
		before, _ := b.read(want)
		r = rawDo(t, "COPY", site, "/a/src", "", map[string]string{"Destination": c.dest})
		if r.status != http.StatusBadRequest || !strings.Contains(r.body, "ambiguous") {
			t.Errorf("%s: COPY to %s through Caddy: %d, want 400 ambiguous: %s", b.name, c.dest, r.status, r.body)
		}
		if want != "" {
			if after, _ := b.read(want); after != before {
				t.Errorf("%s: COPY to %s through Caddy changed %s to %q", b.name, c.dest, want, after)
			}
		}
	}
	// A Destination is NFC-folded and Windows-folded as a path is: the
	// locked /a/café and /a/c are refused under other spellings.
	for _, dest := range []string{"/a/cafe%CC%81", "http://" + host + "/a/cafe%CC%81", "/a/c.", "/a/c::$DATA"} {
		if r := rawDo(t, "COPY", site, "/a/src", "", map[string]string{"Destination": dest}); r.status != http.StatusLocked {
			t.Errorf("%s: COPY to %s through Caddy: %d, want 423: %s", b.name, dest, r.status, r.body)
		}
	}
}

// An admin maintenance lock holds against every spelling too: the write
// that decodes to /a/c at the backend is refused before it.
func TestPathReadingsMaintenance(t *testing.T) {
	b := startXNetWebDAV(t)
	b.write(t, "/a/c", "locked")
	site, admin := startCaddyAdmin(t, "", fmt.Sprintf("lock {\n zone %s\n}\nreverse_proxy %s", t.Name(), strings.TrimPrefix(b.url, "http://")), nil)
	if status, body := adminDo(t, admin, "POST", "/lock/"+t.Name(), `{"path": "/a/c", "timeout": "10m", "owner": "maintenance"}`); status != http.StatusCreated {
		t.Fatalf("POST: %d %s", status, body)
	}
	for _, raw := range []string{"/a/b%252f..%252f../../c", "/a/b%5c..%5c../../c", "/a/c.", "/a/c"} {
		r := rawDo(t, "PUT", site, raw, "overwritten", nil)
		if r.status != http.StatusBadRequest && r.status != http.StatusLocked {
			t.Errorf("PUT %s under a maintenance lock on /a/c: %d %s", raw, r.status, r.body)
		}
	}
	if got, _ := b.read("/a/c"); got != "locked" {
		t.Fatalf("/a/c holds %q under a maintenance lock", got)
	}
	// An admin path is keyed as a request path: NFD locks NFC.
	if status, body := adminDo(t, admin, "POST", "/lock/"+t.Name(), `{"path": "/a/cafe\u0301", "timeout": "10m", "owner": "maintenance"}`); status != http.StatusCreated {
		t.Fatalf("POST: %d %s", status, body)
	}
	if r := rawDo(t, "PUT", site, "/a/caf%C3%A9", "x", nil); r.status != http.StatusLocked {
		t.Fatalf("PUT /a/café under a maintenance lock on its NFD spelling: %d %s", r.status, r.body)
	}
	if status, body := adminDo(t, admin, "POST", "/lock/"+t.Name(), `{"path": "/a/b%252f..%252f../../c", "timeout": "10m"}`); status != http.StatusBadRequest {
		t.Fatalf("POST of an ambiguous path: %d %s", status, body)
	}
}
