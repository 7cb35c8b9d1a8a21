package caddylock

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav/davtest"
)

// TestDAVPropfindPropname checks that PROPFIND with DAV:propname lists
// the lock properties by name (RFC 4918 sections 9.1 and 15), through
// Caddy in front of the lock-less backend: once each, empty, in the 200
// propstat, next to the backend's own names, for locked and unlocked
// resources alike.
func TestDAVPropfindPropname(t *testing.T) {
	nameLockDiscovery := xml.Name{Space: "DAV:", Local: "lockdiscovery"}
	nameSupportedLock := xml.Name{Space: "DAV:", Local: "supportedlock"}
	url, b := davSite(t, "")
	b.mkdir(t, "/dir")
	b.put(t, "/dir/locked", "x")
	b.put(t, "/dir/free", "y")
	davLock(t, url+"/dir/locked", "exclusive", "alice", map[string]string{"Depth": "0"}, http.StatusOK)

	r := davMust(t, http.StatusMultiStatus, "PROPFIND", url+"/dir", `<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>`,
		map[string]string{"Depth": "1", "Content-Type": "application/xml"})
	if b.saw("PROPFIND /dir") != 1 {
		t.Fatal("the PROPFIND did not reach the backend once")
	}
	var ms struct {
		XMLName   xml.Name `xml:"DAV: multistatus"`
		Responses []struct {
			Href     string `xml:"DAV: href"`
			Propstat []struct {
				Prop struct {
					Any []struct {
						XMLName xml.Name
						Inner   string `xml:",innerxml"`
					} `xml:",any"`
				} `xml:"DAV: prop"`
				Status string `xml:"DAV: status"`
			} `xml:"DAV: propstat"`
		} `xml:"DAV: response"`
	}
	if err := xml.Unmarshal([]byte(r.body), &ms); err != nil {
		t.Fatalf("PROPFIND answer %q: %v", r.body, err)
	}
	if len(ms.Responses) != 3 {
		t.Fatalf("%d responses, want 3: %s", len(ms.Responses), r.body)
	}
	for _, resp := range ms.Responses {
		names := map[xml.Name]int{}
		for _, ps := range resp.Propstat {
			for _, p := range ps.Prop.Any {
				names[p.XMLName]++
				if (p.XMLName == nameLockDiscovery || p.XMLName == nameSupportedLock) &&
					(!strings.Contains(ps.Status, " 200 ") || strings.TrimSpace(p.Inner) != "") {
					t.Fatalf("%s: %s in propstat %q with content %q, want an empty name in the 200 propstat", resp.Href, p.XMLName.Local, ps.Status, p.Inner)
				}
			}
		}
		if names[nameLockDiscovery] != 1 || names[nameSupportedLock] != 1 {
			t.Fatalf("%s: lockdiscovery listed %d times, supportedlock %d times; want once each: %s",
				resp.Href, names[nameLockDiscovery], names[nameSupportedLock], r.body)
		}
		if names[xml.Name{Space: "DAV:", Local: "resourcetype"}] != 1 {
			t.Fatalf("%s: the backend's property names were lost: %s", resp.Href, r.body)
		}
	}
}

// TestDAVPropfindLargeAnswer sends PROPFINDs through a real Caddy with
// `lock { webdav }` in front of a backend that answers them with large
// multistatus documents: a listing of 8 MB, one dead property of 8 MB of
// tiny elements, and one nested 100 000 deep with a namespace per level.
// The first two come back with the lock properties added; the deep one,
// past the rewrite's nesting limit (1 000), as the backend wrote it. Each
// costs Caddy memory bounded by a multiple of the answer: the heap never grows by
// more than 20 times its size (the listing's was over 100 times, and the
// deep one took 20 s of CPU, when the answer was parsed into a tree).
func TestDAVPropfindLargeAnswer(t *testing.T) {
	answers := map[string][]byte{
		"/wide":  davtest.WideAnswer(maxMultiStatus - 1024),
		"/dense": davtest.DenseAnswer(maxMultiStatus - 1024),
		"/deep":  davtest.DeepAnswer(100_000),
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		doc, ok := answers[path.Dir(r.URL.Path)]
		if !ok {
			doc = answers[r.URL.Path]
		}
		if r.Method != "PROPFIND" || doc == nil {
			w.WriteHeader(http.StatusOK) // HEAD and the like: it exists
			return
		}
		w.Header().Set("Content-Type", "application/xml; charset=utf-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(doc)))
		w.WriteHeader(http.StatusMultiStatus)
		_, _ = w.Write(doc)
	}))
	t.Cleanup(backend.Close)
	zone := strings.ReplaceAll(t.Name(), "/", "_")
	site := startCaddy(t, fmt.Sprintf("lock {\n webdav\n zone %s\n}\nreverse_proxy %s", zone, strings.TrimPrefix(backend.URL, "http://")), nil)
	token, _ := davLock(t, site+"/wide/f7", "exclusive", "alice", map[string]string{"Depth": "0"}, http.StatusOK)

	for _, p := range []string{"/wide", "/dense", "/deep"} {
		doc := answers[p]
		var r result
		cpu := davtest.ProcessCPU()
		peak := peakHeapGrowth(func() {
			r = davDo(t, "PROPFIND", site+p, "", map[string]string{"Depth": "1"})
		})
		cpu = davtest.ProcessCPU() - cpu
		t.Logf("%s: answer of %d bytes, %d to the client; heap grew by at most %d bytes (%.1f times the answer); %v of CPU in the process",
			p, len(doc), len(r.body), peak, float64(peak)/float64(len(doc)), cpu)
		if r.status != http.StatusMultiStatus {
			t.Fatalf("%s: status %d, want 207", p, r.status)
		}
		if peak > 20*uint64(len(doc)) {
			t.Errorf("%s: the heap grew by %d bytes for an answer of %d", p, peak, len(doc))
		}
		if p == "/deep" {
			if r.body != string(doc) {
				t.Fatalf("%s: the answer past the depth limit was changed", p)
			}
			continue
		}
		var ms struct {
			Responses []struct {
				Href     string `xml:"DAV: href"`
				Propstat []struct {
					Prop struct {
						Discovery []struct {
							Locks []activeLockXML `xml:"DAV: activelock"`
						} `xml:"DAV: lockdiscovery"`
						Supported []struct{} `xml:"DAV: supportedlock"`
						Any       []struct{} `xml:",any"`
					} `xml:"DAV: prop"`
					Status string `xml:"DAV: status"`
				} `xml:"DAV: propstat"`
			} `xml:"DAV: response"`
		}
		if err := xml.Unmarshal([]byte(r.body), &ms); err != nil {
			t.Fatalf("%s: the answer does not parse: %v", p, err)
		}
		wantResponses := bytes.Count(doc, []byte("<D:response>"))
		if len(ms.Responses) != wantResponses {
			t.Fatalf("%s: %d responses, want %d", p, len(ms.Responses), wantResponses)
		}
		for _, resp := range ms.Responses {
			if len(resp.Propstat) != 1 || !strings.Contains(resp.Propstat[0].Status, " 200 ") {
				t.Fatalf("%s: %s has %d propstats, want the 200 one only", p, resp.Href, len(resp.Propstat))
			}
			prop := resp.Propstat[0].Prop
			if len(prop.Discovery) != 1 || len(prop.Supported) != 1 {
				t.Fatalf("%s: %s has %d lockdiscovery and %d supportedlock, want one each", p, resp.Href, len(prop.Discovery), len(prop.Supported))
			}
			locks := prop.Discovery[0].Locks
			if resp.Href == "/wide/f7" {
				if len(locks) != 1 || locks[0].Token != token || locks[0].Owner != "http://example.org/~alice" {
					t.Fatalf("%s: the lock of %s is shown as %+v", p, resp.Href, locks)
				}
			} else if len(locks) != 0 {
				t.Fatalf("%s: %s shows locks %+v, want none", p, resp.Href, locks)
			}
		}
		if p == "/dense" && len(ms.Responses[0].Propstat[0].Prop.Any) != 1 {
			t.Fatalf("%s: the dead property was lost", p)
		}
	}
}

// peakHeapGrowth runs f and returns by how much the live heap grew above
// what it was before, at most, sampled every 200µs and read at the end.
func peakHeapGrowth(f func()) uint64 {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	base := read()
	var peak atomic.Uint64
	note := func() {
		if v := read(); v > base && v-base > peak.Load() {
			peak.Store(v - base)
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				note()
			}
		}
	}()
	f()
	note()
	close(stop)
	<-done
	return peak.Load()
}
