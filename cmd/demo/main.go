// Command demo runs Caddy with the lock handler (configured by
// Caddyfile.example) in front of a deliberately slow demo backend, so that
// two concurrent writes to one path show one success and one 423.
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-lock/caddy-lock"
)

func main() {
	// The demo backend: a legacy app that takes 3 seconds per write.
	go func() {
		err := http.ListenAndServe("127.0.0.1:9080", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				log.Printf("backend: %s %s started", r.Method, r.URL.Path)
				time.Sleep(3 * time.Second)
				log.Printf("backend: %s %s done", r.Method, r.URL.Path)
			}
			fmt.Fprintf(w, "backend: %s %s ok\n", r.Method, r.URL.Path)
		}))
		log.Fatalf("demo backend: %v", err)
	}()

	src, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		log.Fatalf("run the demo from the repository root: %v", err)
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		log.Fatalf("adapting Caddyfile.example: %v", err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		log.Fatalf("starting Caddy: %v", err)
	}
	log.Print("caddy-lock demo: Caddy on http://127.0.0.1:8080, slow backend on 127.0.0.1:9080")
	log.Print(`try: curl -X PUT localhost:8080/doc & sleep 0.2; curl -i -X PUT localhost:8080/doc`)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt)
	<-stop
	_ = caddy.Stop()
}
