package caddylock

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestCaddyfileDocListsEveryOption: every subdirective that the lock
// directive's parser takes (its top-level cases in caddyfile.go) appears
// in docs/caddyfile.md, both in the syntax block and as a row of the
// table, so that an option is never known only to the code and one
// topic page.
func TestCaddyfileDocListsEveryOption(t *testing.T) {
	src, err := os.ReadFile("caddyfile.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("docs/caddyfile.md")
	if err != nil {
		t.Fatal(err)
	}
	syntax, _, ok := strings.Cut(strings.SplitN(string(doc), "```", 3)[1], "\n}")
	if !ok {
		t.Fatal("docs/caddyfile.md: no syntax block")
	}
	var table []string
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "| `") {
			cell, _, _ := strings.Cut(line[2:], " |")
			table = append(table, cell)
		}
	}
	var options []string
	for _, m := range regexp.MustCompile(`(?m)^\t\tcase (".+"):$`).FindAllStringSubmatch(string(src), -1) {
		for _, q := range regexp.MustCompile(`"([a-z_]+)"`).FindAllStringSubmatch(m[1], -1) {
			options = append(options, q[1])
		}
	}
	if len(options) < 20 {
		t.Fatalf("found only %d subdirectives in caddyfile.go: %q", len(options), options)
	}
	for _, o := range options {
		if !regexp.MustCompile(`(?m)^\t` + o + `( |$)`).MatchString(syntax) {
			t.Errorf("docs/caddyfile.md: %s is not in the syntax block", o)
		}
		inTable := false
		for _, cell := range table {
			if regexp.MustCompile("`" + o + "[ `]").MatchString(cell) {
				inTable = true
			}
		}
		if !inTable {
			t.Errorf("docs/caddyfile.md: %s has no row in the table", o)
		}
	}
}

// TestCaddyfileExampleETagSite: the commented example site of
// Caddyfile.example, uncommented, adapts, and its handler has the ETag
// options it names.
func TestCaddyfileExampleETagSite(t *testing.T) {
	data, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	var site []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "#http://") || (len(site) > 0 && strings.HasPrefix(line, "#")) {
			site = append(site, line[1:])
		}
	}
	if len(site) == 0 {
		t.Fatal("Caddyfile.example has no commented example site (#http://...)")
	}
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(strings.Join(site, "\n")+"\n"), map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatalf("the example site does not adapt: %v\n%s", err, strings.Join(site, "\n"))
	}
	for _, want := range []string{`"etags":true`, `"verify_etag":true`, `"require_if_match":true`} {
		if !strings.Contains(string(adapted), want) {
			t.Errorf("adapted example lacks %s:\n%s", want, adapted)
		}
	}
}
