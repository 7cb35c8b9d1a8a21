package dav

import (
	"bytes"
	"encoding/xml"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

func TestMarshalLockDiscovery(t *testing.T) {
	owner := []byte(`<href xmlns="DAV:">http://example.org/~ejw/contact.html</href>`)
	locks := []ActiveLock{
		{Root: "/workspace/web dav/a&b<c>", Token: "urn:uuid:e71d4fae-5dec-22d6-fea5-00a0c91e6be4", Scope: lockstore.Exclusive, Depth: lockstore.DepthInfinity, Owner: owner, Timeout: 604800 * time.Second},
		{Root: "/x", Token: "urn:x&y", Scope: lockstore.Shared, Depth: lockstore.DepthZero, Infinite: true},
		{Root: "//evil.example/x", Scope: lockstore.Shared, Depth: lockstore.DepthZero, Timeout: 1500 * time.Millisecond},
	}
	doc := MarshalLockDiscovery(locks...)
	if !bytes.HasPrefix(doc, []byte(`<?xml version="1.0" encoding="utf-8"?>`)) {
		t.Errorf("missing XML declaration: %s", doc)
	}
	var got struct {
		XMLName       xml.Name `xml:"DAV: prop"`
		LockDiscovery struct {
			ActiveLock []struct {
				LockType struct {
					Write *struct{} `xml:"DAV: write"`
				} `xml:"DAV: locktype"`
				LockScope struct {
					Exclusive *struct{} `xml:"DAV: exclusive"`
					Shared    *struct{} `xml:"DAV: shared"`
				} `xml:"DAV: lockscope"`
				Depth string `xml:"DAV: depth"`
				Owner *struct {
					Href string `xml:"DAV: href"`
				} `xml:"DAV: owner"`
				Timeout   string   `xml:"DAV: timeout"`
				LockToken []string `xml:"DAV: locktoken>href"`
				LockRoot  string   `xml:"DAV: lockroot>href"`
			} `xml:"DAV: activelock"`
		} `xml:"DAV: lockdiscovery"`
	}
	if err := xml.Unmarshal(doc, &got); err != nil {
		t.Fatalf("unmarshal: %v\n%s", err, doc)
	}
	al := got.LockDiscovery.ActiveLock
	if len(al) != 3 {
		t.Fatalf("%d activelocks, want 3\n%s", len(al), doc)
	}
	a := al[0]
	if a.LockType.Write == nil || a.LockScope.Exclusive == nil || a.LockScope.Shared != nil || a.Depth != "infinity" ||
		a.Owner == nil || a.Owner.Href != "http://example.org/~ejw/contact.html" || a.Timeout != "Second-604800" ||
		!reflect.DeepEqual(a.LockToken, []string{"urn:uuid:e71d4fae-5dec-22d6-fea5-00a0c91e6be4"}) ||
		a.LockRoot != "/workspace/web%20dav/a&b%3Cc%3E" {
		t.Errorf("first lock: %+v\n%s", a, doc)
	}
	a = al[1]
	if a.LockScope.Shared == nil || a.LockScope.Exclusive != nil || a.Depth != "0" || a.Owner != nil ||
		a.Timeout != "Infinite" || !reflect.DeepEqual(a.LockToken, []string{"urn:x&y"}) || a.LockRoot != "/x" {
		t.Errorf("second lock: %+v\n%s", a, doc)
	}
	a = al[2]
	if a.LockToken != nil || a.Timeout != "Second-2" || a.LockRoot != "/.//evil.example/x" {
		t.Errorf("third lock: %+v\n%s", a, doc)
	}
	// The exact layout of one lock, as in the RFC's examples.
	want := `<?xml version="1.0" encoding="utf-8"?>` + "\n" + `<D:prop xmlns:D="DAV:"><D:lockdiscovery><D:activelock><D:locktype><D:write/></D:locktype><D:lockscope><D:exclusive/></D:lockscope><D:depth>infinity</D:depth><D:owner>o</D:owner><D:timeout>Second-3600</D:timeout><D:locktoken><D:href>urn:uuid:1</D:href></D:locktoken><D:lockroot><D:href>/x</D:href></D:lockroot></D:activelock></D:lockdiscovery></D:prop>`
	if got := string(MarshalLockDiscovery(ActiveLock{Root: "/x", Token: "urn:uuid:1", Scope: lockstore.Exclusive, Depth: lockstore.DepthInfinity, Owner: []byte("o"), Timeout: time.Hour})); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestLockOwnerRoundTrip(t *testing.T) {
	// A client's owner comes back equivalent in the LOCK response, even
	// though the response binds prefixes differently.
	body := `<x:lockinfo xmlns:x="DAV:" xmlns:D="urn:not-dav"><x:lockscope><x:exclusive/></x:lockscope><x:locktype><x:write/></x:locktype>` +
		`<x:owner><x:href>http://x/</x:href><D:note D:k="v">hi</D:note></x:owner></x:lockinfo>`
	li, err := ParseLockInfo(strings.NewReader(body), 0)
	if err != nil {
		t.Fatal(err)
	}
	doc := MarshalLockDiscovery(ActiveLock{Root: "/", Token: NewLockToken(), Scope: li.Scope, Depth: lockstore.DepthZero, Owner: li.Owner, Timeout: time.Minute})
	tree := parseXML(t, doc)
	var owner *xmlNode
	var find func(n *xmlNode)
	find = func(n *xmlNode) {
		for _, c := range n.Children {
			if c.Name == (xml.Name{Space: "DAV:", Local: "owner"}) {
				owner = c
			}
			find(c)
		}
	}
	find(tree)
	if owner == nil || len(owner.Children) != 2 {
		t.Fatalf("owner not echoed:\n%s", doc)
	}
	href, note := owner.Children[0], owner.Children[1]
	if href.Name != (xml.Name{Space: "DAV:", Local: "href"}) || href.Text != "http://x/" {
		t.Errorf("href echoed as %+v", href)
	}
	if note.Name != (xml.Name{Space: "urn:not-dav", Local: "note"}) || note.Text != "hi" ||
		note.Attr[xml.Name{Space: "urn:not-dav", Local: "k"}] != "v" {
		t.Errorf("note echoed as %+v", note)
	}
}

func TestLockDiscoveryElement(t *testing.T) {
	for _, locks := range [][]ActiveLock{nil, {{Root: "/a", Token: "urn:uuid:1", Scope: lockstore.Shared, Depth: lockstore.DepthZero}}} {
		el := LockDiscoveryElement(locks...)
		if bytes.HasPrefix(el, []byte("<?xml")) {
			t.Errorf("element starts with an XML declaration: %s", el)
		}
		// It must be well-formed inside a document that binds D elsewhere.
		doc := append(append([]byte(`<D:prop xmlns:D="urn:other">`), el...), "</D:prop>"...)
		tree := parseXML(t, doc)
		ld := tree.Children[0].Children[0]
		if ld.Name != (xml.Name{Space: "DAV:", Local: "lockdiscovery"}) || len(ld.Children) != len(locks) {
			t.Errorf("lockdiscovery element: %s", el)
		}
	}
}

func TestSupportedLockElement(t *testing.T) {
	el := supportedLockElement()
	var got struct {
		XMLName xml.Name `xml:"DAV: supportedlock"`
		Entries []struct {
			Scope struct {
				Exclusive *struct{} `xml:"DAV: exclusive"`
				Shared    *struct{} `xml:"DAV: shared"`
			} `xml:"DAV: lockscope"`
			Type struct {
				Write *struct{} `xml:"DAV: write"`
			} `xml:"DAV: locktype"`
		} `xml:"DAV: lockentry"`
	}
	if err := xml.Unmarshal(el, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != 2 ||
		got.Entries[0].Scope.Exclusive == nil || got.Entries[0].Type.Write == nil ||
		got.Entries[1].Scope.Shared == nil || got.Entries[1].Type.Write == nil {
		t.Errorf("supportedlock: %s", el)
	}
}

func TestWebDAVError(t *testing.T) {
	type davError struct {
		XMLName xml.Name
		Inner   []struct {
			XMLName xml.Name
			Hrefs   []string `xml:"DAV: href"`
		} `xml:",any"`
	}
	for _, tc := range []struct {
		cond  string
		hrefs []string
		want  []string // escaped hrefs
	}{
		{CondLockTokenSubmitted, []string{"/a", "/b c/ü&<"}, []string{"/a", "/b%20c/%C3%BC&%3C"}},
		{CondNoConflictingLock, nil, nil},
		{CondLockTokenMatchesRequestURI, nil, nil},
		{condCannotModifyProtectedProperty, nil, nil},
		{condPropfindFiniteDepth, nil, nil},
	} {
		doc := MarshalDAVError(tc.cond, tc.hrefs...)
		var got davError
		if err := xml.Unmarshal(doc, &got); err != nil {
			t.Fatalf("%s: %v\n%s", tc.cond, err, doc)
		}
		if got.XMLName != (xml.Name{Space: "DAV:", Local: "error"}) || len(got.Inner) != 1 ||
			got.Inner[0].XMLName != (xml.Name{Space: "DAV:", Local: tc.cond}) || !reflect.DeepEqual(got.Inner[0].Hrefs, tc.want) {
			t.Errorf("%s: %+v\n%s", tc.cond, got, doc)
		}
	}
	want := `<?xml version="1.0" encoding="utf-8"?>` + "\n" + `<D:error xmlns:D="DAV:"><D:lock-token-submitted><D:href>/a</D:href></D:lock-token-submitted></D:error>`
	if got := string(MarshalDAVError(CondLockTokenSubmitted, "/a")); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	want = `<?xml version="1.0" encoding="utf-8"?>` + "\n" + `<D:error xmlns:D="DAV:"><D:no-conflicting-lock/></D:error>`
	if got := string(MarshalDAVError(CondNoConflictingLock)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	// Names that are not XML names cannot break the document.
	for _, bad := range []string{"", "a b", "x></D:error><y", "1x"} {
		var got davError
		if err := xml.Unmarshal(MarshalDAVError(bad, "/a"), &got); err != nil || len(got.Inner) != 0 {
			t.Errorf("MarshalDAVError(%q): %+v, %v", bad, got, err)
		}
	}
}
