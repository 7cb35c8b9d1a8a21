package dav

// The LOCK request body (RFC 4918 sections 9.10 and 14.11).

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// DefaultMaxLockInfoBytes is the body size limit ParseLockInfo applies
// when given none.
const DefaultMaxLockInfoBytes = 64 << 10

// Errors of ParseLockInfo that callers branch on.
var (
	// ErrNoBody means the LOCK request had an empty body: it is a refresh
	// of an existing lock (RFC 4918 section 9.10.2).
	ErrNoBody = errors.New("no request body")
	// ErrBodyTooLarge means the body exceeded the limit (413).
	ErrBodyTooLarge = errors.New("request body too large")
	// errInvalidLockInfo wraps every error about the body's content (400).
	errInvalidLockInfo = errors.New("invalid lockinfo")
)

// LockInfo is the content of a LOCK request body (DAV:lockinfo).
type LockInfo struct {
	// Scope is Exclusive or Shared.
	Scope lockstore.Kind
	// Type is the lock type; "write" is the only one RFC 4918 defines.
	Type string
	// Owner is the content of DAV:owner, re-serialised so that it is
	// well-formed on its own: every element names its namespace with a
	// default namespace declaration (xmlns="…") wherever it differs from
	// its parent's, namespaced attributes get generated prefixes
	// (xmlns:a0="…"), and comments and processing instructions are
	// dropped. It can be echoed inside DAV:owner whatever prefixes the
	// surrounding document uses. Owner is nil when there was no
	// DAV:owner and empty (non-nil) for an empty one. ParseLockInfo
	// refuses owners that would grow beyond twice the body size plus 1 KiB
	// this way.
	Owner []byte
}

// ParseLockInfo reads a LOCK request body of at most maxBytes bytes
// (<= 0 means DefaultMaxLockInfoBytes). The parser is namespace-aware:
// elements count by namespace and local name, whatever prefix they use.
// Unknown elements are ignored, as RFC 4918 section 17 asks, except inside
// DAV:lockscope and DAV:locktype where a known value must be present.
// Document type declarations are refused outright, so no entity other
// than the predefined ones is ever expanded.
//
// Errors: ErrNoBody for an empty (or all white space) body, ErrBodyTooLarge
// beyond maxBytes, errors wrapping errInvalidLockInfo for bad content, and
// the reader's own errors otherwise.
func ParseLockInfo(r io.Reader, maxBytes int64) (LockInfo, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxLockInfoBytes
	}
	limit := maxBytes
	if limit < math.MaxInt64 {
		limit++ // read one byte more to tell "exactly max" from "too large"
	}
	data, err := io.ReadAll(io.LimitReader(r, limit))
	if err != nil {
		return LockInfo{}, fmt.Errorf("reading lockinfo: %w", err)
	}
	if int64(len(data)) > maxBytes {
		return LockInfo{}, fmt.Errorf("lockinfo larger than %d bytes: %w", maxBytes, ErrBodyTooLarge)
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // UTF-8 byte order mark
	if len(bytes.Trim(data, " \t\r\n")) == 0 {
		return LockInfo{}, ErrNoBody
	}
	// encoding/xml reports any "<!" markup as a Directive and we refuse
	// those below; this check also catches them inside text the decoder
	// would never reach because of an earlier error.
	lower := bytes.ToLower(data)
	if bytes.Contains(lower, []byte("<!doctype")) || bytes.Contains(lower, []byte("<!entity")) {
		return LockInfo{}, invalidLockInfo("document type declarations are not allowed")
	}
	p := lockInfoParser{
		d: xml.NewDecoder(bytes.NewReader(data)),
		// Declaring namespaces per element can make the owner grow (a
		// long namespace name declared once, then used by many small
		// elements); bound it so a small body cannot cost much memory.
		maxOwner: 2*len(data) + 1024,
		inScope:  map[string]int{},
	}
	p.d.Strict = true
	li, err := p.document()
	if err != nil {
		return LockInfo{}, err
	}
	return li, nil
}

func invalidLockInfo(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errInvalidLockInfo, fmt.Sprintf(format, args...))
}

type lockInfoParser struct {
	d *xml.Decoder
	// bound holds, for every open element, the namespace names declared
	// on it, to tell bound prefixes from unbound ones (which encoding/xml
	// passes through untranslated); inScope counts each name's
	// declarations among the open elements, so that a check is one lookup
	// however deep the body nests (a scan of bound per element was
	// quadratic in the depth).
	bound   [][]string
	inScope map[string]int
	// maxOwner limits the size of the re-serialised owner.
	maxOwner int
}

// next returns the next token, refusing directives and names that are not
// namespace-well-formed.
func (p *lockInfoParser) next() (xml.Token, error) {
	tok, err := p.d.Token()
	if err != nil {
		if err == io.EOF {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errInvalidLockInfo, err)
	}
	switch t := tok.(type) {
	case xml.Directive:
		return nil, invalidLockInfo("declarations (<!…>) are not allowed")
	case xml.StartElement:
		var decl []string
		for _, a := range t.Attr {
			if a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns") {
				decl = append(decl, a.Value)
			}
		}
		p.bound = append(p.bound, decl)
		for _, ns := range decl {
			p.inScope[ns]++
		}
		if err := p.checkName(t.Name, "element"); err != nil {
			return nil, err
		}
		for _, a := range t.Attr {
			if a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns") {
				continue
			}
			if err := p.checkName(a.Name, "attribute"); err != nil {
				return nil, err
			}
		}
	case xml.EndElement:
		for _, ns := range p.bound[len(p.bound)-1] {
			p.inScope[ns]--
		}
		p.bound = p.bound[:len(p.bound)-1]
	}
	return tok, nil
}

func (p *lockInfoParser) checkName(n xml.Name, what string) error {
	if !isNCName(n.Local) {
		return invalidLockInfo("invalid %s name %q", what, n.Local)
	}
	switch n.Space {
	case "", xmlNS:
		if what == "element" && n.Space == xmlNS {
			return invalidLockInfo("element %q in the reserved xml namespace", n.Local)
		}
		return nil
	case xmlnsNS:
		return invalidLockInfo("%s %q in the reserved xmlns namespace", what, n.Local)
	}
	if p.inScope[n.Space] > 0 {
		return nil
	}
	return invalidLockInfo("%s %s:%s uses an undeclared namespace prefix", what, n.Space, n.Local)
}

// document parses the whole body: one DAV:lockinfo root element with
// nothing but white space, comments and processing instructions around it.
func (p *lockInfoParser) document() (LockInfo, error) {
	var (
		li   LockInfo
		done bool
	)
	for {
		tok, err := p.next()
		if err == io.EOF {
			if !done {
				return LockInfo{}, invalidLockInfo("no lockinfo element")
			}
			return li, nil
		}
		if err != nil {
			return LockInfo{}, err
		}
		switch t := tok.(type) {
		case xml.CharData:
			if len(bytes.Trim(t, " \t\r\n")) > 0 {
				return LockInfo{}, invalidLockInfo("text outside the lockinfo element")
			}
		case xml.StartElement:
			if done {
				return LockInfo{}, invalidLockInfo("more than one root element")
			}
			if t.Name.Space != davNS || t.Name.Local != "lockinfo" {
				return LockInfo{}, invalidLockInfo("root element is %s, expected DAV:lockinfo", fmtName(t.Name))
			}
			if li, err = p.lockinfo(); err != nil {
				return LockInfo{}, err
			}
			done = true
		}
	}
}

// lockinfo parses the children of DAV:lockinfo up to its end tag.
func (p *lockInfoParser) lockinfo() (LockInfo, error) {
	var (
		li    LockInfo
		owner bool
	)
	for {
		tok, err := p.next()
		if err != nil {
			return li, unexpectedEOF(err)
		}
		switch t := tok.(type) {
		case xml.EndElement:
			if li.Scope == 0 {
				return li, invalidLockInfo("missing lockscope")
			}
			if li.Type == "" {
				return li, invalidLockInfo("missing locktype")
			}
			return li, nil
		case xml.StartElement:
			if t.Name.Space != davNS {
				err = p.skip()
				break
			}
			switch t.Name.Local {
			case "lockscope":
				if li.Scope != 0 {
					return li, invalidLockInfo("more than one lockscope")
				}
				li.Scope, err = p.lockscope()
			case "locktype":
				if li.Type != "" {
					return li, invalidLockInfo("more than one locktype")
				}
				li.Type, err = p.locktype()
			case "owner":
				if owner {
					return li, invalidLockInfo("more than one owner")
				}
				owner = true
				li.Owner, err = p.owner()
			default:
				err = p.skip()
			}
			if err != nil {
				return li, err
			}
		}
	}
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return invalidLockInfo("unexpected end of document")
	}
	return err
}

// lockscope parses the content of DAV:lockscope.
func (p *lockInfoParser) lockscope() (lockstore.Kind, error) {
	var k lockstore.Kind
	for {
		tok, err := p.next()
		if err != nil {
			return 0, unexpectedEOF(err)
		}
		switch t := tok.(type) {
		case xml.EndElement:
			if k == 0 {
				return 0, invalidLockInfo("lockscope must contain DAV:exclusive or DAV:shared")
			}
			return k, nil
		case xml.StartElement:
			var v lockstore.Kind
			if t.Name.Space == davNS {
				switch t.Name.Local {
				case "exclusive":
					v = lockstore.Exclusive
				case "shared":
					v = lockstore.Shared
				}
			}
			if v != 0 && k != 0 {
				return 0, invalidLockInfo("lockscope names more than one scope")
			}
			if v != 0 {
				k = v
			}
			if err := p.skip(); err != nil {
				return 0, err
			}
		}
	}
}

// locktype parses the content of DAV:locktype.
func (p *lockInfoParser) locktype() (string, error) {
	var typ string
	for {
		tok, err := p.next()
		if err != nil {
			return "", unexpectedEOF(err)
		}
		switch t := tok.(type) {
		case xml.EndElement:
			if typ == "" {
				return "", invalidLockInfo("locktype must contain DAV:write")
			}
			return typ, nil
		case xml.StartElement:
			if t.Name.Space == davNS && t.Name.Local == "write" {
				typ = "write"
			}
			if err := p.skip(); err != nil {
				return "", err
			}
		}
	}
}

// skip consumes tokens up to the end of the element just started.
func (p *lockInfoParser) skip() error {
	for depth := 1; depth > 0; {
		tok, err := p.next()
		if err != nil {
			return unexpectedEOF(err)
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
	}
	return nil
}

// owner re-serialises the content of DAV:owner as described at
// LockInfo.Owner.
func (p *lockInfoParser) owner() ([]byte, error) {
	b := []byte{}
	var spaces []string // namespace of each open element below owner
	for {
		tok, err := p.next()
		if err != nil {
			return nil, unexpectedEOF(err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			b = append(b, '<')
			b = append(b, t.Name.Local...)
			if len(spaces) == 0 || spaces[len(spaces)-1] != t.Name.Space {
				b = append(b, ` xmlns="`...)
				b = appendEscaped(b, t.Name.Space, true)
				b = append(b, '"')
			}
			if b, err = appendAttrs(b, t.Attr); err != nil {
				return nil, err
			}
			b = append(b, '>')
			spaces = append(spaces, t.Name.Space)
		case xml.EndElement:
			if len(spaces) == 0 {
				return b, nil
			}
			spaces = spaces[:len(spaces)-1]
			b = append(b, "</"...)
			b = append(b, t.Name.Local...)
			b = append(b, '>')
		case xml.CharData:
			b = appendEscaped(b, string(t), false)
		}
		if len(b) > p.maxOwner {
			return nil, invalidLockInfo("owner larger than %d bytes when re-serialised", p.maxOwner)
		}
	}
}

// appendAttrs appends the attributes of an owner element, dropping
// namespace declarations (the serialiser writes its own) and giving
// namespaced attributes generated prefixes.
func appendAttrs(b []byte, attrs []xml.Attr) ([]byte, error) {
	var (
		prefixes map[string]string
		seen     map[xml.Name]bool
	)
	for _, a := range attrs {
		if a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns") {
			continue
		}
		if seen == nil {
			seen = make(map[xml.Name]bool)
		}
		if seen[a.Name] {
			return nil, invalidLockInfo("duplicate attribute %s", fmtName(a.Name))
		}
		seen[a.Name] = true
		b = append(b, ' ')
		switch a.Name.Space {
		case "":
		case xmlNS:
			b = append(b, "xml:"...)
		default:
			if prefixes == nil {
				prefixes = make(map[string]string)
			}
			prefix, ok := prefixes[a.Name.Space]
			if !ok {
				prefix = "a" + strconv.Itoa(len(prefixes))
				prefixes[a.Name.Space] = prefix
				b = append(b, "xmlns:"+prefix+`="`...)
				b = appendEscaped(b, a.Name.Space, true)
				b = append(b, `" `...)
			}
			b = append(b, prefix+":"...)
		}
		b = append(b, a.Name.Local...)
		b = append(b, `="`...)
		b = appendEscaped(b, a.Value, true)
		b = append(b, '"')
	}
	return b, nil
}
