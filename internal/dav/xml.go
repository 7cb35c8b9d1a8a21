package dav

// XML primitives shared by the LOCK body parser, the PROPFIND rewrite
// and the response writers: namespace names, name checks and escaping.

import (
	"encoding/xml"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	davNS   = "DAV:"
	xmlNS   = "http://www.w3.org/XML/1998/namespace"
	xmlnsNS = "http://www.w3.org/2000/xmlns/"
)

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

func fmtName(n xml.Name) string {
	if n.Space == "" {
		return n.Local
	}
	return "{" + n.Space + "}" + n.Local
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
