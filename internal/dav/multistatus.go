package dav

// The PROPFIND rewrite: which lock properties a PROPFIND asks for, and
// its 207 Multi-Status answer read once as XML and edited in place. The
// backend's bytes are copied as they are, except for the few ranges that
// are dropped or added, so the work and the memory are linear in the
// answer's size (see docs/propfind.md).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"unsafe"
)

// Limits of the PROPFIND rewrite; an answer past one of them reaches the
// client as the backend wrote it, without the lock properties. (The
// handler bounds the answer it holds in memory to be edited.)
const (
	// maxMultiStatusDepth bounds the nesting of elements: the parser
	// keeps a little state per open element, and no real property comes
	// near this.
	maxMultiStatusDepth = 1000
	// The memory the rewrite keeps besides the answer (edits, and the
	// lock properties to add, each distinct one once) is bounded by
	// multiStatusKeepFactor times the answer plus multiStatusKeepExtra.
	multiStatusKeepFactor = 4
	multiStatusKeepExtra  = 1 << 20
	// multiStatusCheckEvery is how many XML tokens the rewrite reads
	// between two looks at whether the client is still there.
	multiStatusCheckEvery = 256
)

// errMultiStatusLimit wraps the reasons an answer is left as it is
// because it is past a limit.
var errMultiStatusLimit = errors.New("PROPFIND answer past a rewrite limit")

var (
	nameLockDiscovery = xml.Name{Space: davNS, Local: "lockdiscovery"}
	nameSupportedLock = xml.Name{Space: davNS, Local: "supportedlock"}
)

// LockPropsWanted is what a PROPFIND asks of the lock properties. names
// (DAV:propname: every property, by name only) implies the other two.
type LockPropsWanted struct {
	discovery bool // DAV:lockdiscovery
	supported bool // DAV:supportedlock
	names     bool // empty elements instead of values
}

// Any reports whether the PROPFIND asks for a lock property at all, so
// that its answer needs the rewrite.
func (w LockPropsWanted) Any() bool { return w.discovery || w.supported }

// PropfindWants reports which lock properties a PROPFIND body asks for.
// An empty body means allprop. A body that does not parse asks for
// nothing here; the backend will say what is wrong with it.
func PropfindWants(body []byte) LockPropsWanted {
	all := LockPropsWanted{discovery: true, supported: true}
	if len(bytes.TrimSpace(body)) == 0 {
		return all
	}
	var want LockPropsWanted
	dec := xml.NewDecoder(bytes.NewReader(body))
	dec.Strict = true
	inProp := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF {
				return want
			}
			return LockPropsWanted{}
		}
		switch t := tok.(type) {
		case xml.Directive:
			return LockPropsWanted{}
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

// MultiStatus is a DAV:multistatus answer with the edits that add the
// lock properties: the answer's bytes are kept as they are, and written
// out with each edit's range replaced by its insertion.
type MultiStatus struct {
	ctx       context.Context
	doc       []byte
	want      LockPropsWanted
	supported []byte
	edits     []msEdit   // in document order, not overlapping
	inserts   []msInsert // what edits insert, by msEdit.ins-1
}

// msEdit replaces doc[start:end] by inserts[ins-1], or by nothing when
// ins is 0.
type msEdit struct {
	start, end int
	ins        int
}

// msInsert is the lock properties of one DAV:response, and where they go.
type msInsert struct {
	kind       msInsertKind
	qname      [2]int // the raw name of a self-closed DAV:prop, as doc offsets
	discovery  string // DAV:lockdiscovery; one string per distinct element
	wantsNames bool
}

type msInsertKind uint8

const (
	insAppend   msInsertKind = iota // before the end tag of DAV:prop
	insOpen                         // in place of the "/>" of <D:prop/>
	insPropstat                     // a new propstat, before </D:response>
)

const (
	// lockPropNames lists the lock properties by name, for propname.
	lockPropNames = `<D:lockdiscovery xmlns:D="DAV:"/><D:supportedlock xmlns:D="DAV:"/>`
	propstatOpen  = `<D:propstat xmlns:D="DAV:"><D:prop>`
	propstatClose = `</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>`
)

// Size is the length of the rewritten answer.
func (m *MultiStatus) Size() int {
	n := len(m.doc)
	for _, e := range m.edits {
		n -= e.end - e.start
		if e.ins > 0 {
			n += m.insertLen(&m.inserts[e.ins-1])
		}
	}
	return n
}

// WriteOut writes the rewritten answer to w, and stops when the client
// has left.
func (m *MultiStatus) WriteOut(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 32<<10)
	pos := 0
	for i, e := range m.edits {
		if i%multiStatusCheckEvery == 0 {
			if err := m.ctx.Err(); err != nil {
				return fmt.Errorf("writing the PROPFIND answer: %w", err)
			}
		}
		_, _ = bw.Write(m.doc[pos:e.start])
		if e.ins > 0 {
			m.writeInsert(bw, &m.inserts[e.ins-1])
		}
		pos = e.end
	}
	_, _ = bw.Write(m.doc[pos:])
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing the PROPFIND answer: %w", err)
	}
	return nil
}

func (m *MultiStatus) props(in *msInsert) (string, []byte) {
	if in.wantsNames {
		return lockPropNames, nil
	}
	var disc string
	if m.want.discovery {
		disc = in.discovery
	}
	var sup []byte
	if m.want.supported {
		sup = m.supported
	}
	return disc, sup
}

func (m *MultiStatus) insertLen(in *msInsert) int {
	a, b := m.props(in)
	n := len(a) + len(b)
	switch in.kind {
	case insOpen:
		n += len(">") + len("</>") + in.qname[1] - in.qname[0]
	case insPropstat:
		n += len(propstatOpen) + len(propstatClose)
	}
	return n
}

func (m *MultiStatus) writeInsert(w *bufio.Writer, in *msInsert) {
	a, b := m.props(in)
	switch in.kind {
	case insOpen:
		_ = w.WriteByte('>')
	case insPropstat:
		_, _ = w.WriteString(propstatOpen)
	}
	_, _ = w.WriteString(a)
	_, _ = w.Write(b)
	switch in.kind {
	case insOpen:
		_, _ = w.WriteString("</")
		_, _ = w.Write(m.doc[in.qname[0]:in.qname[1]])
		_ = w.WriteByte('>')
	case insPropstat:
		_, _ = w.WriteString(propstatClose)
	}
}

// RewriteMultiStatus is rewriteMultiStatus with the nesting limit
// maxMultiStatusDepth: what a handler uses.
func RewriteMultiStatus(ctx context.Context, doc []byte, want LockPropsWanted, lockDiscovery func(p string) ([]byte, error)) (*MultiStatus, error) {
	return rewriteMultiStatus(ctx, doc, want, lockDiscovery, maxMultiStatusDepth)
}

// rewriteMultiStatus reads a DAV:multistatus document once and returns
// the edits that, for every DAV:response, drop the lock properties the
// backend reported and put the handler's own (lockDiscovery's element
// for the response's path; empty elements for propname) into the first
// propstat with status 200, or into a new one. A propstat that the
// dropping leaves empty goes. It refuses what is not a well-formed,
// namespace-well-formed multistatus (declarations <!…> included), what is
// nested deeper than maxDepth (0: no limit) and what would keep more
// memory than the limits allow; it returns ctx's error once ctx ends.
//
// The work is linear in the document: the namespace names in scope are
// counted in a map, so a lookup is one map access and an end tag undoes
// only its own element's declarations.
func rewriteMultiStatus(ctx context.Context, doc []byte, want LockPropsWanted, lockDiscovery func(p string) ([]byte, error), maxDepth int) (*MultiStatus, error) {
	r := &msReader{
		MultiStatus: MultiStatus{ctx: ctx, doc: doc, want: want},
		lockDisc:    lockDiscovery,
		maxDepth:    maxDepth,
		budget:      multiStatusKeepFactor*len(doc) + multiStatusKeepExtra,
		declared:    map[string]int{},
		seen:        map[string]string{},
	}
	if want.supported && !want.names {
		r.supported = supportedLockElement()
	}
	if err := r.read(); err != nil {
		return nil, err
	}
	return &r.MultiStatus, nil
}

// msReader is the state of rewriteMultiStatus.
type msReader struct {
	MultiStatus
	lockDisc func(p string) ([]byte, error)
	maxDepth int
	budget   int // bytes that the edits and insertions may still keep

	dec      *xml.Decoder
	frames   []msFrame      // the open elements
	decls    []string       // the namespace names they declare, innermost last
	declared map[string]int // namespace name -> open declarations of it
	seen     map[string]string
	root     bool // the root element was read
	// steps counts namespace scope operations (declarations made and
	// undone, names looked up): the tests check that it grows linearly.
	steps int

	resp msResponse // the DAV:response being read
	ps   msPropstat // the DAV:propstat being read
	prop msProp     // the DAV:prop being read
}

type msFrame struct {
	kind   msKind
	start  int // offset of the start tag
	tagEnd int // offset just after it
	decls  int // entries of decls that this element made
}

// msKind is what an open element is to the rewrite.
type msKind uint8

const (
	kOther msKind = iota
	kRoot
	kResponse
	kHref     // the first DAV:href of a response
	kPropstat // a DAV:propstat of a response
	kProp     // a DAV:prop of a propstat
	kStatus   // the first DAV:status of a propstat
	kLockProp // DAV:lockdiscovery or DAV:supportedlock in a prop
)

type msResponse struct {
	firstEdit int // index of its first edit
	hrefs     int
	href      []byte
	ok        msInsertPoint // where the lock properties go, once found
	hasOK     bool
}

type msPropstat struct {
	start     int
	firstEdit int
	props     int
	nonEmpty  bool // one of its props keeps an element
	statuses  int
	status    []byte
	first     msInsertPoint // the end of its first prop
}

type msProp struct{ elems int }

// msInsertPoint is where properties go into a DAV:prop: at [start, end),
// before its end tag (an empty range) or in place of the "/>" of a
// self-closed one.
type msInsertPoint struct {
	start, end int
	kind       msInsertKind
	qname      [2]int
}

const (
	editSize   = int(unsafe.Sizeof(msEdit{}))
	insertSize = int(unsafe.Sizeof(msInsert{}))
)

func (r *msReader) read() error {
	r.dec = xml.NewDecoder(bytes.NewReader(r.doc))
	r.dec.Strict = true
	for n := 0; ; n++ {
		if n%multiStatusCheckEvery == 0 {
			if err := r.ctx.Err(); err != nil {
				return fmt.Errorf("rewriting the PROPFIND answer: %w", err)
			}
		}
		start := int(r.dec.InputOffset())
		tok, err := r.dec.Token()
		if err == io.EOF {
			if !r.root || len(r.frames) > 0 {
				return errors.New("incomplete document")
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the PROPFIND answer: %w", err)
		}
		end := int(r.dec.InputOffset())
		switch t := tok.(type) {
		case xml.StartElement:
			err = r.startElement(t, start, end)
		case xml.EndElement:
			err = r.endElement(start, end)
		case xml.CharData:
			if start == 0 { // a byte order mark may open the document
				t = bytes.TrimPrefix(t, []byte("\ufeff"))
			}
			err = r.charData(t)
		case xml.Directive:
			err = errors.New("declarations (<!…>) are not allowed")
		}
		if err != nil {
			return err
		}
	}
}

func isXMLNSAttr(a xml.Attr) bool {
	return a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns")
}

func isDAV(n xml.Name, local string) bool { return n.Space == davNS && n.Local == local }

func (r *msReader) startElement(t xml.StartElement, start, end int) error {
	depth := len(r.frames)
	if depth == 0 && r.root {
		return errors.New("more than one root element")
	}
	if r.maxDepth > 0 && depth >= r.maxDepth {
		return fmt.Errorf("%w: elements nested deeper than %d", errMultiStatusLimit, r.maxDepth)
	}
	f := msFrame{start: start, tagEnd: end}
	for _, a := range t.Attr {
		if isXMLNSAttr(a) {
			r.decls = append(r.decls, a.Value)
			r.declared[a.Value]++
			f.decls++
			r.steps++
		}
	}
	r.frames = append(r.frames, f) // before a check fails: endElement never runs then
	if err := r.checkName(t.Name, true); err != nil {
		return err
	}
	for _, a := range t.Attr {
		if !isXMLNSAttr(a) {
			if err := r.checkName(a.Name, false); err != nil {
				return err
			}
		}
	}
	if err := uniqueAttrs(t.Attr); err != nil {
		return err
	}
	parent := kOther
	if depth > 0 {
		parent = r.frames[depth-1].kind
	}
	kind := kOther
	switch {
	case depth == 0:
		if !isDAV(t.Name, "multistatus") {
			return errors.New("not a DAV:multistatus document")
		}
		kind = kRoot
	case parent == kRoot && isDAV(t.Name, "response"):
		kind = kResponse
		r.resp = msResponse{firstEdit: len(r.edits), href: r.resp.href[:0]}
	case parent == kResponse && isDAV(t.Name, "href"):
		r.resp.hrefs++
		if r.resp.hrefs == 1 {
			kind = kHref
		}
	case parent == kResponse && isDAV(t.Name, "propstat"):
		kind = kPropstat
		r.ps = msPropstat{start: start, firstEdit: len(r.edits), status: r.ps.status[:0]}
	case parent == kPropstat && isDAV(t.Name, "prop"):
		kind = kProp
		r.prop = msProp{}
	case parent == kPropstat && isDAV(t.Name, "status"):
		r.ps.statuses++
		if r.ps.statuses == 1 {
			kind = kStatus
		}
	case parent == kProp && (t.Name == nameLockDiscovery || t.Name == nameSupportedLock):
		kind = kLockProp
	case parent == kProp:
		r.prop.elems++
	}
	r.frames[depth].kind = kind
	return nil
}

func (r *msReader) endElement(start, end int) error {
	f := r.frames[len(r.frames)-1]
	r.frames = r.frames[:len(r.frames)-1]
	for range f.decls {
		v := r.decls[len(r.decls)-1]
		r.decls = r.decls[:len(r.decls)-1]
		if r.declared[v]--; r.declared[v] == 0 {
			delete(r.declared, v)
		}
		r.steps++
	}
	switch f.kind {
	case kRoot:
		r.root = true
	case kLockProp:
		return r.drop(f.start, end)
	case kProp:
		if r.prop.elems > 0 {
			r.ps.nonEmpty = true
		}
		if r.ps.props++; r.ps.props == 1 {
			if start == end { // self-closed: the end tag is implied
				r.ps.first = msInsertPoint{start: f.tagEnd - 2, end: f.tagEnd, kind: insOpen, qname: rawName(r.doc, f.start)}
			} else {
				r.ps.first = msInsertPoint{start: start, end: start, kind: insAppend}
			}
		}
	case kPropstat:
		words := strings.Fields(string(r.ps.status))
		is200 := len(words) >= 2 && words[1] == "200"
		switch {
		case !r.resp.hasOK && is200 && r.ps.props > 0:
			r.resp.ok, r.resp.hasOK = r.ps.first, true
		case r.ps.props > 0 && !r.ps.nonEmpty:
			r.edits = r.edits[:r.ps.firstEdit] // all inside
			return r.drop(f.start, end)
		}
	case kResponse:
		return r.endResponse(start)
	}
	return nil
}

func (r *msReader) charData(t xml.CharData) error {
	if len(r.frames) == 0 {
		if len(bytes.Trim(t, " \t\r\n")) > 0 {
			return errors.New("text outside the root element")
		}
		return nil
	}
	switch r.frames[len(r.frames)-1].kind {
	case kHref:
		r.resp.href = append(r.resp.href, t...)
	case kStatus:
		r.ps.status = append(r.ps.status, t...)
	}
	return nil
}

// drop adds an edit that removes doc[start:end], joined to the previous
// one when they touch.
func (r *msReader) drop(start, end int) error {
	if n := len(r.edits); n > 0 && r.edits[n-1].end == start && r.edits[n-1].ins == 0 {
		r.edits[n-1].end = end
		return nil
	}
	if err := r.keep(editSize); err != nil {
		return err
	}
	r.edits = append(r.edits, msEdit{start: start, end: end})
	return nil
}

func (r *msReader) keep(n int) error {
	if r.budget -= n; r.budget < 0 {
		return fmt.Errorf("%w: the lock properties to add would take more than %d times the answer's size", errMultiStatusLimit, multiStatusKeepFactor)
	}
	return nil
}

// endResponse adds the lock properties of the response just read, whose
// end tag begins at endTag.
func (r *msReader) endResponse(endTag int) error {
	resp := &r.resp
	if resp.hrefs != 1 {
		r.edits = r.edits[:resp.firstEdit] // leave it as it is
		return nil
	}
	u, err := url.Parse(strings.TrimSpace(string(resp.href)))
	if err != nil || u.Path == "" {
		r.edits = r.edits[:resp.firstEdit]
		return nil
	}
	in := msInsert{wantsNames: r.want.names}
	if r.want.discovery && !r.want.names {
		if err := r.ctx.Err(); err != nil {
			return fmt.Errorf("rewriting the PROPFIND answer: %w", err)
		}
		b, err := r.lockDisc(u.Path)
		if err != nil {
			return err
		}
		// Members of one collection mostly show the same locks: keep
		// each distinct element once.
		s, ok := r.seen[string(b)]
		if !ok {
			if err := r.keep(len(b)); err != nil {
				return err
			}
			s = string(b)
			r.seen[s] = s
		}
		in.discovery = s
	}
	at := msInsertPoint{start: endTag, end: endTag, kind: insPropstat}
	if resp.hasOK {
		at = resp.ok
	}
	in.kind, in.qname = at.kind, at.qname
	if err := r.keep(insertSize + editSize); err != nil {
		return err
	}
	r.inserts = append(r.inserts, in)
	e := msEdit{start: at.start, end: at.end, ins: len(r.inserts)}
	// The response's edits are in document order; the insertion may go
	// before some of them.
	tail := r.edits[resp.firstEdit:]
	i, _ := slices.BinarySearchFunc(tail, e.start, func(x msEdit, s int) int { return x.start - s })
	r.edits = slices.Insert(r.edits, resp.firstEdit+i, e)
	return nil
}

// rawName returns the offsets in doc of the qualified name of the start
// tag at doc[start].
func rawName(doc []byte, start int) [2]int {
	i := start + 1
	for i < len(doc) && !strings.ContainsRune(" \t\r\n/>", rune(doc[i])) {
		i++
	}
	return [2]int{start + 1, i}
}

// checkName refuses a name that is not namespace-well-formed, as LOCK
// bodies are refused (see lockInfoParser.checkName); a prefix is bound
// when its namespace name is declared by an open element, one map lookup.
func (r *msReader) checkName(n xml.Name, elem bool) error {
	what := "attribute"
	if elem {
		what = "element"
	}
	if !isNCName(n.Local) {
		return fmt.Errorf("invalid %s name %q", what, n.Local)
	}
	switch n.Space {
	case "":
		return nil
	case xmlNS:
		if elem {
			return fmt.Errorf("element %q in the reserved xml namespace", n.Local)
		}
		return nil
	case xmlnsNS:
		return fmt.Errorf("%s %q in the reserved xmlns namespace", what, n.Local)
	}
	r.steps++
	if r.declared[n.Space] > 0 {
		return nil
	}
	return fmt.Errorf("%s %s:%s uses an undeclared namespace prefix", what, n.Space, n.Local)
}

// uniqueAttrs refuses an element that gives one attribute twice, in time
// linear in the number of its attributes.
func uniqueAttrs(attrs []xml.Attr) error {
	if len(attrs) <= 8 {
		for i, a := range attrs {
			for _, b := range attrs[:i] {
				if a.Name == b.Name {
					return fmt.Errorf("duplicate attribute %s", fmtName(a.Name))
				}
			}
		}
		return nil
	}
	seen := make(map[xml.Name]struct{}, len(attrs))
	for _, a := range attrs {
		if _, dup := seen[a.Name]; dup {
			return fmt.Errorf("duplicate attribute %s", fmtName(a.Name))
		}
		seen[a.Name] = struct{}{}
	}
	return nil
}
