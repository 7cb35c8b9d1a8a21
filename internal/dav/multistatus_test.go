package dav

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav/davtest"
	"github.com/caddy-lock/caddy-lock/lockstore"
)

func TestPropfindWants(t *testing.T) {
	all := LockPropsWanted{discovery: true, supported: true}
	for _, c := range []struct {
		body string
		want LockPropsWanted
	}{
		{"", all},
		{`<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>`, all},
		{`<propfind xmlns="DAV:"><prop><lockdiscovery/></prop></propfind>`, LockPropsWanted{discovery: true}},
		{`<propfind xmlns="DAV:"><prop><supportedlock/><getetag/></prop></propfind>`, LockPropsWanted{supported: true}},
		{`<propfind xmlns="DAV:"><propname/></propfind>`, LockPropsWanted{discovery: true, supported: true, names: true}},
		{`<propfind xmlns="DAV:"><prop><propname/><allprop/></prop></propfind>`, LockPropsWanted{}},
		{`<propfind xmlns="DAV:"><x:propname xmlns:x="urn:other"/></propfind>`, LockPropsWanted{}},
		{`<propfind xmlns="DAV:"><prop><x:lockdiscovery xmlns:x="urn:other"/></prop></propfind>`, LockPropsWanted{}},
		{`<propfind xmlns="DAV:"><prop><lockdiscovery/>`, LockPropsWanted{}},
		{`<!DOCTYPE x><propfind xmlns="DAV:"><allprop/></propfind>`, LockPropsWanted{}},
	} {
		if got := PropfindWants([]byte(c.body)); got != c.want {
			t.Errorf("PropfindWants(%s) = %+v; want %+v", c.body, got, c.want)
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
	out, err := rewriteString(t.Context(), doc, LockPropsWanted{discovery: true}, disc)
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
				Locks []struct {
					Token string `xml:"DAV: locktoken>href"`
				} `xml:"DAV: lockdiscovery>activelock"`
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
		`<m:response><m:href>/a</m:href><m:propstat><m:prop z:x="1">` + string(supportedLockElement()) + `</m:prop><m:status>HTTP/1.1 200 OK</m:status></m:propstat>` +
		`<m:propstat><m:prop><z:p/></m:prop><m:status>HTTP/1.1 404 Not Found</m:status></m:propstat>` +
		`</m:response></m:multistatus>`
	out, err := rewriteString(t.Context(), doc, LockPropsWanted{supported: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out != want {
		t.Fatalf("rewritten:\n%s\nwant:\n%s", out, want)
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
		for _, want := range []LockPropsWanted{{discovery: true, supported: true}, {discovery: true, supported: true, names: true}, {supported: true}} {
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
func rewriteString(ctx context.Context, doc string, want LockPropsWanted, disc func(string) ([]byte, error)) (string, error) {
	ms, err := rewriteMultiStatus(ctx, []byte(doc), want, disc, 0)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := ms.WriteOut(&b); err != nil {
		return "", err
	}
	if b.Len() != ms.Size() {
		return "", fmt.Errorf("wrote %d bytes, announced %d", b.Len(), ms.Size())
	}
	return b.String(), nil
}

// TestMultiStatusRewriteLinear checks that the namespace bookkeeping of
// the PROPFIND rewrite grows linearly with the answer: ten times as deep
// an answer, with a namespace declared per level, costs about ten times
// the scope operations (it cost a hundred times when every lookup
// scanned all open elements).
func TestMultiStatusRewriteLinear(t *testing.T) {
	steps := func(depth int) int {
		doc := davtest.DeepAnswer(depth)
		r := &msReader{
			MultiStatus: MultiStatus{ctx: t.Context(), doc: doc, want: LockPropsWanted{supported: true}, supported: supportedLockElement()},
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
	_, err := rewriteMultiStatus(ctx, davtest.WideAnswer(300_000), LockPropsWanted{discovery: true}, disc, maxMultiStatusDepth)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("rewrite returned %v, want the context's error", err)
	}
	if lookups != 1 {
		t.Fatalf("%d lock lookups, want 1: the rewrite went on after the client left", lookups)
	}
	// A client gone before the rewrite: nothing is read, however deep.
	r := &msReader{MultiStatus: MultiStatus{ctx: ctx, doc: davtest.DeepAnswer(100_000)}, budget: 1 << 30, declared: map[string]int{}, seen: map[string]string{}}
	if err := r.read(); !errors.Is(err, context.Canceled) || r.steps != 0 {
		t.Fatalf("read returned %v after %d steps, want the context's error at once", err, r.steps)
	}
	// And one that leaves while the answer is written.
	ms, err := rewriteMultiStatus(t.Context(), davtest.WideAnswer(300_000), LockPropsWanted{supported: true}, nil, maxMultiStatusDepth)
	if err != nil {
		t.Fatal(err)
	}
	ms.ctx = ctx
	var out bytes.Buffer
	if err := ms.WriteOut(&out); !errors.Is(err, context.Canceled) || out.Len() != 0 {
		t.Fatalf("WriteOut returned %v after %d bytes, want the context's error at once", err, out.Len())
	}
}

// TestMultiStatusRewriteLimits checks the limits past which an answer is
// left as the backend wrote it: nesting deeper than maxMultiStatusDepth,
// and lock properties that would keep more than multiStatusKeepFactor
// times the answer in memory.
func TestMultiStatusRewriteLimits(t *testing.T) {
	want := LockPropsWanted{discovery: true, supported: true}
	none := func(string) ([]byte, error) { return LockDiscoveryElement(), nil }
	if _, err := rewriteMultiStatus(t.Context(), davtest.DeepAnswer(maxMultiStatusDepth-5), want, none, maxMultiStatusDepth); err != nil {
		t.Fatalf("at the depth limit: %v", err)
	}
	if _, err := rewriteMultiStatus(t.Context(), davtest.DeepAnswer(maxMultiStatusDepth), want, none, maxMultiStatusDepth); !errors.Is(err, errMultiStatusLimit) {
		t.Fatalf("past the depth limit: %v, want errMultiStatusLimit", err)
	}
	// A distinct 64 KiB lockdiscovery for each of 50 responses: 3 MiB
	// for a 30 KiB answer.
	n := 0
	big := func(string) ([]byte, error) {
		n++
		return LockDiscoveryElement(ActiveLock{Root: "/", Owner: bytes.Repeat([]byte("o"), 64<<10), Token: fmt.Sprint(n)}), nil
	}
	if _, err := rewriteMultiStatus(t.Context(), davtest.WideAnswer(30_000), want, big, maxMultiStatusDepth); !errors.Is(err, errMultiStatusLimit) {
		t.Fatalf("past the memory limit: %v, want errMultiStatusLimit", err)
	}
	// The same element for every response is kept once.
	same := func(string) ([]byte, error) {
		return LockDiscoveryElement(ActiveLock{Root: "/", Owner: bytes.Repeat([]byte("o"), 64<<10), Token: "t"}), nil
	}
	if _, err := rewriteMultiStatus(t.Context(), davtest.WideAnswer(30_000), want, same, maxMultiStatusDepth); err != nil {
		t.Fatalf("one lock shown in every response: %v", err)
	}
}

// BenchmarkMultiStatusRewrite measures the rewrite of large answers,
// without the nesting limit so that the deep ones are rewritten too.
func BenchmarkMultiStatusRewrite(b *testing.B) {
	const handlerLimit = 8 << 20 // the largest answer the handler edits
	disc := func(string) ([]byte, error) { return LockDiscoveryElement(), nil }
	for _, c := range []struct {
		name string
		doc  []byte
	}{
		{"deep10k", davtest.DeepAnswer(10_000)},
		{"deep100k", davtest.DeepAnswer(100_000)},
		{"wide8MB", davtest.WideAnswer(handlerLimit - 1024)},
		{"dense8MB", davtest.DenseAnswer(handlerLimit - 1024)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.doc)))
			b.ReportAllocs()
			cpu := davtest.ProcessCPU()
			for b.Loop() {
				ms, err := rewriteMultiStatus(b.Context(), c.doc, LockPropsWanted{discovery: true, supported: true}, disc, 0)
				if err != nil {
					b.Fatal(err)
				}
				if err := ms.WriteOut(io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(davtest.ProcessCPU()-cpu)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
		})
	}
}
