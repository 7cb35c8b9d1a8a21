package caddylock

import (
	"bytes"
	"encoding/xml"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestPropfindWants(t *testing.T) {
	all := lockPropsWanted{discovery: true, supported: true}
	for _, c := range []struct {
		body string
		want lockPropsWanted
	}{
		{"", all},
		{`<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>`, all},
		{`<propfind xmlns="DAV:"><prop><lockdiscovery/></prop></propfind>`, lockPropsWanted{discovery: true}},
		{`<propfind xmlns="DAV:"><prop><supportedlock/><getetag/></prop></propfind>`, lockPropsWanted{supported: true}},
		{`<propfind xmlns="DAV:"><propname/></propfind>`, lockPropsWanted{discovery: true, supported: true, names: true}},
		{`<propfind xmlns="DAV:"><prop><propname/><allprop/></prop></propfind>`, lockPropsWanted{}},
		{`<propfind xmlns="DAV:"><x:propname xmlns:x="urn:other"/></propfind>`, lockPropsWanted{}},
		{`<propfind xmlns="DAV:"><prop><x:lockdiscovery xmlns:x="urn:other"/></prop></propfind>`, lockPropsWanted{}},
		{`<propfind xmlns="DAV:"><prop><lockdiscovery/>`, lockPropsWanted{}},
		{`<!DOCTYPE x><propfind xmlns="DAV:"><allprop/></propfind>`, lockPropsWanted{}},
	} {
		if got := propfindWants([]byte(c.body)); got != c.want {
			t.Errorf("propfindWants(%s) = %+v; want %+v", c.body, got, c.want)
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

// TestDAVPropfindPropname checks that PROPFIND with DAV:propname lists
// the lock properties by name (RFC 4918 sections 9.1 and 15), through
// Caddy in front of the lock-less backend: once each, empty, in the 200
// propstat, next to the backend's own names, for locked and unlocked
// resources alike.
func TestDAVPropfindPropname(t *testing.T) {
	url, b := davSite(t, "")
	b.mkdir(t, "/dir")
	b.put(t, "/dir/locked", "x")
	b.put(t, "/dir/free", "y")
	davLock(t, url+"/dir/locked", "exclusive", "alice", map[string]string{"Depth": "0"}, http.StatusOK)

	r := davMust(t, http.StatusMultiStatus, "PROPFIND", url+"/dir", `<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>`,
		map[string]string{"Depth": "1", "Content-Type": "application/xml"})
	if b.saw("PROPFIND /dir") != 1 {
		t.Fatal("the PROPFIND did not reach the backend once")
	}
	var ms struct {
		XMLName   xml.Name `xml:"DAV: multistatus"`
		Responses []struct {
			Href     string `xml:"DAV: href"`
			Propstat []struct {
				Prop struct {
					Any []struct {
						XMLName xml.Name
						Inner   string `xml:",innerxml"`
					} `xml:",any"`
				} `xml:"DAV: prop"`
				Status string `xml:"DAV: status"`
			} `xml:"DAV: propstat"`
		} `xml:"DAV: response"`
	}
	if err := xml.Unmarshal([]byte(r.body), &ms); err != nil {
		t.Fatalf("PROPFIND answer %q: %v", r.body, err)
	}
	if len(ms.Responses) != 3 {
		t.Fatalf("%d responses, want 3: %s", len(ms.Responses), r.body)
	}
	for _, resp := range ms.Responses {
		names := map[xml.Name]int{}
		for _, ps := range resp.Propstat {
			for _, p := range ps.Prop.Any {
				names[p.XMLName]++
				if (p.XMLName == nameLockDiscovery || p.XMLName == nameSupportedLock) &&
					(!strings.Contains(ps.Status, " 200 ") || strings.TrimSpace(p.Inner) != "") {
					t.Fatalf("%s: %s in propstat %q with content %q, want an empty name in the 200 propstat", resp.Href, p.XMLName.Local, ps.Status, p.Inner)
				}
			}
		}
		if names[nameLockDiscovery] != 1 || names[nameSupportedLock] != 1 {
			t.Fatalf("%s: lockdiscovery listed %d times, supportedlock %d times; want once each: %s",
				resp.Href, names[nameLockDiscovery], names[nameSupportedLock], r.body)
		}
		if names[xml.Name{Space: davNS, Local: "resourcetype"}] != 1 {
			t.Fatalf("%s: the backend's property names were lost: %s", resp.Href, r.body)
		}
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
