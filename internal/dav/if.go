package dav

// The If header (RFC 4918 section 10.4): parsing, the canonical form,
// the submitted tokens, evaluation and the If-Match it can be passed on as.

import (
	"fmt"
	"strings"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

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

// noLockToken is the state token that no resource ever has; "Not
// <DAV:no-lock>" is the customary way to write a list that always holds.
const noLockToken = "DAV:no-lock"

// ifSyntaxError is returned by ParseIf for malformed headers; the message
// is meant to be shown to the client in a 400 response.
type ifSyntaxError struct {
	// Offset is the byte offset in the header value where parsing failed.
	Offset int
	// Msg says what was expected and what was found.
	Msg string
}

func (e *ifSyntaxError) Error() string {
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
	return &ifSyntaxError{Offset: p.pos, Msg: msg}
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
// tokens the client submitted (RFC 4918 section 10.4.1). noLockToken is
// returned like any other token when it appears without Not.
func (h IfHeader) Tokens() []string {
	var out []string
	for _, l := range h.Lists {
		for _, c := range l.Conditions {
			if !c.Not && c.Token != "" && !lockstore.TokenIn(out, c.Token) {
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
// noLockToken never matches, so "Not <DAV:no-lock>" always holds. An
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
			v = !strings.EqualFold(c.Token, noLockToken) && lockstore.TokenIn(tokens, c.Token)
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
