// Command demo runs Caddy with the lock handler (configured by
// Caddyfile.example) in front of a deliberately slow demo backend, so that
// two concurrent writes to one path show one success and one 423.
//
// Everything it opens is on loopback (Caddy on 127.0.0.1:8080, its admin API
// on 127.0.0.1:2019, the backend on 127.0.0.1:9080). It stops on Ctrl-C, on
// SIGTERM and when the process that started it (`go run`, a shell) goes away,
// and it leaves the user's own Caddy state (~/.config/caddy, ~/.local/share/caddy)
// untouched.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-lock/caddy-lock"
)

const (
	backendAddr = "127.0.0.1:9080"
	// backendDelay is how long the demo backend takes per write: long
	// enough to send a second write by hand while the first is in flight.
	backendDelay = 3 * time.Second
	// shutdownTimeout bounds a stop, so that a stuck connection cannot keep
	// the ports held after the user asked the demo to go.
	shutdownTimeout = 5 * time.Second
	// parentPoll is how often the demo checks that its parent still lives.
	parentPoll = 200 * time.Millisecond
)

func main() {
	log.SetFlags(log.Ltime)
	if err := run(); err != nil {
		log.Fatalf("caddy-lock demo: %v", err)
	}
}

// demoConfig adapts Caddyfile.example and gives Caddy a private, temporary
// place for its state, returned so that the caller removes it.
//
// Caddy keeps state under the user's directories: the autosave in
// ~/.config/caddy (turned off by `persist_config off` in the Caddyfile),
// storage-cleaning stamps and locks in ~/.local/share/caddy (its default
// storage) and instance.uuid there too. The default storage and the autosave
// path are fixed when Caddy's package initialises, so setting XDG_* here would
// not move them: the storage is set in the config instead, and XDG_DATA_HOME
// only for instance.uuid, which is looked up when written.
func demoConfig() (cfg []byte, state string, err error) {
	src, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		return nil, "", fmt.Errorf("run the demo from the repository root: %w", err)
	}
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		return nil, "", fmt.Errorf("adapting Caddyfile.example: %w", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(adapted, &doc); err != nil {
		return nil, "", fmt.Errorf("reading the adapted Caddyfile.example: %w", err)
	}
	state, err = os.MkdirTemp("", "caddy-lock-demo-")
	if err != nil {
		return nil, "", fmt.Errorf("creating the demo's private Caddy state directory: %w", err)
	}
	doc["storage"] = map[string]any{"module": "file_system", "root": filepath.Join(state, "storage")}
	if err := os.Setenv("XDG_DATA_HOME", filepath.Join(state, "data")); err != nil {
		os.RemoveAll(state)
		return nil, "", fmt.Errorf("setting XDG_DATA_HOME: %w", err)
	}
	cfg, err = json.Marshal(doc)
	if err != nil {
		os.RemoveAll(state)
		return nil, "", fmt.Errorf("writing the demo's config: %w", err)
	}
	return cfg, state, nil
}

func run() error {
	// Ask for the signals first: a Ctrl-C during start-up still stops
	// the demo cleanly rather than killing it with the ports half open.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	parentGone := watchParent()

	cfg, state, err := demoConfig()
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)

	// Listen before serving, so that a port already taken (say, by a
	// demo still running elsewhere) is reported at once and plainly.
	ln, err := net.Listen("tcp", backendAddr)
	if err != nil {
		return fmt.Errorf("demo backend: %w", err)
	}
	quit := make(chan struct{})
	backend := &http.Server{Handler: slowBackend(quit), ReadHeaderTimeout: 10 * time.Second}
	backendDone := make(chan error, 1)
	go func() { backendDone <- backend.Serve(ln) }()

	if err := caddy.Load(cfg, true); err != nil {
		_ = backend.Close()
		return fmt.Errorf("starting Caddy: %w", err)
	}
	log.Print("caddy-lock demo: Caddy on http://127.0.0.1:8080, slow backend on 127.0.0.1:9080; Ctrl-C stops it")
	log.Print(`try: curl -X PUT 127.0.0.1:8080/doc & sleep 0.5; curl -i -X PUT 127.0.0.1:8080/doc`)

	var reason string
	select {
	case sig := <-signals:
		reason = sig.String()
	case <-parentGone:
		reason = "the parent process exited"
	case err := <-backendDone:
		reason = fmt.Sprintf("the demo backend failed: %v", err)
	}
	log.Printf("caddy-lock demo: stopping (%s)", reason)
	go func() {
		// A second Ctrl-C is the user saying "now": do not make them
		// reach for kill -9.
		<-signals
		log.Print("caddy-lock demo: stopped at once on a second signal")
		os.Exit(1)
	}()

	// Writes in flight at the backend return now rather than after their
	// delay, so that neither Caddy nor the backend waits on them.
	close(quit)
	if err := caddy.Stop(); err != nil {
		log.Printf("caddy-lock demo: stopping Caddy: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := backend.Shutdown(ctx); err != nil {
		_ = backend.Close()
		log.Printf("caddy-lock demo: stopping the backend: %v", err)
	}
	// The admin endpoint (127.0.0.1:2019) is not stopped by caddy.Stop;
	// it closes with the process, which ends when run returns.
	log.Print("caddy-lock demo: stopped")
	return nil
}

// slowBackend is the demo's legacy app: it takes backendDelay per write, and
// gives up waiting once quit is closed.
func slowBackend(quit <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			log.Printf("backend: %s %s started", r.Method, r.URL.Path)
			t := time.NewTimer(backendDelay)
			defer t.Stop()
			select {
			case <-t.C:
				log.Printf("backend: %s %s done", r.Method, r.URL.Path)
			case <-r.Context().Done():
				log.Printf("backend: %s %s abandoned by the client", r.Method, r.URL.Path)
				return
			case <-quit:
				http.Error(w, "demo backend: shutting down", http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintf(w, "backend: %s %s ok\n", r.Method, r.URL.Path)
	})
}

// watchParent returns a channel that is closed when the process that
// started the demo exits. `go run` does not pass SIGTERM (or SIGKILL) on to
// the program it runs, so without this, killing `go run` would leave the
// demo holding its ports. Polling the parent's pid works on every Unix and
// catches every way the parent can die; PR_SET_PDEATHSIG would be Linux-only
// and fires when the parent's spawning thread exits, not the parent.
// A demo started by init (pid 1) has no parent to lose and is not watched.
func watchParent() <-chan struct{} {
	gone := make(chan struct{})
	ppid := os.Getppid()
	if ppid <= 1 {
		return gone
	}
	go func() {
		t := time.NewTicker(parentPoll)
		defer t.Stop()
		for range t.C {
			if os.Getppid() != ppid {
				close(gone)
				return
			}
		}
	}()
	return gone
}
