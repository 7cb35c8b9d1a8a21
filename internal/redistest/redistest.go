// Package redistest starts throwaway redis-servers for the tests of the
// packages that talk to Redis: the Redis store and the handler's tests
// that run it through Caddy. It is imported by tests only.
//
// A test that needs redis-server is skipped when none is in PATH, and
// fails instead when the environment variable CI is set, so that CI never
// passes by skipping.
package redistest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is a throwaway redis-server for one test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	conf string      // config file given first, for a sentinel; "" for none
	args []string    // extra redis-server arguments
	tls  *tls.Config // set when the server speaks only TLS
	cmd  *exec.Cmd
	exit chan struct{}
	// Addr is host:port of the server; it stays the same across restarts.
	Addr string
}

// Start starts redis-server from PATH on a free local port, with no
// persistence and with the extra arguments given, and stops it when the
// test ends. Without redis-server the test is skipped, unless CI is set,
// where that is a failure.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	r := newServer(t, args...)
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// newServer finds redis-server (or skips the test) and picks a port.
func newServer(t testing.TB, args ...string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server not found in PATH (install the redis-server package to run the Redis lock tests)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &Server{t: t, bin: bin, dir: t.TempDir(), port: port, args: args}
	r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return r
}

// StartSentinel starts a Redis Sentinel (redis-server --sentinel) on a
// free local port, monitoring master under name with a quorum of one, and
// stops it when the test ends. settings are pairs of a per-master sentinel
// directive and its value, such as "down-after-milliseconds", "500".
func StartSentinel(t testing.TB, master *Server, name string, settings ...string) *Server {
	t.Helper()
	host, port, err := net.SplitHostPort(master.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(settings)%2 != 0 {
		t.Fatalf("sentinel settings %q: want directive, value pairs", settings)
	}
	args := []string{"--sentinel", "--sentinel", "monitor", name, host, port, "1"}
	// Each becomes the config line "sentinel <directive> <name> <value>",
	// which must follow the monitor line.
	for i := 0; i < len(settings); i += 2 {
		args = append(args, "--sentinel", settings[i], name, settings[i+1])
	}
	s := newServer(t, args...)
	// A sentinel needs a config file of its own, which it rewrites.
	s.conf = filepath.Join(s.dir, "sentinel.conf")
	if err := os.WriteFile(s.conf, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// StartTLS starts a redis-server that speaks only TLS, with a
// certificate for 127.0.0.1 and redis.test from a throwaway CA, and
// returns it with the CA's PEM file.
func StartTLS(t testing.TB) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "caddy-lock test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"redis.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	caFile := write("ca.pem", "CERTIFICATE", caDER)
	certFile, keyFile := write("redis.pem", "CERTIFICATE", der), write("redis.key", "PRIVATE KEY", keyDER)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	r := newServer(t)
	r.tls = &tls.Config{RootCAs: pool, ServerName: "redis.test"}
	r.args = []string{"--port", "0", "--tls-port", strconv.Itoa(r.port), "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-ca-cert-file", caFile, "--tls-auth-clients", "no"}
	r.Start()
	t.Cleanup(r.Stop)
	return r, caFile
}

// Start starts the server (again) on its port and waits until it answers
// PING.
func (r *Server) Start() {
	r.t.Helper()
	if r.cmd != nil {
		r.t.Fatal("redis-server already running")
	}
	var args []string
	if r.conf != "" {
		args = append(args, r.conf)
	}
	args = append(args, "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port),
		"--save", "", "--appendonly", "no", "--dir", r.dir)
	cmd := exec.Command(r.bin, append(args, r.args...)...)
	out, err := os.Create(r.dir + "/redis.log")
	if err != nil {
		r.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		r.t.Fatalf("start redis-server: %v", err)
	}
	exit := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(exit)
	}()
	r.cmd, r.exit = cmd, exit
	deadline := time.Now().Add(10 * time.Second)
	for !r.ping() {
		select {
		case <-exit:
			log, _ := os.ReadFile(r.dir + "/redis.log")
			r.cmd = nil
			r.t.Fatalf("redis-server exited at start:\n%s", log)
		default:
		}
		if time.Now().After(deadline) {
			r.Stop()
			r.t.Fatal("redis-server did not answer PING within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server and waits for it to exit; it is a no-op when the
// server is not running.
func (r *Server) Stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exit
	r.cmd = nil
}

func (r *Server) ping() bool {
	var c net.Conn
	var err error
	if r.tls != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 200 * time.Millisecond}, "tcp", r.Addr, r.tls)
	} else {
		c, err = net.DialTimeout("tcp", r.Addr, 200*time.Millisecond)
	}
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	// A server with a password answers, but refuses PING.
	return err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH"))
}

// Port is the server's port, as in Addr.
func (r *Server) Port() int { return r.port }

// Signal sends sig to the running server, as a test that makes Redis hang
// (SIGSTOP) and resume (SIGCONT) does.
func (r *Server) Signal(sig os.Signal) error {
	if r.cmd == nil {
		return errors.New("redis-server is not running")
	}
	return r.cmd.Process.Signal(sig)
}
