package caddylock

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
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
	"syscall"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

func TestPropfindWants(t *testing.T) {
	all := lockPropsWanted{discovery: true, supported: true}
	for _, c := range []struct {
		body string
		want lockPropsWanted
	}{
		{"", all},
		{`<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>`, all},
		{`<propfind xmlns="DAV:"><prop><lockdiscovery/></prop></propfind>`, lockPropsWanted{discovery: true}},
		{`<propfind xmlns="DAV:"><prop><supportedlock/><getetag/></prop></propfind>`, lockPropsWanted{supported: true}},
		{`<propfind xmlns="DAV:"><propname/></propfind>`, lockPropsWanted{discovery: true, supported: true, names: true}},
		{`<propfind xmlns="DAV:"><prop><propname/><allprop/></prop></propfind>`, lockPropsWanted{}},
		{`<propfind xmlns="DAV:"><x:propname xmlns:x="urn:other"/></propfind>`, lockPropsWanted{}},
		{`<propfind xmlns="DAV:"><prop><x:lockdiscovery xmlns:x="urn:other"/></prop></propfind>`, lockPropsWanted{}},
		{`<propfind xmlns="DAV:"><prop><lockdiscovery/>`, lockPropsWanted{}},
		{`<!DOCTYPE x><propfind xmlns="DAV:"><allprop/></propfind>`, lockPropsWanted{}},
	} {
		if got := propfindWants([]byte(c.body)); got != c.want {
			t.Errorf("propfindWants(%s) = %+v; want %+v", c.body, got, c.want)
		}
	}
}

func TestSetLockProps(t *testing.T) {
	// The backend's lockdiscovery in a 404 propstat goes; the handler's
	// goes into the 200 propstat; other properties stay.
	doc := `<?xml version="1.0"?><D:multistatus xmlns:D="DAV:" xmlns:Z="urn:z"><D:response><D:href>/a</D:href>` +
		`<D:propstat><D:prop><D:displayname>a &amp; b</D:displayname><Z:color Z:x="1">red</Z:color></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>` +
		`<D:propstat><D:prop><D:lockdiscovery/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>` +
		`</D:response></D:multistatus>`
	disc := func(string) ([]byte, error) {
		return LockDiscoveryElement(ActiveLock{Root: "/a", Token: "urn:uuid:x", Scope: lockstore.Shared, Depth: lockstore.DepthZero, Timeout: 5e9}), nil
	}
	out, err := rewriteString(t.Context(), doc, lockPropsWanted{discovery: true}, disc)
	if err != nil {
		t.Fatal(err)
	}
	var ms struct {
		Propstat []struct {
			Prop struct {
				Display string `xml:"DAV: displayname"`
				Color   struct {
					Value string `xml:",chardata"`
					X     string `xml:"urn:z x,attr"`
				} `xml:"urn:z color"`
				Locks []activeLockXML `xml:"DAV: lockdiscovery>activelock"`
			} `xml:"DAV: prop"`
			Status string `xml:"DAV: status"`
		} `xml:"DAV: response>propstat"`
	}
	if err := xml.Unmarshal([]byte(out), &ms); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if len(ms.Propstat) != 1 {
		t.Fatalf("%d propstats, want the 200 one only: %s", len(ms.Propstat), out)
	}
	p := ms.Propstat[0].Prop
	if p.Display != "a & b" || p.Color.Value != "red" || p.Color.X != "1" || len(p.Locks) != 1 || p.Locks[0].Token != "urn:uuid:x" {
		t.Fatalf("rewritten: %s", out)
	}
}

// TestMultiStatusRewriteKeepsBytes checks that the rewrite changes only
// what it must: the backend's prefixes, declarations, comments, a byte
// order mark and a self-closed DAV:prop stay as written.
func TestMultiStatusRewriteKeepsBytes(t *testing.T) {
	doc := "\ufeff<?xml version=\"1.0\"?>\n<!-- listing --><m:multistatus xmlns:m=\"DAV:\" xmlns:z=\"urn:z\">" +
		`<m:response><m:href>/a</m:href><m:propstat><m:prop z:x="1"/><m:status>HTTP/1.1 200 OK</m:status></m:propstat>` +
		`<m:propstat><m:prop><m:lockdiscovery>old</m:lockdiscovery><z:p/></m:prop><m:status>HTTP/1.1 404 Not Found</m:status></m:propstat>` +
		`<m:propstat><m:prop><m:supportedlock/></m:prop><m:status>HTTP/1.1 403 Forbidden</m:status></m:propstat></m:response></m:multistatus>`
	want := "\ufeff<?xml version=\"1.0\"?>\n<!-- listing --><m:multistatus xmlns:m=\"DAV:\" xmlns:z=\"urn:z\">" +
		`<m:response><m:href>/a</m:href><m:propstat><m:prop z:x="1">` + string(SupportedLockElement()) + `</m:prop><m:status>HTTP/1.1 200 OK</m:status></m:propstat>` +
		`<m:propstat><m:prop><z:p/></m:prop><m:status>HTTP/1.1 404 Not Found</m:status></m:propstat>` +
		`</m:response></m:multistatus>`
	out, err := rewriteString(t.Context(), doc, lockPropsWanted{supported: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out != want {
		t.Fatalf("rewritten:\n%s\nwant:\n%s", out, want)
	}
}

// TestDAVPropfindPropname checks that PROPFIND with DAV:propname lists
// the lock properties by name (RFC 4918 sections 9.1 and 15), through
// Caddy in front of the lock-less backend: once each, empty, in the 200
// propstat, next to the backend's own names, for locked and unlocked
// resources alike.
func TestDAVPropfindPropname(t *testing.T) {
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
		if names[xml.Name{Space: davNS, Local: "resourcetype"}] != 1 {
			t.Fatalf("%s: the backend's property names were lost: %s", resp.Href, r.body)
		}
	}
}

// FuzzXMLTree checks that whatever the rewrite accepts, its output is
// well-formed and stable: rewritten again, it is the same.
func FuzzXMLTree(f *testing.F) {
	for _, s := range []string{
		`<D:multistatus xmlns:D="DAV:"><D:response><D:href>/a</D:href></D:response></D:multistatus>`,
		`<a xmlns="urn:a"><b xmlns="">text &lt; &amp;</b><c:d xmlns:c="urn:c" c:e="1"/></a>`,
		`<?xml version="1.0"?><!-- c --><x><?pi data?><![CDATA[<raw>]]></x>`,
		`<!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>`,
		`<multistatus xmlns="DAV:"><response><href>/a</href><propstat><prop/><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>`,
		`<m:multistatus xmlns:m="DAV:"><m:response><m:href>/b</m:href><m:propstat><m:prop><m:lockdiscovery/><x xmlns="urn:x"/></m:prop>` +
			`<m:status>HTTP/1.1 404 Not Found</m:status></m:propstat><m:propstat><m:prop><m:supportedlock/></m:prop><m:status>HTTP/1.1 404 x</m:status></m:propstat></m:response></m:multistatus>`,
	} {
		f.Add([]byte(s))
	}
	disc := func(p string) ([]byte, error) {
		return LockDiscoveryElement(ActiveLock{Root: p, Token: "urn:uuid:x", Scope: lockstore.Exclusive, Depth: lockstore.DepthInfinity, Owner: []byte(`<D:href xmlns:D="DAV:">o</D:href>`), Timeout: 5e9}), nil
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, want := range []lockPropsWanted{{discovery: true, supported: true}, {discovery: true, supported: true, names: true}, {supported: true}} {
			out, err := rewriteString(t.Context(), string(data), want, disc)
			if err != nil {
				return
			}
			dec := xml.NewDecoder(strings.NewReader(out))
			dec.Strict = true
			for {
				if _, err := dec.Token(); err == io.EOF {
					break
				} else if err != nil {
					t.Fatalf("output %q of %q is not well-formed: %v", out, data, err)
				}
			}
			out2, err := rewriteString(t.Context(), out, want, disc)
			if err != nil {
				t.Fatalf("output %q of %q is refused: %v", out, data, err)
			}
			if out != out2 {
				t.Fatalf("not stable:\n%s\n%s", out, out2)
			}
		}
	})
}

// rewriteString runs the PROPFIND rewrite on doc without a depth limit
// and returns the answer as the client would get it.
func rewriteString(ctx context.Context, doc string, want lockPropsWanted, disc func(string) ([]byte, error)) (string, error) {
	ms, err := rewriteMultiStatus(ctx, []byte(doc), want, disc, 0)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := ms.writeOut(&b); err != nil {
		return "", err
	}
	if b.Len() != ms.size() {
		return "", fmt.Errorf("wrote %d bytes, announced %d", b.Len(), ms.size())
	}
	return b.String(), nil
}

// deepAnswer is a multistatus whose one response holds a dead property
// nested depth deep, every level declaring a namespace of its own.
func deepAnswer(depth int) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/deep</D:href><D:propstat><D:prop>`)
	for i := range depth {
		fmt.Fprintf(&b, `<n%d:p xmlns:n%d="urn:%d">`, i, i, i)
	}
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&b, `</n%d:p>`, i)
	}
	b.WriteString(`</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>`)
	return b.Bytes()
}

// wideAnswer is a multistatus of about size bytes: the members of
// /wide, as a file server lists them for allprop.
func wideAnswer(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:">`)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, `<D:response><D:href>/wide/f%d</D:href><D:propstat><D:prop><D:displayname>f%d</D:displayname>`+
			`<D:getcontentlength>1</D:getcontentlength><D:getlastmodified>Sat, 05 Dec 2026 01:00:00 GMT</D:getlastmodified><D:resourcetype/>`+
			`</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat><D:propstat><D:prop><D:lockdiscovery/></D:prop>`+
			`<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat></D:response>`, i, i)
	}
	b.WriteString(`</D:multistatus>`)
	return b.Bytes()
}

// denseAnswer is a multistatus of about size bytes whose one response
// holds a dead property of many tiny elements.
func denseAnswer(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/dense</D:href><D:propstat><D:prop><x:p xmlns:x="urn:x">`)
	for b.Len() < size {
		b.WriteString(`<x:a/>`)
	}
	b.WriteString(`</x:p></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>`)
	return b.Bytes()
}

// TestMultiStatusRewriteLinear checks that the namespace bookkeeping of
// the PROPFIND rewrite grows linearly with the answer: ten times as deep
// an answer, with a namespace declared per level, costs about ten times
// the scope operations (it cost a hundred times when every lookup
// scanned all open elements).
func TestMultiStatusRewriteLinear(t *testing.T) {
	steps := func(depth int) int {
		doc := deepAnswer(depth)
		r := &msReader{
			multiStatus: multiStatus{ctx: t.Context(), doc: doc, want: lockPropsWanted{supported: true}, supported: SupportedLockElement()},
			budget:      1 << 30, declared: map[string]int{}, seen: map[string]string{},
		}
		if err := r.read(); err != nil {
			t.Fatalf("depth %d: %v", depth, err)
		}
		if len(r.edits) != 1 || r.edits[0].ins != 1 {
			t.Fatalf("depth %d: edits %+v, want the one insertion", depth, r.edits)
		}
		return r.steps
	}
	small, large := steps(10_000), steps(100_000)
	t.Logf("namespace scope operations: %d at depth 10 000, %d at depth 100 000", small, large)
	if large > 11*small {
		t.Fatalf("ten times deeper cost %.1f times the operations; want about 10", float64(large)/float64(small))
	}
	if large > 4*100_000 {
		t.Fatalf("%d operations for 100 000 elements, want a few per element", large)
	}
}

// TestMultiStatusRewriteStopsWhenClientLeaves checks that the rewrite
// ends, with the context's error, once the client has gone: here it
// leaves during the lock lookup of the first of 1 000 responses, and no
// other lookup is made.
func TestMultiStatusRewriteStopsWhenClientLeaves(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	lookups := 0
	disc := func(string) ([]byte, error) {
		lookups++
		cancel() // the client leaves
		return LockDiscoveryElement(), nil
	}
	_, err := rewriteMultiStatus(ctx, wideAnswer(300_000), lockPropsWanted{discovery: true}, disc, maxMultiStatusDepth)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("rewrite returned %v, want the context's error", err)
	}
	if lookups != 1 {
		t.Fatalf("%d lock lookups, want 1: the rewrite went on after the client left", lookups)
	}
	// A client gone before the rewrite: nothing is read, however deep.
	r := &msReader{multiStatus: multiStatus{ctx: ctx, doc: deepAnswer(100_000)}, budget: 1 << 30, declared: map[string]int{}, seen: map[string]string{}}
	if err := r.read(); !errors.Is(err, context.Canceled) || r.steps != 0 {
		t.Fatalf("read returned %v after %d steps, want the context's error at once", err, r.steps)
	}
	// And one that leaves while the answer is written.
	ms, err := rewriteMultiStatus(t.Context(), wideAnswer(300_000), lockPropsWanted{supported: true}, nil, maxMultiStatusDepth)
	if err != nil {
		t.Fatal(err)
	}
	ms.ctx = ctx
	var out bytes.Buffer
	if err := ms.writeOut(&out); !errors.Is(err, context.Canceled) || out.Len() != 0 {
		t.Fatalf("writeOut returned %v after %d bytes, want the context's error at once", err, out.Len())
	}
}

// TestMultiStatusRewriteLimits checks the limits past which an answer is
// left as the backend wrote it: nesting deeper than maxMultiStatusDepth,
// and lock properties that would keep more than multiStatusKeepFactor
// times the answer in memory.
func TestMultiStatusRewriteLimits(t *testing.T) {
	want := lockPropsWanted{discovery: true, supported: true}
	none := func(string) ([]byte, error) { return LockDiscoveryElement(), nil }
	if _, err := rewriteMultiStatus(t.Context(), deepAnswer(maxMultiStatusDepth-5), want, none, maxMultiStatusDepth); err != nil {
		t.Fatalf("at the depth limit: %v", err)
	}
	if _, err := rewriteMultiStatus(t.Context(), deepAnswer(maxMultiStatusDepth), want, none, maxMultiStatusDepth); !errors.Is(err, errMultiStatusLimit) {
		t.Fatalf("past the depth limit: %v, want errMultiStatusLimit", err)
	}
	// A distinct 64 KiB lockdiscovery for each of 50 responses: 3 MiB
	// for a 30 KiB answer.
	n := 0
	big := func(string) ([]byte, error) {
		n++
		return LockDiscoveryElement(ActiveLock{Root: "/", Owner: bytes.Repeat([]byte("o"), 64<<10), Token: fmt.Sprint(n)}), nil
	}
	if _, err := rewriteMultiStatus(t.Context(), wideAnswer(30_000), want, big, maxMultiStatusDepth); !errors.Is(err, errMultiStatusLimit) {
		t.Fatalf("past the memory limit: %v, want errMultiStatusLimit", err)
	}
	// The same element for every response is kept once.
	same := func(string) ([]byte, error) {
		return LockDiscoveryElement(ActiveLock{Root: "/", Owner: bytes.Repeat([]byte("o"), 64<<10), Token: "t"}), nil
	}
	if _, err := rewriteMultiStatus(t.Context(), wideAnswer(30_000), want, same, maxMultiStatusDepth); err != nil {
		t.Fatalf("one lock shown in every response: %v", err)
	}
}

// TestDAVPropfindLargeAnswer sends PROPFINDs through a real Caddy with
// `lock { webdav }` in front of a backend that answers them with large
// multistatus documents: a listing of 8 MB, one dead property of 8 MB of
// tiny elements, and one nested 100 000 deep with a namespace per level.
// The first two come back with the lock properties added; the deep one,
// past maxMultiStatusDepth, as the backend wrote it. Each costs Caddy
// memory bounded by a multiple of the answer: the heap never grows by
// more than 20 times its size (the listing's was over 100 times, and the
// deep one took 20 s of CPU, when the answer was parsed into a tree).
func TestDAVPropfindLargeAnswer(t *testing.T) {
	answers := map[string][]byte{
		"/wide":  wideAnswer(maxMultiStatus - 1024),
		"/dense": denseAnswer(maxMultiStatus - 1024),
		"/deep":  deepAnswer(100_000),
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
		cpu := processCPU()
		peak := peakHeapGrowth(func() {
			r = davDo(t, "PROPFIND", site+p, "", map[string]string{"Depth": "1"})
		})
		cpu = processCPU() - cpu
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

// processCPU is the CPU time the test process has used, for the log.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMultiStatusRewrite measures the rewrite of large answers,
// without the nesting limit so that the deep ones are rewritten too.
func BenchmarkMultiStatusRewrite(b *testing.B) {
	disc := func(string) ([]byte, error) { return LockDiscoveryElement(), nil }
	for _, c := range []struct {
		name string
		doc  []byte
	}{
		{"deep10k", deepAnswer(10_000)},
		{"deep100k", deepAnswer(100_000)},
		{"wide8MB", wideAnswer(maxMultiStatus - 1024)},
		{"dense8MB", denseAnswer(maxMultiStatus - 1024)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.doc)))
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				ms, err := rewriteMultiStatus(b.Context(), c.doc, lockPropsWanted{discovery: true, supported: true}, disc, 0)
				if err != nil {
					b.Fatal(err)
				}
				if err := ms.writeOut(io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
		})
	}
}
