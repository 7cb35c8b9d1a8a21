package caddylock

// Parsing and serialising for WebDAV locking (RFC 4918): the If, Timeout,
// Depth and Lock-Token headers, the LOCK request body and the XML of lock
// responses and precondition errors. Nothing here touches HTTP handling.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// ---------------------------------------------------------------------------
// If header (RFC 4918 section 10.4)

// IfHeader is a parsed If header: the header holds when any of its lists
// holds.
type IfHeader struct {
	Lists []IfList
}

// IfList is a conjunction of conditions on one resource.
type IfList struct {
	// Tag is the resource tag exactly as sent: an absolute URI or an
	// absolute path (RFC 4918 Simple-ref). It is "" for untagged lists,
	// which apply to the request URI.
	Tag string
	// Conditions all have to hold for the list to hold; never empty
	// after ParseIf.
	Conditions []IfCondition
}

// IfCondition is one condition of a list. Exactly one of Token and ETag
// is set.
type IfCondition struct {
	// Not negates the condition.
	Not bool
	// Token is a state token (the URI inside a Coded-URL, without the
	// angle brackets), e.g. "urn:uuid:…" or "DAV:no-lock".
	Token string
	// ETag is an entity tag as sent, with its quotes and any "W/" prefix,
	// e.g. `"abc"` or `W/"abc"`.
	ETag string
}

// NoLockToken is the state token that no resource ever has; "Not
// <DAV:no-lock>" is the customary way to write a list that always holds.
const NoLockToken = "DAV:no-lock"

// IfSyntaxError is returned by ParseIf for malformed headers; the message
// is meant to be shown to the client in a 400 response.
type IfSyntaxError struct {
	// Offset is the byte offset in the header value where parsing failed.
	Offset int
	// Msg says what was expected and what was found.
	Msg string
}

func (e *IfSyntaxError) Error() string {
	return fmt.Sprintf("invalid If header at offset %d: %s", e.Offset, e.Msg)
}

// ParseIf parses the value of an If header following the grammar of RFC
// 4918 section 10.4.2:
//
//	If          = ( 1*No-tag-list | 1*Tagged-list )
//	No-tag-list = List
//	Tagged-list = Resource-Tag 1*List
//	List        = "(" 1*Condition ")"
//	Condition   = ["Not"] (State-token | "[" entity-tag "]")
//
// Linear white space (spaces and tabs) may appear between the elements but
// not inside a Coded-URL, a resource tag or between the brackets and the
// entity tag. "Not" is matched case-insensitively, as ABNF literals are.
// Entity tags are RFC 2616 quoted-strings, which RFC 4918 refers to and
// its examples need (["I am an ETag"]); backslash escapes are kept as
// sent. Tagged and untagged lists cannot be mixed in one header.
func ParseIf(s string) (IfHeader, error) {
	p := ifParser{s: s}
	var h IfHeader
	p.skipLWS()
	if p.eof() {
		return h, p.fail(`expected "(" or "<" to start the header, found end of header`)
	}
	tagged := p.s[p.pos] == '<'
	var tag string
	lists := 0 // lists seen since the last resource tag
	for p.skipLWS(); !p.eof(); p.skipLWS() {
		switch p.s[p.pos] {
		case '<':
			if !tagged {
				return IfHeader{}, p.fail("found a resource tag after an untagged list: tagged and untagged lists cannot be mixed")
			}
			if tag != "" && lists == 0 {
				return IfHeader{}, p.fail(fmt.Sprintf(`expected "(" after resource tag <%s>, found "<"`, tag))
			}
			u, err := p.codedURL("resource tag", true)
			if err != nil {
				return IfHeader{}, err
			}
			tag, lists = u, 0
		case '(':
			l, err := p.list()
			if err != nil {
				return IfHeader{}, err
			}
			l.Tag = tag
			h.Lists = append(h.Lists, l)
			lists++
		default:
			want := `"("`
			if tagged {
				want = `"(" or "<"`
			}
			return IfHeader{}, p.fail(fmt.Sprintf("expected %s, found %s", want, p.found()))
		}
	}
	if lists == 0 {
		return IfHeader{}, p.fail(fmt.Sprintf(`expected "(" after resource tag <%s>, found end of header`, tag))
	}
	return h, nil
}

type ifParser struct {
	s   string
	pos int
}

func (p *ifParser) eof() bool { return p.pos >= len(p.s) }

func (p *ifParser) skipLWS() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

func (p *ifParser) fail(msg string) error {
	return &IfSyntaxError{Offset: p.pos, Msg: msg}
}

// found describes what is at the current position, for error messages.
func (p *ifParser) found() string {
	if p.eof() {
		return "end of header"
	}
	return quoteAt(p.s, p.pos)
}

// list parses "(" 1*Condition ")".
func (p *ifParser) list() (IfList, error) {
	p.pos++ // "("
	var l IfList
	for {
		p.skipLWS()
		if p.eof() {
			return l, p.fail(`expected a condition or ")", found end of header`)
		}
		if p.s[p.pos] == ')' {
			if len(l.Conditions) == 0 {
				return l, p.fail(`expected a state token "<…>" or an entity tag "[…]" in list, found ")"`)
			}
			p.pos++
			return l, nil
		}
		var c IfCondition
		if len(p.s)-p.pos >= 3 && strings.EqualFold(p.s[p.pos:p.pos+3], "not") {
			c.Not = true
			p.pos += 3
			p.skipLWS()
		}
		switch {
		case p.eof():
			return l, p.fail(`expected a state token "<…>" or an entity tag "[…]", found end of header`)
		case p.s[p.pos] == '<':
			u, err := p.codedURL("state token", false)
			if err != nil {
				return l, err
			}
			c.Token = u
		case p.s[p.pos] == '[':
			e, err := p.etag()
			if err != nil {
				return l, err
			}
			c.ETag = e
		default:
			what := "a condition"
			if c.Not {
				what = `"Not"`
			}
			return l, p.fail(fmt.Sprintf(`expected a state token "<…>" or an entity tag "[…]" after %s, found %s`, what, p.found()))
		}
		l.Conditions = append(l.Conditions, c)
	}
}

// codedURL parses "<" URI ">" with no white space inside. A resource tag
// (allowPath) may also be an absolute path.
func (p *ifParser) codedURL(what string, allowPath bool) (string, error) {
	p.pos++ // "<"
	end := strings.IndexByte(p.s[p.pos:], '>')
	if end < 0 {
		// Point at the offending character if there is one, else at the end.
		if off, msg := checkURI(p.s[p.pos:], allowPath); msg != "" && off < len(p.s)-p.pos {
			p.pos += off
			return "", p.fail(what + ": " + msg)
		}
		p.pos = len(p.s)
		return "", p.fail(fmt.Sprintf(`expected ">" to end the %s, found end of header`, what))
	}
	u := p.s[p.pos : p.pos+end]
	if off, msg := checkURI(u, allowPath); msg != "" {
		p.pos += off
		return "", p.fail(what + ": " + msg)
	}
	p.pos += end + 1
	return u, nil
}

// etag parses "[" entity-tag "]".
func (p *ifParser) etag() (string, error) {
	p.pos++ // "["
	start := p.pos
	if strings.HasPrefix(p.s[p.pos:], "W/") {
		p.pos += 2
	}
	if p.eof() || p.s[p.pos] != '"' {
		return "", p.fail(fmt.Sprintf(`expected an entity tag ("…" or W/"…") after "[", found %s`, p.found()))
	}
	p.pos++
	for ; !p.eof() && p.s[p.pos] != '"'; p.pos++ {
		c := p.s[p.pos]
		if c == '\\' && p.pos+1 < len(p.s) && isQuotedChar(p.s[p.pos+1]) {
			p.pos++ // quoted-pair
			continue
		}
		if !isQuotedChar(c) || c == '\\' {
			return "", p.fail(fmt.Sprintf("invalid character %s in entity tag", p.found()))
		}
	}
	if p.eof() {
		return "", p.fail(`expected '"' to end the entity tag, found end of header`)
	}
	p.pos++
	e := p.s[start:p.pos]
	if p.eof() || p.s[p.pos] != ']' {
		return "", p.fail(fmt.Sprintf(`expected "]" right after the entity tag, found %s`, p.found()))
	}
	p.pos++
	return e, nil
}

// isETagChar reports whether c is an etagc of RFC 7232.
func isETagChar(c byte) bool {
	return c == 0x21 || (c >= 0x23 && c <= 0x7e) || c >= 0x80
}

// isQuotedChar reports whether c may appear in an RFC 2616 quoted-string,
// on its own (then not '"' or '\\') or after a backslash.
func isQuotedChar(c byte) bool {
	return c == ' ' || c == '\t' || c == '"' || isETagChar(c)
}

// checkURI checks u against RFC 3986 absolute-URI, or, with allowPath,
// also path-absolute ["?" query]. It returns the offset of the problem and
// a message, or "" when u is fine.
func checkURI(u string, allowPath bool) (int, string) {
	if u == "" {
		return 0, "expected a URI, found nothing"
	}
	i := 0
	if allowPath && u[0] == '/' {
		if strings.HasPrefix(u, "//") {
			return 0, `expected an absolute URI or an absolute path, found "//"`
		}
	} else {
		for ; i < len(u) && u[i] != ':'; i++ {
			c := u[i]
			if !isAlpha(c) && (i == 0 || !(isDigit(c) || c == '+' || c == '-' || c == '.')) {
				if allowPath {
					return i, fmt.Sprintf("expected an absolute URI (scheme:…) or an absolute path, found %s", quoteAt(u, i))
				}
				return i, fmt.Sprintf("expected an absolute URI (scheme:…), found %s", quoteAt(u, i))
			}
		}
		if i == 0 || i == len(u) {
			return i, `expected an absolute URI (scheme:…), found no scheme`
		}
	}
	for ; i < len(u); i++ {
		c := u[i]
		switch {
		case isAlpha(c) || isDigit(c) || strings.IndexByte("-._~:/?[]@!$&'()*+,;=", c) >= 0:
		case c == '%':
			if i+2 >= len(u) || !isHex(u[i+1]) || !isHex(u[i+2]) {
				return i, `expected two hex digits after "%"`
			}
			i += 2
		case c == '#':
			return i, "a fragment (#) is not allowed here"
		default:
			return i, fmt.Sprintf("invalid character %s in URI", quoteAt(u, i))
		}
	}
	return 0, ""
}

// quoteAt quotes the character at s[i] for an error message; a byte that
// is not valid UTF-8 is shown as an escape.
func quoteAt(s string, i int) string {
	r, size := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && size <= 1 {
		return strconv.Quote(s[i : i+size])
	}
	return strconv.QuoteRune(r)
}

func isAlpha(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'f') }

// String returns the header in canonical form: single spaces between the
// elements, "Not" capitalised, and consecutive lists with the same tag
// under one resource tag. ParseIf(h.String()) gives h back for every h
// returned by ParseIf.
func (h IfHeader) String() string {
	var b strings.Builder
	for i, l := range h.Lists {
		if l.Tag != "" && (i == 0 || h.Lists[i-1].Tag != l.Tag) {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString("<" + l.Tag + ">")
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte('(')
		for j, c := range l.Conditions {
			if j > 0 {
				b.WriteByte(' ')
			}
			if c.Not {
				b.WriteString("Not ")
			}
			if c.Token != "" {
				b.WriteString("<" + c.Token + ">")
			} else {
				b.WriteString("[" + c.ETag + "]")
			}
		}
		b.WriteByte(')')
	}
	return b.String()
}

// Tokens returns the state tokens of all conditions that are not negated,
// without duplicates, in the order they first appear. These are the lock
// tokens the client submitted (RFC 4918 section 10.4.1). NoLockToken is
// returned like any other token when it appears without Not.
func (h IfHeader) Tokens() []string {
	var out []string
	for _, l := range h.Lists {
		for _, c := range l.Conditions {
			if !c.Not && c.Token != "" && !tokenIn(out, c.Token) {
				out = append(out, c.Token)
			}
		}
	}
	return out
}

// Eval evaluates the header (RFC 4918 section 10.4.3).
//
// resolve maps a list's tag to the resource it names; it is called with ""
// for untagged lists and must then return the request's resource. It
// reports ok=false for tags it cannot map (for instance a URI of another
// host); such a list is false, since its conditions cannot be checked.
// state returns the lock tokens currently held on a resource and its
// current entity tag ("" when it has none or does not exist); it is
// called at most once per resource.
//
// The header holds when any list holds, and a list holds when all its
// conditions hold. A state-token condition holds when the token is one of
// the resource's lock tokens (exact, case-sensitive comparison);
// NoLockToken never matches, so "Not <DAV:no-lock>" always holds. An
// entity-tag condition uses the strong comparison of RFC 7232 for a strong
// tag and the weak comparison for a weak (W/) tag. A header without lists
// is false.
func (h IfHeader) Eval(resolve func(tag string) (path string, ok bool), state func(path string) (tokens []string, etag string)) bool {
	type resState struct {
		tokens []string
		etag   string
	}
	seen := make(map[string]resState)
	for _, l := range h.Lists {
		path, ok := resolve(l.Tag)
		if !ok {
			continue
		}
		st, ok := seen[path]
		if !ok {
			st.tokens, st.etag = state(path)
			seen[path] = st
		}
		if l.holds(st.tokens, st.etag) {
			return true
		}
	}
	return false
}

func (l IfList) holds(tokens []string, etag string) bool {
	for _, c := range l.Conditions {
		var v bool
		if c.Token != "" {
			v = !strings.EqualFold(c.Token, NoLockToken) && tokenIn(tokens, c.Token)
		} else {
			v = etagMatch(c.ETag, etag)
		}
		if v == c.Not {
			return false
		}
	}
	return true
}

// etagMatch compares a condition's entity tag with a resource's: strong
// comparison when cond is strong, weak comparison when it is weak.
func etagMatch(cond, cur string) bool {
	cw, co, ok := splitETag(cond)
	if !ok {
		return false
	}
	uw, uo, ok := splitETag(cur)
	if !ok || co != uo {
		return false
	}
	return cw || !uw
}

// splitETag splits an entity tag into its weakness and opaque tag.
func splitETag(e string) (weak bool, opaque string, ok bool) {
	if strings.HasPrefix(e, "W/") {
		weak, e = true, e[2:]
	}
	if len(e) < 2 || e[0] != '"' || e[len(e)-1] != '"' {
		return false, "", false
	}
	return weak, e, true
}

// IfMatch returns an If-Match header value that makes a backend check the
// same entity-tag conditions as h, so that they can be passed on when the
// If header itself is not. That is possible only when h is a single
// untagged list whose entity-tag conditions are all positive, strong and
// equal (If-Match compares strongly and can name only one current ETag),
// and valid in RFC 7232 syntax (no spaces or backslash escapes);
// state-token conditions are ignored, they are the proxy's to check. ok
// is false when this cannot be expressed or when h has no entity-tag
// condition. A caller that has resolved a list's tag to the request URI
// may clear Tag before calling IfMatch.
func (h IfHeader) IfMatch() (string, bool) {
	if len(h.Lists) != 1 || h.Lists[0].Tag != "" {
		return "", false
	}
	var v string
	for _, c := range h.Lists[0].Conditions {
		if c.ETag == "" {
			continue
		}
		if c.Not || !isStrongETag7232(c.ETag) || (v != "" && v != c.ETag) {
			return "", false
		}
		v = c.ETag
	}
	return v, v != ""
}

// isStrongETag7232 reports whether e is a strong entity tag valid in
// RFC 7232 syntax, which has neither spaces nor escapes.
func isStrongETag7232(e string) bool {
	if len(e) < 2 || e[0] != '"' || e[len(e)-1] != '"' {
		return false
	}
	for i := 1; i < len(e)-1; i++ {
		if !isETagChar(e[i]) {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// Timeout header (RFC 4918 section 10.7)

// ParseTimeout parses a Timeout header: a comma-separated list of
// "Second-N" and "Infinite" (both matched case-insensitively, as clients
// vary). Every element must be well-formed and the first one is used.
// An empty header gives def; "Infinite" gives limit; N is clamped to
// limit, also when it does not fit in an integer. limit <= 0 means no
// limit (the largest time.Duration). def is clamped to [0, limit].
func ParseTimeout(s string, def, limit time.Duration) (time.Duration, error) {
	if limit <= 0 {
		limit = math.MaxInt64
	}
	def = min(max(def, 0), limit)
	if strings.Trim(s, " \t") == "" {
		return def, nil
	}
	var (
		d     time.Duration
		found bool
	)
	for elem := range strings.SplitSeq(s, ",") {
		elem = strings.Trim(elem, " \t")
		if elem == "" {
			continue // #rule lists allow empty elements
		}
		v, err := parseTimeType(elem, limit)
		if err != nil {
			return 0, fmt.Errorf("invalid Timeout header %.80q: %w", s, err)
		}
		if !found {
			d, found = v, true
		}
	}
	if !found {
		return 0, fmt.Errorf(`invalid Timeout header %.80q: expected "Second-N" or "Infinite"`, s)
	}
	return d, nil
}

func parseTimeType(e string, limit time.Duration) (time.Duration, error) {
	if strings.EqualFold(e, "Infinite") {
		return limit, nil
	}
	const prefix = "Second-"
	if len(e) < len(prefix) || !strings.EqualFold(e[:len(prefix)], prefix) {
		return 0, fmt.Errorf(`expected "Second-N" or "Infinite", found %.40q`, e)
	}
	digits := e[len(prefix):]
	if digits == "" {
		return 0, errors.New(`expected digits after "Second-"`)
	}
	maxSecs := int64(limit / time.Second)
	var n int64
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if !isDigit(c) {
			return 0, fmt.Errorf(`expected digits after "Second-", found %s`, quoteAt(digits, i))
		}
		// Saturate just above maxSecs so that huge values clamp instead
		// of overflowing.
		if n <= maxSecs {
			n = n*10 + int64(c-'0')
		}
	}
	if n > maxSecs {
		return limit, nil
	}
	return time.Duration(n) * time.Second, nil
}

// FormatTimeout formats a lock's remaining time for the DAV:timeout
// element and the Timeout response header: "Infinite", or "Second-N" with
// N rounded up to whole seconds and never negative.
func FormatTimeout(remaining time.Duration, infinite bool) string {
	if infinite {
		return "Infinite"
	}
	if remaining <= 0 {
		return "Second-0"
	}
	secs := remaining / time.Second
	if remaining%time.Second != 0 {
		secs++
	}
	return "Second-" + strconv.FormatInt(int64(secs), 10)
}

// ---------------------------------------------------------------------------
// Depth header (RFC 4918 section 10.2)

// ParseDepth parses a Depth header: "0", "1" or "infinity" (matched
// case-insensitively); an empty header gives def.
func ParseDepth(s string, def lockstore.Depth) (lockstore.Depth, error) {
	switch v := strings.Trim(s, " \t"); {
	case v == "":
		return def, nil
	case v == "0":
		return lockstore.DepthZero, nil
	case v == "1":
		return lockstore.DepthOne, nil
	case strings.EqualFold(v, "infinity"):
		return lockstore.DepthInfinity, nil
	}
	return 0, fmt.Errorf(`invalid Depth header %.40q: expected "0", "1" or "infinity"`, s)
}

// ParseLockDepth parses the Depth header of a LOCK request, where only "0"
// and "infinity" are allowed and a missing header means infinity (RFC 4918
// section 9.10.3).
func ParseLockDepth(s string) (lockstore.Depth, error) {
	d, err := ParseDepth(s, lockstore.DepthInfinity)
	if err != nil {
		return 0, err
	}
	if d == lockstore.DepthOne {
		return 0, errors.New(`invalid Depth header for LOCK: "1" is not allowed, use "0" or "infinity"`)
	}
	return d, nil
}

// ---------------------------------------------------------------------------
// Lock-Token header (RFC 4918 section 10.5) and lock tokens

// ParseLockToken parses a Lock-Token header, a Coded-URL "<absolute-URI>",
// and returns the URI.
func ParseLockToken(s string) (string, error) {
	v := strings.Trim(s, " \t")
	if v == "" {
		return "", errors.New("missing Lock-Token header")
	}
	if len(v) < 2 || v[0] != '<' || v[len(v)-1] != '>' {
		return "", fmt.Errorf(`invalid Lock-Token header %.80q: expected "<" absolute-URI ">"`, s)
	}
	u := v[1 : len(v)-1]
	if off, msg := checkURI(u, false); msg != "" {
		return "", fmt.Errorf("invalid Lock-Token header %.80q at offset %d: %s", s, off+1, msg)
	}
	return u, nil
}

// NewLockToken returns a new lock token: "urn:uuid:" and a random (version
// 4) UUID in lower-case canonical form, with 122 random bits from
// crypto/rand so that tokens cannot be guessed.
func NewLockToken() string {
	var u [16]byte
	// crypto/rand.Read never returns an error since Go 1.24.
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // variant 10 (RFC 9562)
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	hex.Encode(b[9:13], u[4:6])
	hex.Encode(b[14:18], u[6:8])
	hex.Encode(b[19:23], u[8:10])
	hex.Encode(b[24:], u[10:])
	b[8], b[13], b[18], b[23] = '-', '-', '-', '-'
	return "urn:uuid:" + string(b[:])
}

// ---------------------------------------------------------------------------
// LOCK request body (RFC 4918 sections 9.10 and 14.11)

const (
	davNS   = "DAV:"
	xmlNS   = "http://www.w3.org/XML/1998/namespace"
	xmlnsNS = "http://www.w3.org/2000/xmlns/"
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
	// ErrInvalidLockInfo wraps every error about the body's content (400).
	ErrInvalidLockInfo = errors.New("invalid lockinfo")
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
// beyond maxBytes, errors wrapping ErrInvalidLockInfo for bad content, and
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
	return fmt.Errorf("%w: %s", ErrInvalidLockInfo, fmt.Sprintf(format, args...))
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
		return nil, fmt.Errorf("%w: %w", ErrInvalidLockInfo, err)
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

// isNCName reports whether a name that encoding/xml accepted as an XML
// Name is also a valid local name (NCName): no colon, and not starting
// with a character that may only follow the first.
func isNCName(s string) bool {
	if s == "" || strings.Contains(s, ":") {
		return false
	}
	r, _ := utf8.DecodeRuneInString(s)
	switch {
	case r >= '0' && r <= '9', r == '-', r == '.', r == 0xb7,
		r >= 0x300 && r <= 0x36f, r == 0x203f, r == 0x2040:
		return false
	}
	return true
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

func fmtName(n xml.Name) string {
	if n.Space == "" {
		return n.Local
	}
	return "{" + n.Space + "}" + n.Local
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

// appendEscaped appends s escaped for XML text or, with attr, for a
// double-quoted attribute value. Characters a parser would normalise away
// (CR; tabs and newlines in attributes) become character references;
// characters XML cannot carry at all become U+FFFD.
func appendEscaped(b []byte, s string, attr bool) []byte {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == '&':
			b = append(b, "&amp;"...)
		case r == '<':
			b = append(b, "&lt;"...)
		case r == '>':
			b = append(b, "&gt;"...)
		case r == '"' && attr:
			b = append(b, "&quot;"...)
		case r == '\r':
			b = append(b, "&#xD;"...)
		case (r == '\n' || r == '\t') && attr:
			b = append(b, "&#x"...)
			b = strconv.AppendInt(b, int64(r), 16)
			b = append(b, ';')
		case r == utf8.RuneError && size == 1, !isXMLChar(r):
			b = utf8.AppendRune(b, '\uFFFD')
		default:
			b = utf8.AppendRune(b, r)
		}
	}
	return b
}

// isXMLChar reports whether r is a Char of XML 1.0.
func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0a || r == 0x0d ||
		(r >= 0x20 && r <= 0xd7ff) ||
		(r >= 0xe000 && r <= 0xfffd) ||
		(r >= 0x10000 && r <= 0x10ffff)
}

// ---------------------------------------------------------------------------
// Response XML (RFC 4918 sections 14 and 16)

const xmlDecl = `<?xml version="1.0" encoding="utf-8"?>` + "\n"

// ActiveLock describes a lock for DAV:lockdiscovery.
type ActiveLock struct {
	// Root is the lock root as a path, unescaped (as in URL.Path); it is
	// URL-escaped for the DAV:lockroot href.
	Root string
	// Token is the lock token; DAV:locktoken is left out when it is "".
	Token string
	// Scope is Shared or Exclusive; anything but Shared reports exclusive.
	Scope lockstore.Kind
	// Depth is DepthZero or DepthInfinity.
	Depth lockstore.Depth
	// Owner is LockInfo.Owner, inserted verbatim into DAV:owner; nil
	// leaves DAV:owner out. It must be well-formed content, as
	// ParseLockInfo produces.
	Owner []byte
	// Timeout is the time left; Infinite reports "Infinite" instead.
	Timeout  time.Duration
	Infinite bool
}

// MarshalLockDiscovery returns the body of a successful LOCK response: an
// XML document with a DAV:prop holding the DAV:lockdiscovery of locks.
func MarshalLockDiscovery(locks ...ActiveLock) []byte {
	b := []byte(xmlDecl + `<D:prop xmlns:D="DAV:">`)
	b = appendLockDiscovery(b, locks, false)
	return append(b, "</D:prop>"...)
}

// LockDiscoveryElement returns a DAV:lockdiscovery element for locks, for
// PROPFIND responses. It declares the D prefix itself so that it can be
// inserted anywhere.
func LockDiscoveryElement(locks ...ActiveLock) []byte {
	return appendLockDiscovery(nil, locks, true)
}

func appendLockDiscovery(b []byte, locks []ActiveLock, declare bool) []byte {
	b = append(b, "<D:lockdiscovery"...)
	if declare {
		b = append(b, ` xmlns:D="DAV:"`...)
	}
	if len(locks) == 0 {
		return append(b, "/>"...)
	}
	b = append(b, '>')
	for _, l := range locks {
		scope := "exclusive"
		if l.Scope == lockstore.Shared {
			scope = "shared"
		}
		b = append(b, "<D:activelock><D:locktype><D:write/></D:locktype><D:lockscope><D:"+scope+"/></D:lockscope><D:depth>"...)
		b = appendEscaped(b, l.Depth.String(), false)
		b = append(b, "</D:depth>"...)
		if l.Owner != nil {
			b = append(b, "<D:owner>"...)
			b = append(b, l.Owner...)
			b = append(b, "</D:owner>"...)
		}
		b = append(b, "<D:timeout>"+FormatTimeout(l.Timeout, l.Infinite)+"</D:timeout>"...)
		if l.Token != "" {
			b = append(b, "<D:locktoken><D:href>"...)
			b = appendEscaped(b, l.Token, false)
			b = append(b, "</D:href></D:locktoken>"...)
		}
		b = append(b, "<D:lockroot><D:href>"...)
		b = appendEscaped(b, escapePath(l.Root), false)
		b = append(b, "</D:href></D:lockroot></D:activelock>"...)
	}
	return append(b, "</D:lockdiscovery>"...)
}

// escapePath URL-escapes a path for use as an href. A path starting with
// "//" gets a "/." prefix so that it is not read as a network-path
// reference naming a host.
func escapePath(p string) string {
	e := (&url.URL{Path: p}).EscapedPath()
	if strings.HasPrefix(e, "//") {
		e = "/." + e
	}
	return e
}

// SupportedLockElement returns a DAV:supportedlock element announcing
// exclusive and shared write locks, for PROPFIND responses. It declares
// the D prefix itself.
func SupportedLockElement() []byte {
	return []byte(`<D:supportedlock xmlns:D="DAV:">` +
		`<D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>` +
		`<D:lockentry><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>` +
		`</D:supportedlock>`)
}

// Precondition and postcondition codes of RFC 4918 section 16, for
// MarshalDAVError.
const (
	CondLockTokenSubmitted            = "lock-token-submitted"
	CondNoConflictingLock             = "no-conflicting-lock"
	CondLockTokenMatchesRequestURI    = "lock-token-matches-request-uri"
	CondCannotModifyProtectedProperty = "cannot-modify-protected-property"
	CondPropfindFiniteDepth           = "propfind-finite-depth"
)

// MarshalDAVError returns a DAV:error document naming the failed
// condition, with a DAV:href for each of hrefs (unescaped paths, URL-
// escaped here), as in
//
//	<D:error xmlns:D="DAV:"><D:lock-token-submitted><D:href>/a</D:href></D:lock-token-submitted></D:error>
//
// condition must be an XML name such as the Cond constants; otherwise the
// DAV:error element is left empty.
func MarshalDAVError(condition string, hrefs ...string) []byte {
	b := []byte(xmlDecl)
	if !isSimpleName(condition) {
		return append(b, `<D:error xmlns:D="DAV:"/>`...)
	}
	b = append(b, `<D:error xmlns:D="DAV:"><D:`+condition...)
	if len(hrefs) == 0 {
		return append(b, "/></D:error>"...)
	}
	b = append(b, '>')
	for _, h := range hrefs {
		b = append(b, "<D:href>"...)
		b = appendEscaped(b, escapePath(h), false)
		b = append(b, "</D:href>"...)
	}
	return append(b, "</D:"+condition+"></D:error>"...)
}

// isSimpleName reports whether s is an ASCII XML local name.
func isSimpleName(s string) bool {
	if s == "" || !(isAlpha(s[0]) || s[0] == '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlpha(c) && !isDigit(c) && c != '-' && c != '.' && c != '_' {
			return false
		}
	}
	return true
}
