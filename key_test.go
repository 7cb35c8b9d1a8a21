package caddylock

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
)

// normalizePath is the key of p, or "" when p is refused: for recording
// backends in tests, which key what reached them as the handler would.
func normalizePath(p string) string {
	k, _ := pathKey(p)
	return k
}

func TestPathKey(t *testing.T) {
	for in, want := range map[string]string{
		"/":                        "/",
		"":                         "/",
		"/a/b":                     "/a/b",
		"/a/b/":                    "/a/b",
		"/a//b":                    "/a/b",
		"//a/b":                    "/a/b",
		"/a/./b":                   "/a/b",
		"/a/x/../b":                "/a/b",
		"/../../a/b":               "/a/b",
		"/a/b/.":                   "/a/b",
		"/a/b/..":                  "/a",
		"/a%2Fb":                   "/a/b",
		"/a%2fb":                   "/a/b",
		"/%61/b":                   "/a/b",
		"/a%252Fb":                 "/a/b",
		"/a%25252Fb":               "/a/b",
		"/a/b;jsessionid=1":        "/a/b",
		"/a;x=1/b;y=2":             "/a/b",
		"/a/b%3Bx":                 "/a/b",
		`/a\b`:                     "/a/b",
		"/a%5Cb":                   "/a/b",
		"/a/%2e%2e/a/b":            "/a/b",
		"/100%":                    "/100%",
		"/100%zz/a%2Fb":            "/100%zz/a/b",
		"/a.b/.c/..d":              "/a.b/.c/..d",
		"relative/path":            "/relative/path",
		"/files/report.txt%3B.jpg": "/files/report.txt",
		// Dot segments that every reading resolves alike.
		"/a/b/../c%2Fd": "/a/c/d",
		// NFC: composed and decomposed é are one name (Nextcloud, macOS).
		"/caf%C3%A9":            "/café",
		"/cafe%CC%81":           "/café",
		"/café":                 "/café",
		"/cafe\u0301":           "/café",
		"/x%CD%BEy/z":           "/x/z", // U+037E is ';' in NFC
		"/%E2%84%AA":            "/K",   // KELVIN SIGN is K
		"/a/doc.txt.":           "/a/doc.txt",
		"/a/doc.txt ":           "/a/doc.txt",
		"/a/doc.txt%20%2E%20":   "/a/doc.txt",
		"/a/dir./doc":           "/a/dir/doc",
		"/doc.txt::$DATA":       "/doc.txt",
		"/doc.txt:stream:$DATA": "/doc.txt",
		"/dir:x/doc":            "/dir/doc",
	} {
		got, err := pathKey(in)
		if err != nil || got != want {
			t.Errorf("pathKey(%q) = %q, %v; want %q", in, got, err, want)
			continue
		}
		// Keys are stable, and clean keys take the fast path.
		if again, err := pathKey(want); again != want || err != nil {
			t.Errorf("pathKey(%q) = %q, %v; not stable", want, again, err)
		}
		if !strings.ContainsAny(want, "%é") && !isCleanPath(want) {
			t.Errorf("isCleanPath(%q) = false for a key", want)
		}
	}
}

// TestPathKeyRefused lists spellings that backends read as different
// resources, or that cannot be read safely, each with the readings.
func TestPathKeyRefused(t *testing.T) {
	for _, c := range []struct{ in, result, why string }{
		// x/net/webdav and nginx decode once and write /a/c; decoding
		// twice first names /c.
		{"/a/b%252f..%252f../../c", resultAmbiguous, "/a/c (decode once) or /c (twice)"},
		{"/a/b%2f..%2f../../c", resultAmbiguous, "/a/c (no decoding) or /c (once)"},
		{"/a/%2e%2e/../b", resultAmbiguous, "/a/b (no decoding) or /b (once)"},
		{"/a/b%255c..%255c../../c", resultAmbiguous, `/a/c or /c (\ after two decodings)`},
		{`/a/b\..\../../c`, resultAmbiguous, `/a/c (nginx, \ is a byte) or /c (IIS)`},
		{"/a/b%5c..%5c../../c", resultAmbiguous, `/a/c (nginx) or /c (IIS)`},
		{"/a/b;x/../../c", resultAmbiguous, "equal readings? no: see below"},
		{"/a/b;x%2f..%2f../c", resultAmbiguous, "/a/b/c (Tomcat drops ;... first) or /c"},
		{"/a//../c", resultAmbiguous, "/c (merged) or /a/c (Apache keeps //)"},
		{"/a/b%2F%2e%2e/../c", resultAmbiguous, "/c (decode once) or /a/c (Apache's NoDecode keeps b%2F..)"},
		{"/a%2525252Fb", resultBadKey, "four layers of encoding"},
		{"/a/%FF", resultBadKey, "not UTF-8"},
		{"/a/%C3", resultBadKey, "not UTF-8"},
		{"/a/...", resultBadKey, "folds to an empty segment"},
		{"/a/.. /b", resultBadKey, "folds to .."},
		{"/a/..%20/b", resultBadKey, "folds to .."},
		{"/a/..::$DATA/b", resultBadKey, "folds to .."},
		{"/a/:x", resultBadKey, "folds to an empty segment"},
	} {
		k, err := pathKey(c.in)
		var pe *pathError
		if !errors.As(err, &pe) {
			if c.in == "/a/b;x/../../c" {
				// Every reading resolves .. past b;x and b alike.
				continue
			}
			t.Errorf("pathKey(%q) = %q, %v; want refused (%s)", c.in, k, err, c.why)
			continue
		}
		if pe.result != c.result {
			t.Errorf("pathKey(%q): result %q, want %q (%v)", c.in, pe.result, c.result, err)
		}
	}
}

// backendReadings are what servers make of a raw path, written apart from
// readings (which pathKey uses) so that the fuzz target checks the rule
// against models of the servers rather than against itself.
func backendReadings(raw string) []string {
	if !strings.HasPrefix(raw, "/") {
		raw = "/" + raw
	}
	var out []string
	if once, err := url.PathUnescape(raw); err == nil {
		out = append(out,
			path.Clean(once), // x/net/webdav behind net/http, nginx
			path.Clean(strings.ReplaceAll(once, `\`, "/")), // IIS
			apacheGetParents(once),                         // Apache
		)
		if twice, err := url.PathUnescape(once); err == nil {
			out = append(out, path.Clean(twice)) // decodes twice
		}
	}
	out = append(out, path.Clean(raw)) // no decoding at all
	var tomcat []string
	for _, s := range strings.Split(raw, "/") {
		s, _, _ = strings.Cut(s, ";")
		tomcat = append(tomcat, s)
	}
	if p, err := url.PathUnescape(strings.Join(tomcat, "/")); err == nil {
		out = append(out, path.Clean(p)) // Tomcat: ;params, decode, dots
	}
	return out
}

// apacheGetParents resolves dot segments as Apache's ap_getparents does,
// without merging "//" first.
func apacheGetParents(p string) string {
	var out []string
	for _, s := range strings.Split(p, "/")[1:] {
		switch s {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

// FuzzPathKey asserts the rule: every reading of a path that pathKey
// covers maps to its key, or the path is refused; and keys are stable.
func FuzzPathKey(f *testing.F) {
	for _, s := range []string{"/a/b", "/a/../b", "/a%2F..%2Fb", "/a;b/c", `/a\..\b`, "/%", "//./",
		"/a/b%252f..%252f../../c", "/caf%C3%A9", "/doc.txt::$DATA", "/a//../c", "/a/b;x%2f..%2f../c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		k, err := pathKey(p)
		if err != nil {
			var pe *pathError
			if !errors.As(err, &pe) {
				t.Fatalf("pathKey(%q): %v is not a *pathError", p, err)
			}
			return
		}
		for _, r := range backendReadings(p) {
			if rk, err := canonicalPath(r); err != nil || rk != k {
				t.Fatalf("pathKey(%q) = %q, but a backend reads %q, keyed %q (%v)", p, k, r, rk, err)
			}
		}
		if again, err := pathKey(k); again != k || err != nil {
			t.Fatalf("pathKey(%q) = %q is not stable: %q, %v", p, k, again, err)
		}
		if isCleanPath(p) && k != p {
			t.Fatalf("isCleanPath(%q) but keyed %q", p, k)
		}
	})
}

func TestDestinationKey(t *testing.T) {
	for _, c := range []struct {
		v, want string // want "" for refused
	}{
		{"http://example.com/a/b", "/a/b"},
		{"/a/b", "/a/b"},
		{"http://example.com/a%2Fb", "/a/b"},
		{"http://example.com/caf%C3%A9", "/café"},
		{"http://example.com/cafe%CC%81", "/café"},
		// Go drops a fragment; nginx keeps it in the name.
		{"http://example.com/a/c#x", ""},
		{"/a/c#x", ""},
		// Go reads //evil/a/c as host evil; nginx as the path.
		{"//evil/a/c", ""},
		// Go drops a query; the raw reading keeps it.
		{"/a/c?x=1", ""},
		{"http://example.com/a/b%252f..%252f../../c", ""},
	} {
		u, err := url.Parse(c.v)
		if err != nil {
			t.Fatal(err)
		}
		k, err := destinationKey(c.v, u)
		if c.want == "" {
			if err == nil {
				t.Errorf("destinationKey(%q) = %q, want refused", c.v, k)
			}
			continue
		}
		if err != nil || k != c.want {
			t.Errorf("destinationKey(%q) = %q, %v; want %q", c.v, k, err, c.want)
		}
	}
}

// BenchmarkPathKey: a clean path costs no allocation; one with escapes
// pays for its readings.
func BenchmarkPathKey(b *testing.B) {
	for _, p := range []string{"/docs/report.txt", "/docs/caf%C3%A9/report%20v2.txt", "/a/b%252f..%252f../c"} {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				_, _ = pathKey(p)
			}
		})
	}
}
