package caddylock

import (
	"bytes"
	"encoding/xml"
	"io"
	"testing"
)

func TestPropfindWants(t *testing.T) {
	for _, c := range []struct {
		body   string
		ld, sl bool
	}{
		{"", true, true},
		{`<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>`, true, true},
		{`<propfind xmlns="DAV:"><prop><lockdiscovery/></prop></propfind>`, true, false},
		{`<propfind xmlns="DAV:"><prop><supportedlock/><getetag/></prop></propfind>`, false, true},
		{`<propfind xmlns="DAV:"><propname/></propfind>`, false, false},
		{`<propfind xmlns="DAV:"><prop><x:lockdiscovery xmlns:x="urn:other"/></prop></propfind>`, false, false},
		{`<propfind xmlns="DAV:"><prop><lockdiscovery/>`, false, false},
		{`<!DOCTYPE x><propfind xmlns="DAV:"><allprop/></propfind>`, false, false},
	} {
		ld, sl := propfindWants([]byte(c.body))
		if ld != c.ld || sl != c.sl {
			t.Errorf("propfindWants(%s) = %v, %v; want %v, %v", c.body, ld, sl, c.ld, c.sl)
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
	root, err := parseXMLTree([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	resp := root.elems("response")[0]
	setLockProps(resp, []any{rawXML(LockDiscoveryElement(ActiveLock{Root: "/a", Token: "urn:uuid:x", Scope: Shared, Depth: DepthZero, Timeout: 5e9}))})
	out, err := appendXMLElem(nil, root, "")
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
	if err := xml.Unmarshal(out, &ms); err != nil {
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

// FuzzXMLTree checks that whatever the tree parser accepts, its output is
// well-formed and stable: written, parsed and written again, it is the
// same.
func FuzzXMLTree(f *testing.F) {
	for _, s := range []string{
		`<D:multistatus xmlns:D="DAV:"><D:response><D:href>/a</D:href></D:response></D:multistatus>`,
		`<a xmlns="urn:a"><b xmlns="">text &lt; &amp;</b><c:d xmlns:c="urn:c" c:e="1"/></a>`,
		`<?xml version="1.0"?><!-- c --><x><?pi data?><![CDATA[<raw>]]></x>`,
		`<!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		root, err := parseXMLTree(data)
		if err != nil {
			return
		}
		out, err := appendXMLElem(nil, root, "")
		if err != nil {
			return
		}
		dec := xml.NewDecoder(bytes.NewReader(out))
		dec.Strict = true
		for {
			if _, err := dec.Token(); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("output %q of %q is not well-formed: %v", out, data, err)
			}
		}
		root2, err := parseXMLTree(out)
		if err != nil {
			t.Fatalf("output %q does not parse: %v", out, err)
		}
		out2, err := appendXMLElem(nil, root2, "")
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("not stable:\n%s\n%s (%v)", out, out2, err)
		}
	})
}
