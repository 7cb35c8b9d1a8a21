package caddylock

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// Headers and parameters that change what a backend does with a request.
//
// Many frameworks let a request name another method than its own
// (Symfony and Slim 4 read X-HTTP-Method-Override, Express's
// method-override and Symfony/Laravel a "_method" query parameter,
// OData and SharePoint X-HTTP-Method, others X-Method-Override): a GET
// carrying "X-HTTP-Method-Override: PUT" is a PUT at such a backend. The
// lock such a request takes is the strongest of its own method's and the
// override's. IIS URL Rewrite, Zend and older Symfony take the path from
// X-Original-URL or X-Rewrite-URL instead of the request line: those
// headers are removed, since the lock is keyed on the request's path.
//
// PHP and CGI backends read "X_HTTP_Method_Override" as
// "X-HTTP-Method-Override" (HTTP_X_HTTP_METHOD_OVERRIDE), so header names
// are compared with "_", "." and "-" alike and without regard to case:
// Caddy drops such names by default, but a server's
// expected_underscore_headers or expected_dot_headers lets them through.

// methodOverrideHeaders are the override headers, folded as
// foldHeaderName does.
var methodOverrideHeaders = [...]string{"x-http-method-override", "x-http-method", "x-method-override"}

// pathRewriteHeaders are the headers that backends read as the request's
// path, folded as foldHeaderName does.
var pathRewriteHeaders = [...]string{"x-original-url", "x-rewrite-url"}

// methodOverrideParam is the query parameter that frameworks read as the
// method, folded as foldParamName does.
const methodOverrideParam = "_method"

// The shortest and longest of the names above: other header names are
// passed over after a length check.
const (
	minSpecialHeader = len("x-http-method")
	maxSpecialHeader = len("x-http-method-override")
)

// ambiguousError is why a request was refused as ambiguous; its title and
// detail go into the problem body.
type ambiguousError struct {
	title, detail string
}

func (e *ambiguousError) Error() string { return e.title + ": " + e.detail }

// requestKind removes the path-rewriting headers from r and returns the
// lock r takes: the stronger of its method's and that of the method an
// override names, as kindOf says. It refuses override values that are not
// methods and differing ones, which backends would read differently, and,
// in webdav mode, overrides that the WebDAV checks cannot follow (see
// davOverride).
func (h *Handler) requestKind(r *http.Request) (kind lockstore.Kind, ok bool, davMethod string, amb *ambiguousError) {
	override, err := scanSpecialHeaders(r)
	if err == nil {
		override, err = queryOverride(r.URL.RawQuery, override)
	}
	if err != nil {
		return 0, false, "", err
	}
	kind, ok = h.kindOf(r.Method)
	if h.WebDAV {
		// The method that the WebDAV checks follow: the override's where
		// davOverride accepts one, r.Method's otherwise; upper-cased, as
		// kindOf compares methods.
		davMethod = strings.ToUpper(r.Method)
		if override != "" {
			if davMethod, err = davOverride(r.Method, override); err != nil {
				return 0, false, "", err
			}
		}
	}
	if override == "" {
		return kind, ok, davMethod, nil
	}
	kind2, ok2 := h.kindOf(override)
	if !ok2 {
		return kind, ok, davMethod, nil
	}
	if !ok {
		return kind2, true, davMethod, nil
	}
	return max(kind, kind2), true, davMethod, nil
}

// tunnelMethods are the methods that clients send with an override: what
// an HTML form or a restrictive proxy lets through. Their own WebDAV
// checks are those of any method (the locks on the resource itself), so
// the override's checks cover them.
var tunnelMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost}

// davOverride returns the method whose WebDAV checks (explicit locks,
// Destination, If) cover both readings of a request with method and an
// override: the override's when method is GET, HEAD or POST; POST's where
// the override does not write (its checks cover a read). Other pairs are
// refused: a LOCK or UNLOCK override (this handler answers those, so one
// reading would not reach the backend at all), a COPY override on a POST
// (COPY's checks leave out the POST's own resource), and an override on
// any method but those three, which no client needs.
func davOverride(method, override string) (string, *ambiguousError) {
	method = strings.ToUpper(method)
	if override == method {
		return method, nil
	}
	refuse := func(why string) (string, *ambiguousError) {
		return "", &ambiguousError{
			title:  "Method override not supported",
			detail: fmt.Sprintf("a %s request with a method override to %s %s; send the %s request itself", method, override, why, override),
		}
	}
	switch {
	case override == "LOCK" || override == "UNLOCK" || method == "LOCK" || method == "UNLOCK":
		return refuse("would be answered here or at the backend depending on who reads the override")
	case !slices.Contains(tunnelMethods, method):
		return refuse("cannot be checked for WebDAV locks as both methods")
	case method == http.MethodPost && override == "COPY":
		return refuse("cannot be checked for WebDAV locks as both methods")
	case method == http.MethodPost && !slices.Contains(davWrites, override):
		return method, nil
	}
	return override, nil
}

// scanSpecialHeaders removes the path-rewriting headers from r and
// returns the method that its override headers name, upper-cased, or "".
// Header names are looked at only when their length could match.
func scanSpecialHeaders(r *http.Request) (string, *ambiguousError) {
	var override string
	for name, vals := range r.Header {
		if len(name) < minSpecialHeader || len(name) > maxSpecialHeader || name[0]|0x20 != 'x' {
			continue
		}
		if headerNameIs(name, pathRewriteHeaders[0]) || headerNameIs(name, pathRewriteHeaders[1]) {
			delete(r.Header, name) // deleting while ranging is allowed
			continue
		}
		if !slices.ContainsFunc(methodOverrideHeaders[:], func(f string) bool { return headerNameIs(name, f) }) {
			continue
		}
		for _, v := range vals {
			// Node joins repeated headers with ", " and Express's
			// method-override then reads the first element.
			for elem := range strings.SplitSeq(v, ",") {
				var err *ambiguousError
				if override, err = addOverride(override, strings.TrimSpace(elem), name); err != nil {
					return "", err
				}
			}
		}
	}
	return override, nil
}

// queryOverride adds the methods that the query's "_method" parameters
// (in every spelling a framework folds to it) name to override.
func queryOverride(raw, override string) (string, *ambiguousError) {
	if raw == "" || !mayNameMethod(raw) {
		return override, nil
	}
	for pair := range strings.SplitSeq(raw, "&") {
		for piece := range strings.SplitSeq(pair, ";") {
			name, value, _ := strings.Cut(piece, "=")
			if !paramNameMatches(name, methodOverrideParam) {
				continue
			}
			v, _ := unescapeParam(value)
			var err *ambiguousError
			if override, err = addOverride(override, strings.TrimSpace(v), "the "+methodOverrideParam+" query parameter"); err != nil {
				return "", err
			}
		}
	}
	return override, nil
}

// mayNameMethod is a cheap test that rules out most queries: one that
// names "_method" in any spelling has a "%" or "method" in any case.
func mayNameMethod(q string) bool {
	if strings.IndexByte(q, '%') >= 0 {
		return true
	}
	for i := 0; i+len("method") <= len(q); i++ {
		if q[i]|0x20 == 'm' && strings.EqualFold(q[i:i+len("method")], "method") {
			return true
		}
	}
	return false
}

// addOverride adds value, from source, to the override found so far: an
// empty value is none (as frameworks read it), a value that is not a
// method or differs from an earlier one makes the request ambiguous.
func addOverride(override, value, source string) (string, *ambiguousError) {
	if value == "" {
		return override, nil
	}
	if !validMethod(value) {
		return "", &ambiguousError{
			title:  "Invalid method override",
			detail: fmt.Sprintf("%s names %.64q, which is not an HTTP method", source, value),
		}
	}
	value = strings.ToUpper(value)
	if override != "" && override != value {
		return "", &ambiguousError{
			title:  "Conflicting method overrides",
			detail: fmt.Sprintf("%s names %.64s, where the request already names %.64s as its method (override headers and the %s query parameter); backends differ on which they read", source, value, override, methodOverrideParam),
		}
	}
	return value, nil
}
