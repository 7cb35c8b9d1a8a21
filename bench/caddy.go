package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// caddyProc is one Caddy process serving one scenario's Caddyfile.
type caddyProc struct {
	cmd  *exec.Cmd
	addr string // where it serves plain HTTP
	log  string // its stderr, for when it fails
	done chan error
}

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
func startCaddy(binary, config string, port int, logPath string) (*caddyProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", logPath, err)
	}
	defer logf.Close()
	cmd := exec.Command(binary, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Caddy's storage (certificates, autosave) goes to the run's directory.
	cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(config), "XDG_DATA_HOME="+filepath.Dir(config), "XDG_CONFIG_HOME="+filepath.Dir(config))
	// Should this program die without stopping it, Caddy goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", binary, err)
	}
	p := &caddyProc{cmd: cmd, addr: "127.0.0.1:" + strconv.Itoa(port), log: logPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	running.add(p)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case err := <-p.done:
			p.done <- err
			return nil, fmt.Errorf("caddy exited before serving (%v); its log:\n%s", err, tail(logPath))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("caddy did not listen on %s within 30s; its log:\n%s", p.addr, tail(logPath))
		}
	}
}

// usage is what the process used: its peak resident set (VmHWM) and its
// CPU time so far.
type usage struct {
	peakRSS int64 // bytes
	cpu     time.Duration
}

func (p *caddyProc) usage() (usage, error) {
	pid := p.cmd.Process.Pid
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("reading caddy's peak RSS: %w", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return u, fmt.Errorf("parsing VmHWM %q: %w", line, err)
			}
			u.peakRSS = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("reading caddy's CPU time: %w", err)
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14 and stime 15.
	i := bytes.LastIndexByte(stat, ')')
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 13 {
		return u, fmt.Errorf("parsing /proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(fields[11], 10, 64)
	st, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
	}
	const clockTicks = 100 // USER_HZ, 100 on Linux
	u.cpu = time.Duration(ut+st) * time.Second / clockTicks
	return u, nil
}

// running is the Caddy processes started and not yet stopped, for stopping
// them when the run is interrupted.
var running procSet

type procSet struct {
	mu    sync.Mutex
	procs map[*caddyProc]bool
}

func (s *procSet) add(p *caddyProc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs == nil {
		s.procs = map[*caddyProc]bool{}
	}
	s.procs[p] = true
}

func (s *procSet) remove(p *caddyProc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.procs, p)
}

func (s *procSet) list() []*caddyProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ps []*caddyProc
	for p := range s.procs {
		ps = append(ps, p)
	}
	return ps
}

// stopOnSignal stops the running Caddy and exits when the run is
// interrupted or terminated.
func stopOnSignal() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		for _, p := range running.list() {
			p.stop()
		}
		fmt.Fprintf(os.Stderr, "bench: stopped by %v\n", sig)
		os.Exit(1)
	}()
}

// stop ends the process: an interrupt first (Caddy shuts down gracefully),
// then a kill if it lingers.
func (p *caddyProc) stop() {
	running.remove(p)
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		p.done <- <-p.done
	}
}

// tail returns the end of a log file.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// profileCPU fetches a CPU profile of the Caddy whose admin endpoint is
// admin, over d, into path.
func profileCPU(admin string, d time.Duration, path string) error {
	secs := max(1, int(d/time.Second))
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs))
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
