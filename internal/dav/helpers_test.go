package dav

import (
	"bytes"
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

// xmlNode is a namespace-aware tree of an XML document, for comparing
// documents regardless of prefixes.
type xmlNode struct {
	Name     xml.Name
	Attr     map[xml.Name]string
	Text     string
	Children []*xmlNode
}

// parseXML parses doc (or a fragment wrapped in a root) into a tree,
// dropping namespace declarations and white-space-only text.
func parseXML(t *testing.T, doc []byte) *xmlNode {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	root := &xmlNode{}
	stack := []*xmlNode{root}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("output is not well-formed: %v\n%s", err, doc)
		}
		top := stack[len(stack)-1]
		switch tk := tok.(type) {
		case xml.StartElement:
			n := &xmlNode{Name: tk.Name, Attr: map[xml.Name]string{}}
			for _, a := range tk.Attr {
				if a.Name.Space != "xmlns" && !(a.Name.Space == "" && a.Name.Local == "xmlns") {
					n.Attr[a.Name] = a.Value
				}
			}
			top.Children = append(top.Children, n)
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if strings.TrimSpace(string(tk)) != "" {
				top.Text += string(tk)
			}
		}
	}
	if len(stack) != 1 {
		t.Fatalf("unbalanced document\n%s", doc)
	}
	return root
}

// ownerTree parses owner content the way a client would see it echoed.
func ownerTree(t *testing.T, owner []byte) *xmlNode {
	t.Helper()
	return parseXML(t, append(append([]byte(`<D:owner xmlns:D="DAV:" xmlns:x="urn:unrelated">`), owner...), "</D:owner>"...))
}
