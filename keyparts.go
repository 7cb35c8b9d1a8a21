package caddylock

import (
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// Key parts that a request can give more than once.
//
// Caddy fills {http.request.header.N} with every value of the header
// joined by ",", {http.request.uri.query.N} with every value of the query
// parameter joined by ",", and {http.request.cookie.N} with the first
// cookie whose name matches N without regard to case. A backend reads the
// same request otherwise: Go's Header.Get and Query().Get take the first
// value, PHP the last query value, Node and PHP join repeated headers with
// ", ", PHP decodes cookie names and values and folds "." and " " in
// parameter names to "_", ASP.NET Core matches query names without regard
// to case. A key part that the request gives more than once, under any of
// these spellings, or gives once in a spelling Caddy does not read, can
// therefore name one resource for the lock and another at the backend: such
// a request is refused as ambiguous.

// keyPartSource is where a key placeholder takes its value from.
type keyPartSource uint8

const (
	fromHeader keyPartSource = iota + 1
	fromQuery
	fromCookie
)

// keyPart is one placeholder of the key template whose value the request
// can give more than once.
type keyPart struct {
	source keyPartSource
	name   string // as Caddy reads it: the canonical header key, the exact query or cookie name
	folded string // the spelling every reader folds it to
	ph     string // the placeholder, for the problem body
}

// keyParts are the key template's parts to check per request; nil when the
// template has none, which costs a request nothing.
type keyParts []keyPart

// Placeholder prefixes whose values a request can repeat (Caddy's
// caddyhttp/replacer.go).
const (
	phHeader = "http.request.header."
	phQuery  = "http.request.uri.query."
	phCookie = "http.request.cookie."
)

// parseKeyParts finds the placeholders of template whose value the request
// can give more than once. It scans as Caddy's replacer does: "\{" and
// "\}" are literal braces, and a placeholder ends at the first "}" that is
// not escaped.
func parseKeyParts(template string) keyParts {
	var parts keyParts
	for i := 0; i < len(template); i++ {
		if template[i] != '{' || i > 0 && template[i-1] == '\\' {
			continue
		}
		end := strings.IndexByte(template[i:], '}')
		if end < 0 {
			break
		}
		end += i
		for end < len(template)-1 && template[end-1] == '\\' {
			next := strings.IndexByte(template[end+1:], '}')
			if next < 0 {
				return parts
			}
			end += next + 1
		}
		ph := template[i+1 : end]
		i = end
		var p keyPart
		switch {
		case strings.HasPrefix(ph, phHeader):
			n := ph[len(phHeader):]
			p = keyPart{source: fromHeader, name: textproto.CanonicalMIMEHeaderKey(n), folded: foldHeaderName(n)}
		case strings.HasPrefix(ph, phQuery):
			n := ph[len(phQuery):]
			p = keyPart{source: fromQuery, name: n, folded: foldParamName(n, false)}
		case strings.HasPrefix(ph, phCookie):
			n := ph[len(phCookie):]
			p = keyPart{source: fromCookie, name: n, folded: foldParamName(n, false)}
		default:
			continue
		}
		p.ph = "{" + ph + "}"
		parts = append(parts, p)
	}
	return parts
}

// check returns an error naming the first key part that r gives more than
// once or in a spelling that Caddy does not read; nil when every part is
// given at most once, as Caddy reads it.
func (ps keyParts) check(r *http.Request) *ambiguousError {
	for i := range ps {
		if err := ps[i].check(r); err != nil {
			return err
		}
	}
	return nil
}

func (p *keyPart) check(r *http.Request) *ambiguousError {
	var n int
	var clean bool // the one occurrence is read by Caddy as every reader reads it
	switch p.source {
	case fromHeader:
		n, clean = p.headerOccurrences(r.Header)
	case fromQuery:
		n, clean = p.queryOccurrences(r.URL.RawQuery)
	case fromCookie:
		n, clean = p.cookieOccurrences(r)
	}
	switch {
	case n > 1:
		return &ambiguousError{
			title:  "Lock key part given more than once",
			detail: fmt.Sprintf("the lock key takes %s, which this request gives %d times (counting the spellings that backends read as one); backends differ on which one they read", p.ph, n),
		}
	case n == 1 && !clean:
		return &ambiguousError{
			title:  "Lock key part spelled ambiguously",
			detail: fmt.Sprintf("the lock key takes %s, which this request gives in a spelling that backends read differently (another case, encoding or separator)", p.ph),
		}
	}
	return nil
}

// headerOccurrences counts the values of the header under every name that
// folds to the part's (PHP and CGI read "X_Doc_Id" and "X.Doc.Id" as
// "X-Doc-Id"); clean
// tells that there is one, under the name Caddy reads.
func (p *keyPart) headerOccurrences(h http.Header) (n int, clean bool) {
	if vals, ok := h[p.name]; ok {
		n = len(vals)
		clean = n == 1
	}
	for name, vals := range h {
		if name != p.name && len(name) == len(p.folded) && headerNameIs(name, p.folded) {
			n += len(vals)
			clean = false
		}
	}
	return n, clean
}

// queryOccurrences counts the query parameters whose name folds to the
// part's, splitting on "&" and ";" (Rack 2 and older Python split on
// both); clean tells that there is one, in a pair that Go's ParseQuery
// reads under the part's exact name.
func (p *keyPart) queryOccurrences(raw string) (n int, clean bool) {
	if raw == "" {
		return 0, false
	}
	for pair := range strings.SplitSeq(raw, "&") {
		semi := strings.IndexByte(pair, ';') >= 0
		for piece := range strings.SplitSeq(pair, ";") {
			name, value, _ := strings.Cut(piece, "=")
			if !paramNameMatches(name, p.folded) {
				continue
			}
			n++
			if n > 1 {
				return n, false
			}
			// Go drops a pair with ";" and one it cannot unescape;
			// PHP keeps both.
			gn, err1 := url.QueryUnescape(name)
			_, err2 := url.QueryUnescape(value)
			clean = !semi && err1 == nil && err2 == nil && gn == p.name
		}
	}
	return n, clean
}

// cookieOccurrences counts the cookies whose name folds to the part's,
// splitting on ";" and "," (older parsers split on both); clean tells that
// there is one, which Caddy reads with the value that PHP decodes.
func (p *keyPart) cookieOccurrences(r *http.Request) (n int, clean bool) {
	var raw string
	for _, line := range r.Header["Cookie"] {
		for piece := range strings.FieldsFuncSeq(line, func(c rune) bool { return c == ';' || c == ',' }) {
			name, value, _ := strings.Cut(strings.TrimSpace(piece), "=")
			if !paramNameMatches(strings.TrimSpace(name), p.folded) {
				continue
			}
			n++
			if n > 1 {
				return n, false
			}
			raw = strings.TrimSpace(value)
		}
	}
	if n == 0 {
		return 0, false
	}
	// Caddy's reading: the first cookie whose name matches without
	// regard to case, its value unquoted, never decoded.
	for _, c := range r.Cookies() {
		if strings.EqualFold(c.Name, p.name) {
			_, decoded := unescapeParam(raw)
			return 1, c.Value == raw && !decoded
		}
	}
	return 1, false
}

// foldHeaderName is a header name as CGI and PHP read it, lower-cased
// with "-" for "_" and "." (HTTP_X_DOC_ID). Caddy drops header names with
// "_" or "." unless the server's expected_underscore_headers or
// expected_dot_headers let them through; with those, two spellings can
// reach the handler.
func foldHeaderName(n string) string {
	return strings.ToLower(strings.NewReplacer("_", "-", ".", "-").Replace(n))
}

// headerNameIs reports whether header name folds to folded (as from
// foldHeaderName), without allocating.
func headerNameIs(name, folded string) bool {
	if len(name) != len(folded) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		} else if c == '_' || c == '.' {
			c = '-'
		}
		if c != folded[i] {
			return false
		}
	}
	return true
}

// foldParamName is a query parameter's or cookie's name as the backends
// named in the package docs read it, all at once: percent-decoded
// (leniently, "+" as a space), cut at a NUL (PHP's names are C strings),
// without leading spaces, cut at "[" (PHP's and qs's arrays: "id[]" is
// "id") or, with unclosedBracket, "[" read as "_" (PHP's reading of a "["
// never closed), "." and " " read as "_", lower-cased (ASP.NET Core).
func foldParamName(raw string, unclosedBracket bool) string {
	n, _ := unescapeParam(raw)
	if i := strings.IndexByte(n, 0); i >= 0 {
		n = n[:i]
	}
	n = strings.TrimLeft(n, " ")
	if i := strings.IndexByte(n, '['); i >= 0 {
		if unclosedBracket {
			n = n[:i] + "_" + n[i+1:]
		} else {
			n = n[:i]
		}
	}
	n = strings.Map(func(c rune) rune {
		if c == '.' || c == ' ' {
			return '_'
		}
		return c
	}, n)
	return strings.ToLower(n)
}

// paramNameMatches reports whether a raw query or cookie name folds to
// folded, in either reading of a "[". Names that need no decoding are
// compared without allocating.
func paramNameMatches(raw, folded string) bool {
	// Folding never makes a name longer.
	if len(raw) < len(folded) {
		return false
	}
	if isPlainName(raw) {
		if len(raw) != len(folded) {
			return false
		}
		for i := 0; i < len(raw); i++ {
			c := raw[i]
			switch {
			case 'A' <= c && c <= 'Z':
				c += 'a' - 'A'
			case c == '.' || c == ' ':
				c = '_'
			}
			if c != folded[i] {
				return false
			}
		}
		return true
	}
	if foldParamName(raw, false) == folded {
		return true
	}
	return strings.IndexByte(raw, '[') >= 0 && foldParamName(raw, true) == folded
}

// isPlainName reports whether foldParamName would only map bytes one to
// one in raw: ASCII, nothing to decode, cut or trim.
func isPlainName(raw string) bool {
	if raw != "" && raw[0] == ' ' {
		return false
	}
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c >= 0x80, c == '%', c == '+', c == '[', c == 0:
			return false
		}
	}
	return true
}

// unescapeParam decodes a query component as PHP's urldecode does:
// valid %XX escapes and "+" as a space, invalid escapes kept; changed
// tells whether anything was decoded.
func unescapeParam(s string) (string, bool) {
	if strings.IndexByte(s, '+') >= 0 {
		s = strings.ReplaceAll(s, "+", " ")
		d, _ := unescapeLenient(s, false)
		return d, true
	}
	return unescapeLenient(s, false)
}
