package dav

// Character classes and the URI check shared by the header parsers.

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

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
