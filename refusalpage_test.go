package caddylock

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
)

// chromiumAccept is what Chromium sends for a page or a form
// submission (browserAccept, in davhandler_test.go, is Firefox's).
const chromiumAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"

func TestPrefersHTML(t *testing.T) {
	for _, c := range []struct {
		accept []string // nil: no Accept header
		want   bool
	}{
		{[]string{chromiumAccept}, true},
		{[]string{browserAccept}, true},
		{[]string{"text/html"}, true},
		{[]string{"TEXT/HTML"}, true},
		{[]string{" text/html ; q=1.0 , application/json;q=0.5"}, true},
		{[]string{"application/json", "text/html;q=0.9"}, false},
		{[]string{"application/json;q=0.5", "text/html"}, true}, // two header lines
		{[]string{"text/*,application/*;q=0.5"}, true},
		{nil, false},
		{[]string{""}, false},
		{[]string{"*/*"}, false},                        // curl
		{[]string{"application/json"}, false},           // an API client
		{[]string{"application/problem+json"}, false},   // one that knows refusals
		{[]string{"text/html,application/json"}, false}, // a tie is not a preference
		{[]string{"text/html;q=0.9,*/*"}, false},
		{[]string{"text/html,application/problem+json"}, false},
		{[]string{"text/html;q=0,*/*;q=0.1"}, false},
		{[]string{"text/html;q=2"}, false},      // not a qvalue: never wins
		{[]string{"text/html;q=0.1234"}, false}, // nor this
		{[]string{"text/html;q=abc"}, false},
		{[]string{"text/*;q=0.9,text/html;q=0.1,*/*;q=0.5"}, false}, // the exact range counts
		{[]string{"application/xml"}, false},
		{[]string{"garbage"}, false},
	} {
		h := http.Header{}
		if c.accept != nil {
			h["Accept"] = c.accept
		}
		if got := prefersHTML(h); got != c.want {
			t.Errorf("prefersHTML(Accept: %q) = %v, want %v", c.accept, got, c.want)
		}
	}
}

// TestPrefersHTMLAllocs keeps the check free for the clients that get
// problem+json: every refusal asks it.
func TestPrefersHTMLAllocs(t *testing.T) {
	for _, accept := range []string{"", "*/*", "application/json", "application/problem+json;q=1.0, */*;q=0.1", chromiumAccept} {
		h := http.Header{}
		if accept != "" {
			h.Set("Accept", accept)
		}
		if n := testing.AllocsPerRun(100, func() { prefersHTML(h) }); n != 0 {
			t.Errorf("prefersHTML(Accept: %q) allocates %v times, want 0", accept, n)
		}
	}
}

func TestWantsRefusalPageNotForDAV(t *testing.T) {
	for _, c := range []struct {
		method string
		header []string
		want   bool
	}{
		{"POST", nil, true},
		{"PUT", nil, true},
		{"PUT", []string{"If", "(<urn:uuid:x>)"}, false},
		{"PUT", []string{"Depth", "0"}, false},
		{"PROPPATCH", nil, false},
		{"MOVE", []string{"Destination", "/b"}, false},
	} {
		r := httptest.NewRequest(c.method, "/a", nil)
		r.Header.Set("Accept", browserAccept)
		for i := 0; i < len(c.header); i += 2 {
			r.Header.Set(c.header[i], c.header[i+1])
		}
		if got := wantsRefusalPage(r); got != c.want {
			t.Errorf("%s with %q: wantsRefusalPage = %v, want %v", c.method, c.header, got, c.want)
		}
	}
}

func TestRefusalPageEscapes(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/x", nil)
	r.Header.Set("Referer", `http://other.example/"><script>alert(1)</script>`)
	key := `/a/<script>alert("k")</script>&"'`
	p := problem{Type: problemType, Title: "Resource is locked", Status: http.StatusLocked,
		Detail: "POST " + key, Instance: "/x",
		Lock: &problemLock{Key: key, Kind: "exclusive", HeldSeconds: 2.25}}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	body, err := appendRefusalPage(nil, r, &p, 7, now)
	if err != nil {
		t.Fatal(err)
	}
	page := string(body)
	if strings.Contains(page, "<script>alert") || strings.Contains(page, `"k")`) {
		t.Fatalf("the key reached the page unescaped:\n%s", page)
	}
	for _, want := range []string{
		`<html lang="en">`,
		`<title>423 Resource is locked</title>`,
		`<h1>Resource is locked</h1>`,
		`<code id="key">/a/&lt;script&gt;alert(&#34;k&#34;)&lt;/script&gt;&amp;&#34;&#39;</code> (exclusive lock)`,
		`<time datetime="2026-01-02T03:04:02Z">03:04:02 UTC</time>, held for <span id="held">2.2</span> seconds`,
		`in <span id="retry-seconds">7</span> seconds`,
		`href="/"`, // a foreign Referer is not linked to
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s:\n%s", want, page)
		}
	}
	if strings.Count(page, "<script>") != 1 {
		t.Errorf("page has other scripts than its own:\n%s", page)
	}
	// No external resource: nothing is fetched from anywhere.
	if m := regexp.MustCompile(`(?i)(src|href)="(https?:)?//`).FindString(page); m != "" {
		t.Errorf("page refers to an external resource (%s)", m)
	}

	r.Header.Set("Referer", "http://"+r.Host+"/form?x=1")
	body, err = appendRefusalPage(nil, r, &p, 1, now)
	if err != nil {
		t.Fatal(err)
	}
	if page := string(body); !strings.Contains(page, `href="/form?x=1"`) || !strings.Contains(page, `in <span id="retry-seconds">1</span> second<`) {
		t.Errorf("page does not go back to the form of this site, or miscounts one second:\n%s", page)
	}
}

// TestRefusalPageThroughCaddy: a browser that meets a held write gets
// the page, with the status, Retry-After and Vary of the problem
// document; curl, an API client and a WebDAV client keep theirs.
func TestRefusalPageThroughCaddy(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone html\n retry_after 7s\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/docs/a<b>.txt", "w")

	r := mustDo(t, http.MethodPost, url+"/docs/a%3Cb%3E.txt", map[string]string{"Accept": browserAccept}, http.StatusLocked)
	if ct := r.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("browser: Content-Type = %q, want text/html; charset=utf-8", ct)
	}
	if ra := r.header.Get("Retry-After"); ra != "7" {
		t.Errorf("browser: Retry-After = %q, want 7", ra)
	}
	if v := r.header.Values("Vary"); len(v) != 1 || v[0] != "Accept" {
		t.Errorf("browser: Vary = %q, want Accept", v)
	}
	if cl := r.header.Get("Content-Length"); cl != strconv.Itoa(len(r.body)) {
		t.Errorf("browser: Content-Length = %q for a body of %d bytes", cl, len(r.body))
	}
	for _, want := range []string{`<h1>Resource is locked</h1>`, `<code id="key">/docs/a&lt;b&gt;.txt</code>`, `<span id="retry-seconds">7</span>`} {
		if !strings.Contains(r.body, want) {
			t.Errorf("browser: page lacks %s:\n%s", want, r.body)
		}
	}

	for _, c := range []struct {
		name   string
		header map[string]string
		vary   bool
	}{
		{"curl", map[string]string{"Accept": "*/*"}, true},
		{"API client", map[string]string{"Accept": "application/json"}, true},
		{"no Accept", nil, true},
		{"WebDAV client", map[string]string{"Accept": browserAccept, "If": "(<urn:uuid:nope>)"}, true},
	} {
		r := do(http.DefaultClient, http.MethodPost, url+"/docs/a%3Cb%3E.txt", c.header)
		assertLocked(t, r, "/docs/a<b>.txt")
		if ra := r.header.Get("Retry-After"); ra != "7" {
			t.Errorf("%s: Retry-After = %q, want 7", c.name, ra)
		}
		if v := r.header.Get("Vary"); v != "Accept" {
			t.Errorf("%s: Vary = %q, want Accept", c.name, v)
		}
	}
	if writes, _, _ := b.counts(); writes != 1 {
		t.Errorf("%d writes reached the backend, want only the held one", writes)
	}
	b.open("w")
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("held write: %d %v", r.status, r.err)
	}
}

// TestRefusalPageFullTable: the 503 of a full table is a page too.
func TestRefusalPageFullTable(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone htmlfull\n max_locks 1\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/one", "w")
	r := mustDo(t, http.MethodPost, url+"/two", map[string]string{"Accept": browserAccept}, http.StatusServiceUnavailable)
	if ct := r.header.Get("Content-Type"); ct != "text/html; charset=utf-8" || r.header.Get("Retry-After") != "1" {
		t.Errorf("Content-Type %q, Retry-After %q; want the page and 1", ct, r.header.Get("Retry-After"))
	}
	if !strings.Contains(r.body, "<h1>Lock table is full</h1>") || !strings.Contains(r.body, `<span id="retry-seconds">1</span> second<`) {
		t.Errorf("page:\n%s", r.body)
	}
	r = mustDo(t, http.MethodPost, url+"/two", map[string]string{"Accept": "*/*"}, http.StatusServiceUnavailable)
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("curl: Content-Type %q", ct)
	}
	b.open("w")
	<-done
}

// TestRefusalPageNotWithHandleErrors: use_handle_errors leaves the
// answer to the site's handle_errors, whatever the client accepts.
func TestRefusalPageNotWithHandleErrors(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone htmlhe\n use_handle_errors\n}\nreverse_proxy {backend}\nhandle_errors {\n respond \"custom {err.status_code}\"\n}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/doc", "w")
	r := mustDo(t, http.MethodPost, url+"/doc", map[string]string{"Accept": browserAccept}, http.StatusLocked)
	if r.body != "custom 423" {
		t.Errorf("body %q, want handle_errors' custom 423", r.body)
	}
	b.open("w")
	<-done
}

// BenchmarkRefusalAccept is BenchmarkRefusal for clients that send an
// Accept header: API clients must pay no more than BenchmarkRefusal, a
// browser pays for its page.
func BenchmarkRefusalAccept(b *testing.B) {
	for _, c := range []struct{ name, accept string }{
		{"curl", "*/*"},
		{"json", "application/json"},
		{"browser", chromiumAccept},
	} {
		b.Run(c.name, func(b *testing.B) { benchRefusal(b, "bench-refusal-"+c.name, c.accept) })
	}
}

// TestRefusalPageExplicitLock: a form posted to a resource that a
// WebDAV client has locked gets the page too, saying until when; the
// WebDAV client itself keeps DAV:error.
func TestRefusalPageExplicitLock(t *testing.T) {
	url, _ := davSite(t, "")
	davLock(t, url+"/doc.txt", "exclusive", "alice", nil, http.StatusCreated)
	r := davDo(t, http.MethodPost, url+"/doc.txt", "text=x", map[string]string{"Accept": chromiumAccept})
	if r.status != http.StatusLocked || r.header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("browser: %d %q, want 423 and the page; body: %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	for _, want := range []string{`<code id="key">/doc.txt</code> (exclusive lock)`, `<dt>Until</dt>`, `locked this resource for editing`} {
		if !strings.Contains(r.body, want) {
			t.Errorf("page lacks %s:\n%s", want, r.body)
		}
	}
	if ra := r.header.Get("Retry-After"); ra == "" || r.header.Get("Vary") != "Accept" {
		t.Errorf("Retry-After %q, Vary %q", ra, r.header.Get("Vary"))
	}
	r = davDo(t, http.MethodPut, url+"/doc.txt", "x", map[string]string{"Accept": chromiumAccept, "Depth": "0"})
	assertDAVError(t, r, http.StatusLocked, dav.CondLockTokenSubmitted, "/doc.txt")
}

// TestRefusalPagePrecondition: a browser that saves an outdated version
// (412) or an unconditional one under require_if_match (428) is told to
// reload before saving again, not to wait and submit the same form again
// as for a lock; the 423 page keeps that advice.
func TestRefusalPagePrecondition(t *testing.T) {
	b := newDocBackend(t, true)
	b.set("/d", "v1")
	url := startCaddy(t, fmt.Sprintf("lock {\n zone %s\n verify_etag\n require_if_match\n}\nreverse_proxy %s",
		strings.NewReplacer("/", "_").Replace(t.Name()), strings.TrimPrefix(b.URL, "http://")), nil)
	for _, c := range []struct {
		name    string
		header  []string
		status  int
		explain string
	}{
		{"outdated", []string{"If-Match", `"v0"`}, http.StatusPreconditionFailed, "Someone else changed this since you loaded it"},
		{"unconditional", nil, http.StatusPreconditionRequired, "This page must be reloaded before saving"},
	} {
		r := send(t, http.MethodPost, url+"/d", "text=new", append(c.header, "Accept", chromiumAccept)...)
		if r.status != c.status || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
			t.Fatalf("%s: %d %q, want %d and the page; body %s", c.name, r.status, r.header.Get("Content-Type"), c.status, r.body)
		}
		for _, want := range []string{c.explain, `<p id="advice">` + adviceReload + `</p>`} {
			if !strings.Contains(r.body, want) {
				t.Errorf("%s: page lacks %q:\n%s", c.name, want, r.body)
			}
		}
		if strings.Contains(r.body, "wait, then submit again") || strings.Contains(r.body, "<dl>") {
			t.Errorf("%s: page tells to submit the same again, or shows an empty lock box:\n%s", c.name, r.body)
		}
	}
	if w := b.writesSeen(); len(w) != 0 {
		t.Fatalf("backend saw %q", w)
	}
	// A lock's page keeps its own advice.
	p := problem{Type: problemType, Title: "Resource is locked", Status: http.StatusLocked, Detail: "POST /d", Instance: "/d",
		Lock: &problemLock{Key: "/d", Kind: "exclusive", HeldSeconds: 1}}
	body, err := appendRefusalPage(nil, httptest.NewRequest(http.MethodPost, "/d", nil), &p, 3, time.Now())
	if err != nil || !strings.Contains(string(body), `<p id="advice">`+adviceRetry+`</p>`) {
		t.Fatalf("423 page (%v) lacks its advice:\n%s", err, body)
	}
}
