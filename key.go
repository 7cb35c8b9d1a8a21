package caddylock

import (
	"fmt"
	"net/url"
	"path"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// A lock protects the resource the backend writes only if the key and the
// backend agree on which resource a request names. Backends read one
// request target in several ways (how many times they decode escapes,
// whether `\` and `;` separate, whether `//` merges, and all before or
// after they resolve dot segments), and a resolved `..` can hide a
// separator that a later decoding reveals. pathKey therefore computes
// every reading it knows of (see docs/path-readings.md), maps each
// through canonicalPath, which merges every spelling that some backend
// may treat as one resource, and takes the key only when all readings
// agree: two requests that a backend reads as one resource then get one
// key. Where they differ, the request is refused: a refused strange
// spelling costs a retry, a missed one a corrupted write.

// maxDecodeRounds bounds the layers of percent-encoding a path may have:
// a path that still changes after that many rounds of decoding is refused,
// which also bounds the readings computed.
const maxDecodeRounds = 3

// pathError refuses a path with 400; result is its {http.lock.result}.
type pathError struct {
	result string
	msg    string
}

func (e *pathError) Error() string { return e.msg }

func ambiguous(a, b string) error {
	return &pathError{resultAmbiguous, fmt.Sprintf("ambiguous path: read as %.200q by one server and %.200q by another", a, b)}
}

func badPath(format string, args ...any) error {
	return &pathError{resultBadKey, fmt.Sprintf(format, args...)}
}

// lockKey is the lock key of k, a request's path (or its key template's
// value) or a path given to the admin API: normalised when it is a path
// (see pathKey), case-folded for case_insensitive, and refused with a
// *pathError, or returned with errNULKey when it holds a NUL byte.
func lockKey(k string, caseInsensitive bool) (string, error) {
	if strings.HasPrefix(k, "/") {
		var err error
		if k, err = pathKey(k); err != nil {
			return "", err
		}
	}
	if caseInsensitive {
		k = foldCase(k)
	}
	return k, nulFree(k)
}

// nulFree refuses a key or path with a NUL byte (see errNULKey).
func nulFree(k string) error {
	if strings.IndexByte(k, 0) >= 0 {
		return errNULKey
	}
	return nil
}

// pathKey is the lock key of a request target's path as sent to the
// backend (still percent-encoded), or a *pathError.
func pathKey(raw string) (string, error) {
	if isCleanPath(raw) {
		return raw, nil // the common case, without allocating
	}
	return readingsKey(raw)
}

// readingsKey is the key that every reading of every raw spelling maps
// to, or a *pathError when they differ or one cannot be read.
func readingsKey(raws ...string) (string, error) {
	var key, keyOf string
	found := false
	for _, raw := range raws {
		rs, err := readings(raw)
		if err != nil {
			return "", err
		}
		for _, r := range rs {
			k, err := canonicalPath(r)
			if err != nil {
				return "", err
			}
			if !found {
				key, keyOf, found = k, r, true
			} else if k != key {
				return "", ambiguous(keyOf, r)
			}
		}
	}
	return key, nil
}

// readings returns the paths (decoded as far as each reading decodes,
// with dot segments resolved) that backends may make of raw, without
// repeats. For each depth k of decoding, from none to all: every escape
// decoded k times, or all but %2F and %5C (Apache's AllowEncodedSlashes
// NoDecode), or ;parameters dropped before decoding (servlet containers);
// each then with `\` as a separator or not (IIS), ;parameters dropped or
// not, and dot segments resolved with `//` merged (nginx, Go's
// path.Clean) or kept (Apache's getparents).
func readings(raw string) ([]string, error) {
	if raw == "" || raw[0] != '/' {
		raw = "/" + raw
	}
	full, err := decodings(raw, false)
	if err != nil {
		return nil, err
	}
	bases := full
	if strings.Contains(raw, "%2") || strings.Contains(raw, "%5") {
		// Only then can %2F or %5C appear at some depth.
		keep, err := decodings(raw, true)
		if err != nil {
			return nil, err
		}
		bases = append(bases, keep...)
	}
	if strings.IndexByte(raw, ';') >= 0 {
		semi, err := decodings(dropParams(raw), false)
		if err != nil {
			return nil, err
		}
		bases = append(bases, semi...)
	}
	var out []string
	add := func(s string) {
		for _, o := range out {
			if o == s {
				return
			}
		}
		out = append(out, s)
	}
	for _, b := range bases {
		variants := []string{b}
		if strings.IndexByte(b, '\\') >= 0 {
			variants = append(variants, strings.ReplaceAll(b, `\`, "/"))
		}
		for _, v := range variants {
			forms := []string{v}
			if strings.IndexByte(v, ';') >= 0 {
				forms = append(forms, dropParams(v))
			}
			for _, f := range forms {
				add(path.Clean(f))
				if strings.Contains(f, "//") {
					add(resolveKeepEmpty(f))
				}
			}
		}
	}
	return out, nil
}

// decodings returns raw decoded 0, 1, ... times until decoding changes
// nothing; with keepSlash, %2F and %5C are left encoded.
func decodings(raw string, keepSlash bool) ([]string, error) {
	out := []string{raw}
	for {
		d, changed := unescapeLenient(out[len(out)-1], keepSlash)
		if !changed {
			return out, nil
		}
		if len(out) > maxDecodeRounds {
			return nil, badPath("the path is percent-encoded more than %d times over", maxDecodeRounds)
		}
		out = append(out, d)
	}
}

// dropParams drops the ;parameters of every segment of p.
func dropParams(p string) string {
	if strings.IndexByte(p, ';') < 0 {
		return p
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if j := strings.IndexByte(s, ';'); j >= 0 {
			segs[i] = s[:j]
		}
	}
	return strings.Join(segs, "/")
}

// resolveKeepEmpty resolves the dot segments of p, which starts with
// "/", without merging empty segments first: "/a//../b" is "/a/b", as
// Apache resolves it before the file system merges the slashes.
func resolveKeepEmpty(p string) string {
	segs := strings.Split(p, "/")[1:]
	out := make([]string, 0, len(segs))
	for _, s := range segs {
		switch s {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

// canonicalPath maps every spelling of a path that some backend may read
// as one resource to one key: escapes decoded (%2F too) until none is
// left, NFC (Nextcloud, macOS file systems), `\` as a separator (IIS),
// ;parameters dropped from every segment (servlet containers), dot
// segments, repeated slashes and a trailing slash cleaned away, and the
// Windows folds of every segment: trailing dots and spaces, and an
// alternate data stream (from the first ':'). It only merges: a false
// conflict is a retry, a missed one is a corrupted write. It refuses
// bytes that are not UTF-8 (http.sys reads them in the ANSI code page)
// and a segment that folds into "", "." or "..".
func canonicalPath(p string) (string, error) {
	if isCleanPath(p) {
		return p, nil
	}
	ds, err := decodings(p, false)
	if err != nil {
		return "", err
	}
	p = ds[len(ds)-1]
	if !utf8.ValidString(p) {
		return "", badPath("the path is not UTF-8 once decoded, which servers read in different character sets")
	}
	// Before the separators: NFC makes ';' of U+037E.
	p = norm.NFC.String(p)
	p = strings.ReplaceAll(p, `\`, "/")
	p = path.Clean("/" + dropParams(p))
	if p == "/" {
		return p, nil
	}
	segs := strings.Split(p[1:], "/")
	changed := false
	for i, s := range segs {
		f := s
		if j := strings.IndexByte(f, ':'); j >= 0 {
			f = f[:j]
		}
		f = strings.TrimRight(f, ". ")
		if f == s {
			continue
		}
		if f == "" || f == "." || f == ".." {
			return "", badPath("the path segment %.100q is a dot segment or empty on Windows", s)
		}
		segs[i], changed = f, true
	}
	if changed {
		p = "/" + strings.Join(segs, "/")
	}
	return p, nil
}

// isCleanPath reports whether p is its own key: no escapes, separators
// or parameters to read, no dot or empty segment, nothing that Windows
// folds and nothing but ASCII.
func isCleanPath(p string) bool {
	if len(p) == 0 || p[0] != '/' {
		return false
	}
	if len(p) == 1 {
		return true
	}
	for i := 1; i < len(p); i++ {
		switch c := p[i]; {
		case c == '%', c == ';', c == '\\', c == ':', c >= utf8.RuneSelf:
			return false
		case c == '/':
			// No empty segment, and none that ends in '.' or ' ' (which
			// covers "." and "..").
			if p[i-1] == '/' || p[i-1] == '.' || p[i-1] == ' ' {
				return false
			}
		}
	}
	c := p[len(p)-1]
	return c != '/' && c != '.' && c != ' '
}

// destinationKey is the key of a Destination header value or an If tag:
// the readings of the path that Go's url.Parse finds in it (which drops
// a #fragment and a ?query and reads //host/path as a host) and of the
// path nginx's dav module finds (after scheme://authority when the value
// starts with a scheme, everything else) must agree. goPath is the path
// url.Parse reads, the one the request names where both agree.
func destinationKey(v string, u *url.URL) (key string, err error) {
	goRaw := u.EscapedPath()
	if goRaw == "" {
		goRaw = "/"
	}
	return readingsKey(goRaw, rawPathOf(v))
}

// rawPathOf is the path nginx's dav module reads in a Destination value:
// a value that starts with scheme:// loses that and its authority, and
// the rest, fragment and query included, is the path.
func rawPathOf(v string) string {
	i := 0
	for i < len(v) && ('a' <= v[i] && v[i] <= 'z' || 'A' <= v[i] && v[i] <= 'Z' || i > 0 && ('0' <= v[i] && v[i] <= '9' || v[i] == '+' || v[i] == '-' || v[i] == '.')) {
		i++
	}
	if i > 0 && strings.HasPrefix(v[i:], "://") {
		rest := v[i+3:]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			return rest[j:]
		}
		return "/"
	}
	return v
}

// unescapeLenient decodes every valid %XX escape (but %2F and %5C with
// keepSlash) and keeps invalid ones as they are, unlike url.PathUnescape,
// which rejects the whole string: a single stray % must not keep %2F
// elsewhere in the path from decoding.
func unescapeLenient(s string, keepSlash bool) (string, bool) {
	if strings.IndexByte(s, '%') < 0 {
		return s, false
	}
	var b strings.Builder
	b.Grow(len(s))
	changed := false
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && ishex(s[i+1]) && ishex(s[i+2]) {
			c := unhex(s[i+1])<<4 | unhex(s[i+2])
			if !keepSlash || c != '/' && c != '\\' {
				b.WriteByte(c)
				i += 2
				changed = true
				continue
			}
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
