//go:build unix

package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// demoPorts are what the demo listens on; the tests need them free.
var demoPorts = []string{"8080", "9080", "2019"}

const readyLine = "caddy-lock demo: Caddy on"

// needDemoPorts skips when something on this machine holds a port the demo
// needs (a demo left running, another web server), but fails under CI, where
// nothing else should.
func needDemoPorts(t *testing.T) {
	t.Helper()
	for _, p := range demoPorts {
		ln, err := net.Listen("tcp", "127.0.0.1:"+p)
		if err != nil {
			msg := fmt.Sprintf("port %s is taken on this machine, so the demo cannot start here: %v", p, err)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
		ln.Close()
	}
}

var (
	buildOnce sync.Once
	builtDemo string
	buildErr  error
	binDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildDemo builds the demo once into a temporary directory, as `go run`
// would, for all the tests.
func buildDemo(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "demo-test-"); buildErr != nil {
			return
		}
		builtDemo = filepath.Join(binDir, "demo")
		out, err := exec.Command("go", "build", "-o", builtDemo, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building the demo: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtDemo
}

// demoEnv is the environment with a fresh home and XDG dirs, so that
// anything the demo writes into a user's Caddy state shows up in home.
func demoEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, ".config"),
		"XDG_DATA_HOME="+filepath.Join(home, ".local", "share"))
}

// logPipe gives cmd a stderr pipe that, unlike cmd.StderrPipe, Wait does not
// close: the tests read the log to its end after the process exited, and a
// demo that outlives its parent must not meet a closed pipe (SIGPIPE would
// stop it for the wrong reason).
func logPipe(t *testing.T, cmd *exec.Cmd) *os.File {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	cmd.Stderr = w
	return r
}

// closeWriteEnd drops the test's copy of the pipe's write end once the child
// has its own, so that the log ends when the child's processes are gone.
func closeWriteEnd(cmd *exec.Cmd) {
	cmd.Stderr.(*os.File).Close()
}

// logLines reads the demo's log, passing each line on and keeping all of them
// for failure messages; the channel closes when every writer has gone.
type logLines struct {
	ch   chan string
	seen chan []string
}

func readLog(r io.Reader) *logLines {
	l := &logLines{ch: make(chan string, 1024), seen: make(chan []string, 1)}
	l.seen <- nil
	go func() {
		defer close(l.ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			all := <-l.seen
			l.seen <- append(all, sc.Text())
			l.ch <- sc.Text()
		}
	}()
	return l
}

func (l *logLines) String() string {
	all := <-l.seen
	l.seen <- all
	return strings.Join(all, "\n")
}

// waitFor returns once a log line contains want; it fails if the log ends
// (the demo exited) or the timeout passes first.
func (l *logLines) waitFor(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-l.ch:
			if !ok {
				t.Fatalf("the demo's log ended before %q:\n%s", want, l)
			}
			if strings.Contains(line, want) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q in the demo's log within %v:\n%s", want, timeout, l)
		}
	}
}

// waitEOF returns once every process holding the log's write end is gone.
func (l *logLines) waitEOF(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-l.ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("the demo still runs %v after it should have stopped:\n%s", timeout, l)
		}
	}
}

func assertPortsFree(t *testing.T) {
	t.Helper()
	for _, p := range demoPorts {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+p, time.Second); err == nil {
			c.Close()
			t.Errorf("127.0.0.1:%s still accepts connections after the demo stopped", p)
		}
	}
}

// TestDemo runs the demo as a newcomer does and checks what they meet: it
// serves on 127.0.0.1:8080 and nowhere else, shows a 423 for a second
// concurrent write, leaves the user's Caddy state alone, and a SIGTERM
// stops it at once and frees its ports.
func TestDemo(t *testing.T) {
	needDemoPorts(t)
	bin := buildDemo(t)
	home := t.TempDir()

	cmd := exec.Command(bin)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = demoEnv(home)
	stderr := logPipe(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	closeWriteEnd(cmd)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	demoLog := readLog(stderr)
	demoLog.waitFor(t, readyLine, 60*time.Second)

	assertLoopbackOnly(t, cmd.Process.Pid)

	// One write in flight at the slow backend, then a second to the same
	// path: it must get 423 at once.
	first := make(chan error, 1)
	go func() {
		first <- put(0)
	}()
	demoLog.waitFor(t, "backend: PUT /doc started", 10*time.Second)
	if err := put(http.StatusLocked); err != nil {
		t.Error(err)
	}

	var written []string
	_ = filepath.WalkDir(home, func(p string, d fs.DirEntry, err error) error {
		if p != home {
			written = append(written, p)
		}
		return nil
	})
	if len(written) > 0 {
		t.Errorf("the demo wrote into the user's home (a real user's ~/.config/caddy/autosave.json or ~/.local/share/caddy):\n%s",
			strings.Join(written, "\n"))
	}

	// SIGTERM while the first write is still at the backend: the demo
	// must not wait out the write's delay (nor a grace period) to stop.
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		took := time.Since(start)
		if err != nil {
			t.Errorf("after SIGTERM the demo exited with %v, want a clean exit:\n%s", err, demoLog)
		}
		if took > backendDelay/2 {
			t.Errorf("the demo took %v to stop after SIGTERM, waiting for the write in flight", took)
		}
		t.Logf("stopped %v after SIGTERM, a write in flight", took.Round(time.Millisecond))
	case <-time.After(shutdownTimeout + 2*time.Second):
		t.Fatalf("the demo still runs %v after SIGTERM:\n%s", shutdownTimeout+2*time.Second, demoLog)
	}
	if err := <-first; err != nil {
		t.Logf("the write in flight at SIGTERM ended with: %v", err)
	}
	demoLog.waitEOF(t, time.Second)
	if !strings.Contains(demoLog.String(), "caddy-lock demo: stopped") {
		t.Errorf("the demo did not log its clean stop:\n%s", demoLog)
	}
	assertPortsFree(t)
}

// TestDemoStopsWithItsParent kills the demo's parent as `kill <pid of go run>`
// does: go run dies of SIGTERM without passing it on, and the demo, orphaned,
// must stop by itself and free its ports. A shell stands in for go run, and
// SIGKILL for its death, so that no signal could reach the demo that way.
func TestDemoStopsWithItsParent(t *testing.T) {
	needDemoPorts(t)
	bin := buildDemo(t)

	parent := exec.Command("sh", "-c", `"$0" >/dev/null & echo $!; wait`, bin)
	parent.Dir = filepath.Join("..", "..")
	parent.Env = demoEnv(t.TempDir())
	stdout, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := logPipe(t, parent)
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	closeWriteEnd(parent)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the demo's pid from its parent shell: %v", err)
	}
	demoPid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("the parent shell printed %q, not a pid", line)
	}
	// Whatever happens, leave no demo behind.
	t.Cleanup(func() { _ = syscall.Kill(demoPid, syscall.SIGKILL) })

	demoLog := readLog(stderr)
	demoLog.waitFor(t, readyLine, 60*time.Second)

	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = parent.Wait()
	// The log pipe ends when the demo, its last writer, has exited.
	demoLog.waitEOF(t, parentPoll+shutdownTimeout+2*time.Second)
	if !strings.Contains(demoLog.String(), "stopping (the parent process exited)") {
		t.Errorf("the demo did not say why it stopped:\n%s", demoLog)
	}
	assertPortsFree(t)
}

// put writes /doc through the demo and checks the status it gets, unless
// want is 0.
func put(want int) error {
	req, err := http.NewRequest(http.MethodPut, "http://127.0.0.1:8080/doc", strings.NewReader("hello"))
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("PUT /doc: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if want != 0 && resp.StatusCode != want {
		return fmt.Errorf("PUT /doc: got %d, want %d: %s", resp.StatusCode, want, body)
	}
	return nil
}

// assertLoopbackOnly checks every socket the demo process listens on (TCP,
// and UDP in case HTTP/3 were ever enabled) is bound to a loopback address,
// and that the three expected ports are among them. It reads Linux's
// /proc; elsewhere it falls back to dialling the machine's other addresses.
func assertLoopbackOnly(t *testing.T, pid int) {
	t.Helper()
	inodes, err := socketInodes(pid)
	if err != nil {
		t.Logf("cannot read /proc (%v): checking by dialling the machine's non-loopback addresses", err)
		assertNotReachableOutside(t)
		return
	}
	found := map[string]bool{}
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		socks, err := listeningSockets("/proc/net/"+table, strings.HasPrefix(table, "tcp"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // no IPv6 on this machine
			}
			t.Fatal(err)
		}
		for _, s := range socks {
			if !inodes[s.inode] {
				continue
			}
			if !s.ip.IsLoopback() {
				t.Errorf("the demo listens on %s %s: it must listen on loopback only", table, net.JoinHostPort(s.ip.String(), strconv.Itoa(s.port)))
			}
			if strings.HasPrefix(table, "tcp") {
				found[strconv.Itoa(s.port)] = true
			}
		}
	}
	for _, p := range demoPorts {
		if !found[p] {
			t.Errorf("the demo does not listen on port %s (it listens on %v)", p, found)
		}
	}
	assertNotReachableOutside(t)
}

func assertNotReachableOutside(t *testing.T) {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Logf("no interface addresses to dial: %v", err)
		return
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		for _, p := range demoPorts {
			addr := net.JoinHostPort(ipn.IP.String(), p)
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				t.Errorf("the demo answers on %s: it must listen on loopback only", addr)
			}
		}
	}
}

// socketInodes are the inodes of the sockets process pid has open.
func socketInodes(pid int) (map[string]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing the demo's file descriptors: %w", err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	return inodes, nil
}

type socket struct {
	ip    net.IP
	port  int
	inode string
}

// listeningSockets parses a /proc/net/{tcp,tcp6,udp,udp6} table: for TCP the
// sockets in LISTEN (state 0A), for UDP the unconnected ones (state 07).
func listeningSockets(path string, tcp bool) ([]socket, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	want := "07"
	if tcp {
		want = "0A"
	}
	var out []socket
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != want {
			continue
		}
		hostHex, portHex, ok := strings.Cut(f[1], ":")
		if !ok {
			return nil, fmt.Errorf("%s: bad local address %q", path, f[1])
		}
		if len(hostHex) != 8 && len(hostHex) != 32 {
			return nil, fmt.Errorf("%s: bad local address %q", path, f[1])
		}
		// The kernel prints the address as 32-bit words, each as the
		// number its bytes make in the host's byte order.
		raw := make([]byte, len(hostHex)/2)
		for i := 0; i < len(raw); i += 4 {
			w, err := strconv.ParseUint(hostHex[2*i:2*i+8], 16, 32)
			if err != nil {
				return nil, fmt.Errorf("%s: bad local address %q: %w", path, f[1], err)
			}
			binary.NativeEndian.PutUint32(raw[i:], uint32(w))
		}
		port, err := strconv.ParseUint(portHex, 16, 16)
		if err != nil {
			return nil, fmt.Errorf("%s: bad port in %q: %w", path, f[1], err)
		}
		out = append(out, socket{ip: net.IP(raw), port: int(port), inode: f[9]})
	}
	return out, nil
}

// TestDemoStopsOnCtrlC sends SIGINT, as a terminal's Ctrl-C does (to the
// demo and to go run, which ignores it and waits for the demo).
func TestDemoStopsOnCtrlC(t *testing.T) {
	needDemoPorts(t)
	cmd := exec.Command(buildDemo(t))
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = demoEnv(t.TempDir())
	stderr := logPipe(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	closeWriteEnd(cmd)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	demoLog := readLog(stderr)
	demoLog.waitFor(t, readyLine, 60*time.Second)

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("after Ctrl-C the demo exited with %v, want a clean exit:\n%s", err, demoLog)
		}
	case <-time.After(shutdownTimeout + 2*time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("the demo still runs %v after Ctrl-C:\n%s", shutdownTimeout+2*time.Second, demoLog)
	}
	demoLog.waitEOF(t, time.Second)
	if !strings.Contains(demoLog.String(), "stopping (interrupt)") {
		t.Errorf("the demo did not say why it stopped:\n%s", demoLog)
	}
	assertPortsFree(t)
}
