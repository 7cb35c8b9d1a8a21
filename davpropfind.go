package caddylock

// PROPFIND in WebDAV mode: the backend knows nothing of the locks, so the
// handler adds DAV:lockdiscovery and DAV:supportedlock to its 207
// Multi-Status answer, parsed as XML and written anew.

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// maxMultiStatus bounds the PROPFIND answer held in memory to be edited;
// a larger one passes through unchanged.
const maxMultiStatus = 8 << 20

var (
	nameLockDiscovery = xml.Name{Space: davNS, Local: "lockdiscovery"}
	nameSupportedLock = xml.Name{Space: davNS, Local: "supportedlock"}
)

// propfind forwards a PROPFIND and adds the lock properties to its answer
// when the client asked for them by name or with allprop, and their names
// when it asked with propname.
func (d *davRequest) propfind() error {
	limit := max(d.h.MaxLockBody, DefaultMaxLockInfoBytes)
	body, err := io.ReadAll(io.LimitReader(d.r.Body, limit+1))
	if err != nil {
		return d.plain(http.StatusBadRequest, "reading the PROPFIND body: "+err.Error())
	}
	d.r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), d.r.Body))
	if int64(len(body)) > limit {
		return d.next.ServeHTTP(d.w, d.r) // too large to look into
	}
	want := propfindWants(body)
	if !want.discovery && !want.supported {
		return d.next.ServeHTTP(d.w, d.r)
	}
	// The answer is edited as XML: ask for it uncompressed.
	d.r.Header.Del("Accept-Encoding")
	buf := &multiStatusBuffer{w: d.w}
	err = d.next.ServeHTTP(buf, d.r)
	if buf.passed || buf.status == 0 {
		return err
	}
	out, rerr := d.addLockProps(buf.body.Bytes(), want)
	if rerr != nil {
		d.h.logger.Debug("PROPFIND answer left as it is", zap.String("key", d.key), zap.Error(rerr))
		out = buf.body.Bytes()
	}
	d.w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	d.w.WriteHeader(buf.status)
	_, _ = d.w.Write(out)
	return err
}

// lockPropsWanted is what a PROPFIND asks of the lock properties. names
// (DAV:propname: every property, by name only) implies the other two.
type lockPropsWanted struct {
	discovery bool // DAV:lockdiscovery
	supported bool // DAV:supportedlock
	names     bool // empty elements instead of values
}

// propfindWants reports which lock properties a PROPFIND body asks for.
// An empty body means allprop. A body that does not parse asks for
// nothing here; the backend will say what is wrong with it.
func propfindWants(body []byte) lockPropsWanted {
	all := lockPropsWanted{discovery: true, supported: true}
	if len(bytes.TrimSpace(body)) == 0 {
		return all
	}
	var want lockPropsWanted
	dec := xml.NewDecoder(bytes.NewReader(body))
	dec.Strict = true
	inProp := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF {
				return want
			}
			return lockPropsWanted{}
		}
		switch t := tok.(type) {
		case xml.Directive:
			return lockPropsWanted{}
		case xml.StartElement:
			switch {
			case inProp == 0 && t.Name.Space == davNS && t.Name.Local == "allprop":
				return all
			case inProp == 0 && t.Name.Space == davNS && t.Name.Local == "propname":
				all.names = true
				return all
			case t.Name.Space == davNS && t.Name.Local == "prop":
				inProp++
			case inProp > 0 && t.Name == nameLockDiscovery:
				want.discovery = true
			case inProp > 0 && t.Name == nameSupportedLock:
				want.supported = true
			}
		case xml.EndElement:
			if t.Name.Space == davNS && t.Name.Local == "prop" {
				inProp--
			}
		}
	}
}

// multiStatusBuffer holds a 207 answer in memory to be edited; any other
// answer, or one larger than maxMultiStatus, passes through as it comes.
type multiStatusBuffer struct {
	w      http.ResponseWriter
	status int
	body   bytes.Buffer
	passed bool
}

func (b *multiStatusBuffer) Header() http.Header { return b.w.Header() }

func (b *multiStatusBuffer) WriteHeader(code int) {
	if code < 200 {
		b.w.WriteHeader(code)
		return
	}
	if b.status != 0 {
		return
	}
	b.status = code
	if code != http.StatusMultiStatus {
		b.passThrough()
	}
}

func (b *multiStatusBuffer) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.WriteHeader(http.StatusOK)
	}
	if b.passed {
		return b.w.Write(p)
	}
	b.body.Write(p)
	if b.body.Len() > maxMultiStatus {
		b.passThrough()
	}
	return len(p), nil
}

// Flush is a no-op while buffering: the answer goes out when complete.
func (b *multiStatusBuffer) Flush() {
	if b.passed {
		_ = http.NewResponseController(b.w).Flush()
	}
}

func (b *multiStatusBuffer) passThrough() {
	b.passed = true
	b.w.WriteHeader(b.status)
	if b.body.Len() > 0 {
		_, _ = b.w.Write(b.body.Bytes())
		b.body.Reset()
	}
}

// xmlElem is an element of a parsed document. Children are *xmlElem,
// xml.CharData, or rawXML inserted verbatim.
type xmlElem struct {
	name     xml.Name
	attr     []xml.Attr
	children []any
}

// rawXML is well-formed content that declares its own namespaces.
type rawXML []byte

// parseXMLTree parses a whole document. As for LOCK bodies,
// declarations (<!…>) and names that are not namespace-well-formed are
// refused.
func parseXMLTree(data []byte) (*xmlElem, error) {
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = true
	p := lockInfoParser{d: dec}
	var (
		root  *xmlElem
		stack []*xmlElem
	)
	for {
		tok, err := p.next()
		if err == io.EOF {
			if root == nil || len(stack) > 0 {
				return nil, errors.New("incomplete document")
			}
			return root, nil
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			e := &xmlElem{name: t.Name, attr: t.Copy().Attr}
			if len(stack) > 0 {
				p := stack[len(stack)-1]
				p.children = append(p.children, e)
			} else if root != nil {
				return nil, errors.New("more than one root element")
			} else {
				root = e
			}
			stack = append(stack, e)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				p := stack[len(stack)-1]
				p.children = append(p.children, t.Copy())
			}
		}
	}
}

// appendXMLElem serialises e; every element whose namespace differs from
// its parent's declares it as the default namespace.
func appendXMLElem(b []byte, e *xmlElem, parentSpace string) ([]byte, error) {
	b = append(b, '<')
	b = append(b, e.name.Local...)
	if e.name.Space != parentSpace {
		b = append(b, ` xmlns="`...)
		b = appendEscaped(b, e.name.Space, true)
		b = append(b, '"')
	}
	b, err := appendAttrs(b, e.attr)
	if err != nil {
		return nil, err
	}
	if len(e.children) == 0 {
		return append(b, "/>"...), nil
	}
	b = append(b, '>')
	for _, c := range e.children {
		switch c := c.(type) {
		case *xmlElem:
			if b, err = appendXMLElem(b, c, e.name.Space); err != nil {
				return nil, err
			}
		case xml.CharData:
			b = appendEscaped(b, string(c), false)
		case rawXML:
			b = append(b, c...)
		}
	}
	b = append(b, "</"...)
	b = append(b, e.name.Local...)
	return append(b, '>'), nil
}

func (e *xmlElem) is(local string) bool { return e.name.Space == davNS && e.name.Local == local }

// elems returns the child elements named DAV:local.
func (e *xmlElem) elems(local string) []*xmlElem {
	var out []*xmlElem
	for _, c := range e.children {
		if ce, ok := c.(*xmlElem); ok && ce.is(local) {
			out = append(out, ce)
		}
	}
	return out
}

// text returns the character data directly inside e.
func (e *xmlElem) text() string {
	var sb strings.Builder
	for _, c := range e.children {
		if cd, ok := c.(xml.CharData); ok {
			sb.Write(cd)
		}
	}
	return strings.TrimSpace(sb.String())
}

// addLockProps edits a DAV:multistatus document: for every DAV:response,
// lock properties the backend reported are dropped, and the handler's own
// (empty elements for propname) go into the propstat with status 200
// (added when there is none).
func (d *davRequest) addLockProps(doc []byte, want lockPropsWanted) ([]byte, error) {
	root, err := parseXMLTree(doc)
	if err != nil {
		return nil, err
	}
	if !root.is("multistatus") {
		return nil, errors.New("not a DAV:multistatus document")
	}
	for _, resp := range root.elems("response") {
		hrefs := resp.elems("href")
		if len(hrefs) != 1 {
			continue
		}
		u, err := url.Parse(hrefs[0].text())
		if err != nil || u.Path == "" {
			continue
		}
		var props []any
		if want.names {
			setLockProps(resp, []any{rawXML(lockPropNames)})
			continue
		}
		if want.discovery {
			ls, err := d.store().Affecting(d.ctx(), d.h.keyOfPath(u.Path), false)
			if err != nil {
				return nil, err
			}
			active := make([]ActiveLock, len(ls))
			for i, l := range ls {
				active[i] = d.active(l, true)
			}
			props = append(props, rawXML(LockDiscoveryElement(active...)))
		}
		if want.supported {
			props = append(props, rawXML(SupportedLockElement()))
		}
		setLockProps(resp, props)
	}
	b := []byte(xmlDecl)
	return appendXMLElem(b, root, "")
}

// lockPropNames lists the lock properties by name, for propname.
const lockPropNames = `<D:lockdiscovery xmlns:D="DAV:"/><D:supportedlock xmlns:D="DAV:"/>`

// setLockProps replaces the lock properties of one DAV:response.
func setLockProps(resp *xmlElem, props []any) {
	var ok *xmlElem
	kept := resp.children[:0]
	for _, c := range resp.children {
		ps, isElem := c.(*xmlElem)
		if !isElem || !ps.is("propstat") {
			kept = append(kept, c)
			continue
		}
		empty := false
		for _, prop := range ps.elems("prop") {
			remaining := prop.children[:0]
			elems := 0
			for _, pc := range prop.children {
				if pe, isElem := pc.(*xmlElem); isElem {
					if pe.name == nameLockDiscovery || pe.name == nameSupportedLock {
						continue
					}
					elems++
				}
				remaining = append(remaining, pc)
			}
			prop.children = remaining
			empty = elems == 0
			if ok == nil && statusIs200(ps) {
				ok, empty = prop, false
			}
		}
		if !empty {
			kept = append(kept, ps)
		}
	}
	resp.children = kept
	if ok == nil {
		ok = &xmlElem{name: xml.Name{Space: davNS, Local: "prop"}}
		resp.children = append(resp.children, &xmlElem{
			name: xml.Name{Space: davNS, Local: "propstat"},
			children: []any{ok, &xmlElem{
				name:     xml.Name{Space: davNS, Local: "status"},
				children: []any{xml.CharData("HTTP/1.1 200 OK")},
			}},
		})
	}
	ok.children = append(ok.children, props...)
}

// statusIs200 reports whether a propstat's status line says 200.
func statusIs200(ps *xmlElem) bool {
	for _, st := range ps.elems("status") {
		f := strings.Fields(st.text())
		return len(f) >= 2 && f[1] == "200"
	}
	return false
}
