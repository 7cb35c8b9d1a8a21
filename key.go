package caddylock

import (
	"path"
	"strings"
)

// normalizePath maps every spelling of a path to one key, so that no
// spelling slips past a lock held under another: percent-escapes are
// decoded (including %2F, and until none is left, for backends that decode
// more than once),
// backslashes count as slashes (as on IIS), ;parameters are dropped from
// every segment (as servlet containers do), and dot segments, repeated
// slashes and a trailing slash are cleaned away. Where in doubt it maps two
// spellings to one key: a false conflict is a retry, a missed one is a
// corrupted write.
func normalizePath(p string) string {
	if isCleanPath(p) {
		return p // the common case, without allocating
	}
	for {
		// Each round that changes p shortens it, so this ends.
		d, changed := unescapeLenient(p)
		if !changed {
			break
		}
		p = d
	}
	p = strings.ReplaceAll(p, `\`, "/")
	if strings.IndexByte(p, ';') >= 0 {
		segs := strings.Split(p, "/")
		for i, s := range segs {
			if j := strings.IndexByte(s, ';'); j >= 0 {
				segs[i] = s[:j]
			}
		}
		p = strings.Join(segs, "/")
	}
	return path.Clean("/" + p)
}

// isCleanPath reports whether normalizePath would return p unchanged.
func isCleanPath(p string) bool {
	if len(p) == 0 || p[0] != '/' {
		return false
	}
	if len(p) > 1 && p[len(p)-1] == '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%', ';', '\\':
			return false
		case '/':
			if i+1 < len(p) && p[i+1] == '/' {
				return false
			}
		case '.':
			// A segment of "." or "..".
			if p[i-1] == '/' {
				rest := p[i+1:]
				if rest == "" || rest[0] == '/' || rest == "." || strings.HasPrefix(rest, "./") {
					return false
				}
			}
		}
	}
	return true
}

// unescapeLenient decodes every valid %XX escape and keeps invalid ones as
// they are, unlike url.PathUnescape, which rejects the whole string: a
// single stray % must not keep %2F elsewhere in the path from decoding.
func unescapeLenient(s string) (string, bool) {
	if strings.IndexByte(s, '%') < 0 {
		return s, false
	}
	var b strings.Builder
	b.Grow(len(s))
	changed := false
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && ishex(s[i+1]) && ishex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			changed = true
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String(), changed
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
