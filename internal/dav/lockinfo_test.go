package dav

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

const rfcLockInfo = `<?xml version="1.0" encoding="utf-8" ?>
<D:lockinfo xmlns:D='DAV:'>
  <D:lockscope><D:exclusive/></D:lockscope>
  <D:locktype><D:write/></D:locktype>
  <D:owner>
    <D:href>http://example.org/~ejw/contact.html</D:href>
  </D:owner>
</D:lockinfo>`

func TestParseLockInfo(t *testing.T) {
	for _, tc := range []struct {
		name  string
		body  string
		scope lockstore.Kind
		owner string // expected owner content, compared as XML trees
	}{
		{"rfc 9.10.7", rfcLockInfo, lockstore.Exclusive, `<D:href xmlns:D="DAV:">http://example.org/~ejw/contact.html</D:href>`},
		{"default namespace", `<lockinfo xmlns="DAV:"><lockscope><shared/></lockscope><locktype><write/></locktype><owner>Jane Smith</owner></lockinfo>`, lockstore.Shared, `Jane Smith`},
		{"other prefix", `<a:lockinfo xmlns:a="DAV:"><a:locktype><a:write/></a:locktype><a:lockscope><a:shared/></a:lockscope></a:lockinfo>`, lockstore.Shared, ""},
		{"prefix declared late", `<lockinfo xmlns="DAV:"><lockscope xmlns:q="DAV:"><q:exclusive/></lockscope><locktype><write/></locktype></lockinfo>`, lockstore.Exclusive, ""},
		{"unknown elements ignored", `<D:lockinfo xmlns:D="DAV:" xmlns:Z="urn:z"><Z:extra><D:lockscope><D:shared/></D:lockscope></Z:extra><D:lockscope><Z:x/><D:exclusive/></D:lockscope><D:future/><D:locktype><D:write><Z:y/></D:write></D:locktype></D:lockinfo>`, lockstore.Exclusive, ""},
		{"BOM and comments", "\xef\xbb\xbf<?xml version='1.0'?><!-- c --><D:lockinfo xmlns:D='DAV:'><!-- c --><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo><!-- c -->\n", lockstore.Exclusive, ""},
		{"owner with foreign namespaces", `<D:lockinfo xmlns:D="DAV:" xmlns:E="urn:e"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>` +
			`<D:owner><E:person E:id="7" plain="a&amp;&quot;b" xml:lang="en"><E:name>Ann &lt;ann@example.com&gt;</E:name><nons xmlns="">x</nons><D:href>http://x/</D:href></E:person></D:owner></D:lockinfo>`,
			lockstore.Exclusive,
			`<p:person xmlns:p="urn:e" p:id="7" plain='a&amp;"b' xml:lang="en"><p:name>Ann &lt;ann@example.com></p:name><nons>x</nons><D:href xmlns:D="DAV:">http://x/</D:href></p:person>`},
		{"empty owner", `<D:lockinfo xmlns:D="DAV:"><D:owner/><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>`, lockstore.Exclusive, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			li, err := ParseLockInfo(strings.NewReader(tc.body), 0)
			if err != nil {
				t.Fatalf("ParseLockInfo: %v", err)
			}
			if li.Scope != tc.scope || li.Type != "write" {
				t.Errorf("scope %v type %q, want %v write", li.Scope, li.Type, tc.scope)
			}
			if tc.owner == "" && li.Owner != nil && len(li.Owner) != 0 {
				t.Errorf("owner %q, want none", li.Owner)
			}
			if tc.owner != "" {
				got, want := ownerTree(t, li.Owner), ownerTree(t, []byte(tc.owner))
				if !reflect.DeepEqual(got, want) {
					t.Errorf("owner %s is not equivalent to %s", li.Owner, tc.owner)
				}
				// Parsing the echo again gives the same bytes.
				li2, err := ParseLockInfo(strings.NewReader(`<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>`+string(li.Owner)+`</D:owner></D:lockinfo>`), 0)
				if err != nil || !bytes.Equal(li2.Owner, li.Owner) {
					t.Errorf("re-parse of owner: %q, %v, want %q", li2.Owner, err, li.Owner)
				}
			}
		})
	}
	// nil for no owner, non-nil for an empty one.
	li, _ := ParseLockInfo(strings.NewReader(`<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>`), 0)
	if li.Owner != nil {
		t.Errorf("owner %q without DAV:owner, want nil", li.Owner)
	}
	li, _ = ParseLockInfo(strings.NewReader(`<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner></D:owner></D:lockinfo>`), 0)
	if li.Owner == nil || len(li.Owner) != 0 {
		t.Errorf("owner %q for an empty DAV:owner, want empty non-nil", li.Owner)
	}
}

func TestParseLockInfoOwnerVerbatimText(t *testing.T) {
	// Text, including line breaks and CR, comes back unchanged.
	body := "<D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>\n  a&#xD;b \t&amp; é 🙂\n</D:owner></D:lockinfo>"
	li, err := ParseLockInfo(strings.NewReader(body), 0)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(append(append([]byte("<o>"), li.Owner...), "</o>"...)))
	var v struct {
		Text string `xml:",chardata"`
	}
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if want := "\n  a\rb \t& é 🙂\n"; v.Text != want {
		t.Errorf("owner text %q, want %q", v.Text, want)
	}
}

func TestParseLockInfoErrors(t *testing.T) {
	const (
		scope = `<D:lockscope><D:exclusive/></D:lockscope>`
		typ   = `<D:locktype><D:write/></D:locktype>`
	)
	wrap := func(s string) string { return `<D:lockinfo xmlns:D="DAV:">` + s + `</D:lockinfo>` }
	billionLaughs := `<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<D:lockinfo xmlns:D="DAV:">` + scope + typ + `<D:owner>&lol3;</D:owner></D:lockinfo>`
	for _, tc := range []struct {
		name, body, wantErr string
	}{
		{"doctype", `<!DOCTYPE D:lockinfo SYSTEM "http://example.com/x.dtd">` + wrap(scope+typ), "document type declarations are not allowed"},
		{"doctype lower case", `<!doctype x>` + wrap(scope+typ), "not allowed"},
		{"billion laughs", billionLaughs, "document type declarations are not allowed"},
		{"external entity", `<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>` + wrap(scope+typ+`<D:owner>&e;</D:owner>`), "not allowed"},
		{"other declaration", `<!ELEMENT x ANY>` + wrap(scope+typ), "declarations (<!…>) are not allowed"},
		{"undefined entity", wrap(scope + typ + `<D:owner>&e;</D:owner>`), "invalid lockinfo"},
		{"missing scope", wrap(typ), "missing lockscope"},
		{"missing type", wrap(scope), "missing locktype"},
		{"empty scope", wrap(`<D:lockscope/>` + typ), "lockscope must contain DAV:exclusive or DAV:shared"},
		{"unknown scope", wrap(`<D:lockscope><D:local/></D:lockscope>` + typ), "lockscope must contain"},
		{"scope in other namespace", wrap(`<D:lockscope><exclusive xmlns="urn:x"/></D:lockscope>` + typ), "lockscope must contain"},
		{"two scopes", wrap(`<D:lockscope><D:exclusive/><D:shared/></D:lockscope>` + typ), "more than one scope"},
		{"two lockscopes", wrap(scope + scope + typ), "more than one lockscope"},
		{"unknown type", wrap(scope + `<D:locktype><D:read/></D:locktype>`), "locktype must contain DAV:write"},
		{"two locktypes", wrap(scope + typ + typ), "more than one locktype"},
		{"two owners", wrap(scope + typ + `<D:owner/><D:owner/>`), "more than one owner"},
		{"wrong root", `<D:lock xmlns:D="DAV:">` + scope + typ + `</D:lock>`, "root element is {DAV:}lock, expected DAV:lockinfo"},
		{"no namespace", `<lockinfo><lockscope><exclusive/></lockscope><locktype><write/></locktype></lockinfo>`, "root element is lockinfo"},
		{"unbound prefix", `<D:lockinfo>` + scope + typ + `</D:lockinfo>`, "undeclared namespace prefix"},
		{"unbound prefix in owner", wrap(scope + typ + `<D:owner><x:y/></D:owner>`), "undeclared namespace prefix"},
		{"unbound attribute prefix", wrap(scope + typ + `<D:owner><D:y x:a="1"/></D:owner>`), "undeclared namespace prefix"},
		{"prefix of a closed element", wrap(scope + typ + `<D:owner><a xmlns:x="x"/><x:y/></D:owner>`), "undeclared namespace prefix"},
		{"duplicate attribute", wrap(scope + typ + `<D:owner><y a="1" a="2"/></D:owner>`), "duplicate attribute"},
		{"two roots", wrap(scope+typ) + wrap(scope+typ), "more than one root element"},
		{"text after root", wrap(scope+typ) + "x", "text outside the lockinfo element"},
		{"text before root", "x" + wrap(scope+typ), "text outside"},
		{"truncated", `<D:lockinfo xmlns:D="DAV:">` + scope, "invalid lockinfo"},
		{"truncated owner", `<D:lockinfo xmlns:D="DAV:">` + scope + typ + `<D:owner><a>`, "invalid lockinfo"},
		{"mismatched tags", wrap(scope + typ + `<D:owner><a></b></D:owner>`), "invalid lockinfo"},
		{"no root", `<?xml version="1.0"?><!-- nothing -->`, "no lockinfo element"},
		{"other encoding", `<?xml version="1.0" encoding="ISO-8859-1"?>` + wrap(scope+typ), "invalid lockinfo"},
		{"invalid char", wrap(scope + typ + "<D:owner>\x01</D:owner>"), "invalid lockinfo"},
		{"owner amplification", wrap(scope + typ + `<D:owner xmlns:p="urn:` + strings.Repeat("n", 2000) + `">` + strings.Repeat("<p:a/><b/>", 200) + `</D:owner>`), "owner larger than"},
		{"reserved xmlns", wrap(scope + typ + `<D:owner><a xmlns:p="http://www.w3.org/2000/xmlns/" p:x="1"/></D:owner>`), "reserved xmlns namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			li, err := ParseLockInfo(strings.NewReader(tc.body), 0)
			if err == nil {
				t.Fatalf("ParseLockInfo succeeded: %+v", li)
			}
			if !errors.Is(err, errInvalidLockInfo) || errors.Is(err, ErrNoBody) || errors.Is(err, ErrBodyTooLarge) {
				t.Errorf("error %v does not wrap errInvalidLockInfo alone", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseLockInfoBodies(t *testing.T) {
	for _, body := range []string{"", " \r\n\t", "\xef\xbb\xbf"} {
		if _, err := ParseLockInfo(strings.NewReader(body), 100); !errors.Is(err, ErrNoBody) {
			t.Errorf("ParseLockInfo(%q) error = %v, want ErrNoBody", body, err)
		}
	}
	n := int64(len(rfcLockInfo))
	if _, err := ParseLockInfo(strings.NewReader(rfcLockInfo), n); err != nil {
		t.Errorf("body of exactly the limit: %v", err)
	}
	if _, err := ParseLockInfo(strings.NewReader(rfcLockInfo), n-1); !errors.Is(err, ErrBodyTooLarge) {
		t.Errorf("body over the limit: error %v, want ErrBodyTooLarge", err)
	}
	if _, err := ParseLockInfo(strings.NewReader(rfcLockInfo), math.MaxInt64); err != nil {
		t.Errorf("limit MaxInt64: %v", err)
	}
	// The default limit applies for maxBytes <= 0, and the reader is not
	// drained beyond it.
	big := io.MultiReader(strings.NewReader(`<D:lockinfo xmlns:D="DAV:"><D:owner>`), neverEnding('x'))
	if _, err := ParseLockInfo(big, 0); !errors.Is(err, ErrBodyTooLarge) {
		t.Errorf("endless body: error %v, want ErrBodyTooLarge", err)
	}
	readErr := errors.New("connection reset")
	_, err := ParseLockInfo(iotest.ErrReader(readErr), 100)
	if !errors.Is(err, readErr) || errors.Is(err, errInvalidLockInfo) {
		t.Errorf("read error: %v, want the reader's error", err)
	}
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

func FuzzParseLockInfo(f *testing.F) {
	f.Add([]byte(rfcLockInfo))
	f.Add([]byte(`<lockinfo xmlns="DAV:"><lockscope><shared/></lockscope><locktype><write/></locktype><owner>Jane Smith</owner></lockinfo>`))
	f.Add([]byte(`<D:lockinfo xmlns:D="DAV:" xmlns:E="urn:e"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner><E:p E:id="7" a="&lt;" xml:lang="en">t&amp;<x xmlns=""/></E:p></D:owner></D:lockinfo>`))
	f.Add([]byte(`<!DOCTYPE x [<!ENTITY a "b">]><D:lockinfo xmlns:D="DAV:"/>`))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, body []byte) {
		li, err := ParseLockInfo(bytes.NewReader(body), 4096)
		if err != nil {
			if !errors.Is(err, errInvalidLockInfo) && !errors.Is(err, ErrNoBody) && !errors.Is(err, ErrBodyTooLarge) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if bytes.Contains(bytes.ToLower(body), []byte("<!doctype")) {
			t.Fatalf("accepted a DOCTYPE: %q", body)
		}
		if li.Scope != lockstore.Exclusive && li.Scope != lockstore.Shared || li.Type != "write" {
			t.Fatalf("bad result %+v", li)
		}
		if len(li.Owner) > 2*len(body)+1024 {
			t.Fatalf("owner of %d bytes from a body of %d", len(li.Owner), len(body))
		}
		// The owner must be well-formed on its own and stable when
		// parsed again.
		doc := MarshalLockDiscovery(ActiveLock{Root: "/", Scope: li.Scope, Owner: li.Owner})
		d := xml.NewDecoder(bytes.NewReader(doc))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("lockdiscovery with owner %q is not well-formed: %v", li.Owner, err)
			}
		}
		if li.Owner != nil {
			again := `<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>` + string(li.Owner) + `</D:owner></D:lockinfo>`
			li2, err := ParseLockInfo(strings.NewReader(again), 1<<20)
			if err != nil || !bytes.Equal(li2.Owner, li.Owner) {
				t.Fatalf("owner %q re-parsed as %q, %v", li.Owner, li2.Owner, err)
			}
		}
	})
}

// BenchmarkParseLockInfoDeep parses owners nested 1 000 and 10 000 deep,
// each level declaring a namespace of its own: the time per level must
// stay flat (a check that scanned every open element grew with depth).
func BenchmarkParseLockInfoDeep(b *testing.B) {
	for _, depth := range []int{1000, 10000} {
		var body strings.Builder
		body.WriteString(`<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>`)
		for i := range depth {
			fmt.Fprintf(&body, `<n%d:e xmlns:n%d="urn:n%d">`, i, i, i)
		}
		for i := depth - 1; i >= 0; i-- {
			fmt.Fprintf(&body, `</n%d:e>`, i)
		}
		body.WriteString(`</D:owner></D:lockinfo>`)
		data := body.String()
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			for b.Loop() {
				if _, err := ParseLockInfo(strings.NewReader(data), int64(len(data))); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(depth), "ns/level")
		})
	}
}
