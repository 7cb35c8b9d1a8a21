package caddylock

import (
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
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
		"/a/...":                   "/a/...",
		"relative/path":            "/relative/path",
		"/files/report.txt%3B.jpg": "/files/report.txt",
	} {
		if got := normalizePath(in); got != want {
			t.Errorf("normalizePath(%q) = %q, want %q", in, got, want)
		}
		// Normalising is idempotent, and clean paths take the fast path.
		if got := normalizePath(want); got != want {
			t.Errorf("normalizePath(%q) = %q, not stable", want, got)
		}
		if !strings.Contains(want, "%") && !isCleanPath(want) {
			t.Errorf("isCleanPath(%q) = false for a normalised path", want)
		}
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/a/b", "/a/../b", "/a%2F..%2Fb", "/a;b/c", `/a\..\b`, "/%", "//./"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		n := normalizePath(p)
		if normalizePath(n) != n {
			t.Fatalf("normalizePath(%q) = %q is not stable", p, n)
		}
		if isCleanPath(p) && n != p {
			t.Fatalf("isCleanPath(%q) but normalised to %q", p, n)
		}
	})
}
