package caddylock

import (
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Generated ETags: stable for identical bodies, changing with the body,
// the same for HEAD and GET (a HEAD reaches the backend as a GET); a
// backend's own ETag is kept; large, ranged, encoded and streamed-past-
// the-limit answers get none.
func TestGeneratedETags(t *testing.T) {
	b := newDocBackend(t, false)
	url := etagSite(t, "etags\n etag_max_size 1KiB", b)
	b.set("/a", "same body")
	b.set("/b", "same body")
	get := func(p string, header ...string) result {
		t.Helper()
		r := send(t, http.MethodGet, url+p, "", header...)
		if r.status != http.StatusOK && r.status != http.StatusPartialContent {
			t.Fatalf("GET %s: %d %s", p, r.status, r.body)
		}
		return r
	}
	ra := get("/a")
	tag := ra.header.Get("ETag")
	if !strings.HasPrefix(tag, `"`) || strings.HasPrefix(tag, "W/") || ra.body != "same body" {
		t.Fatalf("GET /a: ETag %q body %q, want a strong tag and the body", tag, ra.body)
	}
	if again := get("/a").header.Get("ETag"); again != tag {
		t.Fatalf("ETag of one body changed between reads: %q, %q", tag, again)
	}
	if other := get("/b").header.Get("ETag"); other != tag {
		t.Fatalf("identical bodies got %q and %q", tag, other)
	}
	h := send(t, http.MethodHead, url+"/a", "")
	if h.status != http.StatusOK || h.header.Get("ETag") != tag || h.body != "" || h.header.Get("Content-Length") != "9" {
		t.Fatalf("HEAD /a: %d ETag %q Content-Length %q body %q; want GET's tag %q", h.status, h.header.Get("ETag"), h.header.Get("Content-Length"), h.body, tag)
	}
	// The backend cannot answer a conditional GET with the proxy's tag:
	// the proxy does.
	if r := send(t, http.MethodGet, url+"/a", "", "If-None-Match", tag); r.status != http.StatusNotModified || r.body != "" || r.header.Get("ETag") != tag {
		t.Fatalf("GET with If-None-Match of the current tag: %d ETag %q body %q, want 304", r.status, r.header.Get("ETag"), r.body)
	}
	if r := send(t, http.MethodGet, url+"/a", "", "If-None-Match", `"old"`); r.status != http.StatusOK {
		t.Fatalf("GET with If-None-Match of another tag: %d", r.status)
	}
	b.mu.Lock()
	heads := b.heads
	b.mu.Unlock()
	if heads != 0 {
		t.Fatalf("%d HEADs reached the backend; etags asks with GET", heads)
	}
	b.set("/a", "another body")
	if changed := get("/a").header.Get("ETag"); changed == tag || changed == "" {
		t.Fatalf("ETag %q after the body changed, before %q", changed, tag)
	}
	// A chunked answer (reverse_proxy flushes each write) still gets one.
	b.set("/chunked", "streamed in pieces")
	if r := get("/chunked"); r.header.Get("ETag") == "" || r.body != "streamed in pieces" {
		t.Fatalf("chunked: ETag %q body %q", r.header.Get("ETag"), r.body)
	}
	big := strings.Repeat("x", 2048)
	b.set("/big", big)
	b.set("/chunkedbig", big)
	b.set("/gz", "pretend gzip")
	for _, c := range []struct {
		path, body string
		header     []string
	}{
		{"/big", big, nil},
		{"/chunkedbig", big, nil},
		{"/gz", "pretend gzip", []string{"Accept-Encoding", "gzip"}}, // so that the client does not decode it
		{"/a", "another", []string{"Range", "bytes=0-6"}},
	} {
		r := get(c.path, c.header...)
		if r.header.Get("ETag") != "" || r.body != c.body {
			t.Errorf("GET %s %v: ETag %q, body of %d bytes; want no tag and the body", c.path, c.header, r.header.Get("ETag"), len(r.body))
		}
	}
	if h := send(t, http.MethodHead, url+"/big", ""); h.header.Get("ETag") != "" || h.header.Get("Content-Length") != "2048" {
		t.Errorf("HEAD /big: ETag %q Content-Length %q", h.header.Get("ETag"), h.header.Get("Content-Length"))
	}

	// A backend's own tag is kept, and is what verify_etag compares.
	bb := newDocBackend(t, true)
	url2 := etagSite(t, "etags\n verify_etag", bb)
	bb.set("/k", "kept")
	if r := send(t, http.MethodGet, url2+"/k", ""); r.header.Get("ETag") != `"v1"` {
		t.Fatalf("backend ETag replaced: %q", r.header.Get("ETag"))
	}
	if r := send(t, http.MethodHead, url2+"/k", ""); r.header.Get("ETag") != `"v1"` {
		t.Fatalf("HEAD: backend ETag replaced: %q", r.header.Get("ETag"))
	}
}

func TestUnmarshalETagOptions(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  Handler
		err   string
	}{
		{"lock {\n etags\n require_if_match\n verify_etag\n}", Handler{ETags: true, RequireIfMatch: true, VerifyETag: true}, ""},
		{"lock {\n verify_etag get\n etag_max_size 256KiB\n}", Handler{VerifyETag: true, VerifyETagGET: true, ETagMaxSize: 256 << 10}, ""},
		{"lock {\n verify_etag head\n}", Handler{}, "the only argument is get"},
		{"lock {\n etags on\n}", Handler{}, "unexpected argument"},
		{"lock {\n etag_max_size 0\n}", Handler{}, "expected a positive size"},
		{"lock {\n etag_max_size\n}", Handler{}, "expected a size"},
		{"lock {\n etags\n etags\n}", Handler{}, "given twice"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", tc.input, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(h, tc.want) {
			t.Errorf("%q: got %+v, %v; want %+v", tc.input, h, err, tc.want)
		}
	}
	if err := (&Handler{VerifyETagGET: true}).Validate(); err == nil {
		t.Error("verify_etag_get without verify_etag validated")
	}
	if err := (&Handler{ETagMaxSize: -1}).Validate(); err == nil {
		t.Error("a negative etag_max_size validated")
	}
}
