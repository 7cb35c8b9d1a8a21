package caddylock

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const modulePath = "github.com/caddy-lock/caddy-lock"

// The packages are layered: the handler (this package) above the seam
// (lockstore), the stores below it. An import back up would let a store
// depend on the handler it serves, which the seam exists to prevent; a
// seam that imports more than the standard library could not be
// implemented without pulling that in. docs/architecture.md draws it.
func TestImportLayering(t *testing.T) {
	rules := []struct {
		dir     string
		allowed func(imp string) bool
		why     string
	}{
		{"lockstore", stdlib, "the seam uses the standard library only"},
		{"lockstore/storetest", within("lockstore"), "the contract suites reach stores only through the seam"},
		{"stores/redis", within("lockstore", "internal/cfgarg"), "a store reaches only the seam (and shared Caddyfile helpers)"},
		{"internal/dav", within("lockstore"), "WebDAV parsing knows nothing of the handler"},
		{"internal/mapstore", within("lockstore"), "the map store is written against the seam alone"},
	}
	for _, r := range rules {
		imports := packageImports(t, r.dir)
		if len(imports) == 0 {
			t.Errorf("%s: no Go files found", r.dir)
		}
		for imp, file := range imports {
			if !r.allowed(imp) {
				t.Errorf("%s imports %s: %s", file, imp, r.why)
			}
		}
	}
}

// stdlib reports whether imp is a standard library package.
func stdlib(imp string) bool {
	first, _, _ := strings.Cut(imp, "/")
	return !strings.Contains(first, ".")
}

// within allows the standard library, third-party packages, and this
// module's packages under the given directories, but no other package of
// this module.
func within(dirs ...string) func(string) bool {
	return func(imp string) bool {
		if imp != modulePath && !strings.HasPrefix(imp, modulePath+"/") {
			return true
		}
		for _, d := range dirs {
			if imp == modulePath+"/"+d {
				return true
			}
		}
		return false
	}
}

// packageImports returns the imports of the non-test Go files in dir,
// each with a file that has it.
func packageImports(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("parsing %s: %v", f, err)
		}
		for _, is := range af.Imports {
			p, _ := strconv.Unquote(is.Path.Value)
			out[p] = f
		}
	}
	return out
}
