package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// caddyfile writes the config of one run: plain HTTP on a loopback port,
// no automatic HTTPS, only warnings and errors logged,
// and no access log; site is the handlers in front of the backend.
//
// admin is "off", or an address whose /debug/pprof/ the run profiles.
func caddyfile(dir, name string, port int, admin, backendAddr, site string) (string, error) {
	src := fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
	log {
		level WARN
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
%s	reverse_proxy %s
}
`, admin, port, site, backendAddr)
	path := filepath.Join(dir, name+".Caddyfile")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}

// staticRefusalBytes is the size of scenario 4's answer body: the problem
// document of a 423 to PUT /hot ("held for 23ms", held_seconds with nine
// digits), give or take the digits of the time held.
const staticRefusalBytes = 265

// staticRefusalSite answers every request with a 423 whose body is as long
// as scenario 4's problem document, from Caddy's own static_response: the
// cheapest 423 this Caddy can write, which bounds what any handler's 423
// can reach. reverse_proxy after it is never reached.
var staticRefusalSite = "\trespond \"" + strings.Repeat("x", staticRefusalBytes) + "\" 423\n"

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startCaddy runs binary with config and waits until it answers on port.
func startCaddy(binary, config string, port int, logPath string) (*proc, error) {
	cmd := exec.Command(binary, "run", "--config", config, "--adapter", "caddyfile")
	// Caddy's storage (certificates, autosave) goes to the run's directory.
	cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(config), "XDG_DATA_HOME="+filepath.Dir(config), "XDG_CONFIG_HOME="+filepath.Dir(config))
	return startProc("caddy", cmd, "127.0.0.1:"+strconv.Itoa(port), logPath, "")
}

// snapshotAllocs fetches the allocation profile of the Caddy whose admin
// endpoint is admin into path: every allocation since Caddy started, so
// that two snapshots around a measurement give its allocations
// (go tool pprof -sample_index=alloc_objects -base before after).
func snapshotAllocs(admin, path string) error {
	return fetchProfile(fmt.Sprintf("http://%s/debug/pprof/allocs", admin), path)
}

// profileCPU fetches a CPU profile of the Caddy whose admin endpoint is
// admin, over d, into path.
func profileCPU(admin string, d time.Duration, path string) error {
	secs := max(1, int(d/time.Second))
	return fetchProfile(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs), path)
}

// fetchProfile writes what url answers into path.
func fetchProfile(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return fmt.Errorf("profiling caddy: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profiling caddy: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("profiling caddy: %w", err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profiling caddy: writing %s: %w", path, err)
	}
	return f.Close()
}
