package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a server process the run started (a Caddy, the redis-server)
// and stops when it ends, however it ends.
type proc struct {
	name string // what it is, for messages: "caddy", "redis-server"
	cmd  *exec.Cmd
	addr string // where it listens
	log  string // its output, for when it fails
	dir  string // a scratch directory of its own, removed once it has stopped; "" for none
	done chan error
}

// startProc starts cmd, whose output goes to logPath, and waits until it
// accepts connections on addr. On failure nothing it started is left.
func startProc(name string, cmd *exec.Cmd, addr, logPath, dir string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", logPath, err)
	}
	defer logf.Close()
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Should this program die without stopping it, the process goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	p := &proc{name: name, cmd: cmd, addr: addr, log: logPath, dir: dir, done: make(chan error, 1)}
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
			p.stop()
			return nil, fmt.Errorf("%s exited before serving (%v); its log:\n%s", name, err, tail(logPath))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s did not listen on %s within 30s; its log:\n%s", name, p.addr, tail(logPath))
		}
	}
}

// usage is what the process used: its peak resident set (VmHWM) and its
// CPU time so far.
type usage struct {
	peakRSS int64 // bytes
	cpu     time.Duration
}

func (p *proc) usage() (usage, error) {
	pid := p.cmd.Process.Pid
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("reading %s's peak RSS: %w", p.name, err)
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
		return u, fmt.Errorf("reading %s's CPU time: %w", p.name, err)
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

// running is the processes started and not yet stopped, for stopping
// them when the run is interrupted.
var running procSet

type procSet struct {
	mu    sync.Mutex
	procs map[*proc]bool
}

func (s *procSet) add(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs == nil {
		s.procs = map[*proc]bool{}
	}
	s.procs[p] = true
}

func (s *procSet) remove(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.procs, p)
}

func (s *procSet) list() []*proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ps []*proc
	for p := range s.procs {
		ps = append(ps, p)
	}
	return ps
}

// stopOnSignal stops every running process and exits when the run is
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

// stop ends the process: an interrupt first (Caddy and redis-server shut
// down gracefully on it), then a kill if it lingers; then its scratch
// directory goes.
func (p *proc) stop() {
	running.remove(p)
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		p.done <- <-p.done
	}
	if p.dir != "" {
		_ = os.RemoveAll(p.dir)
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
