package dav

// The XML of lock responses and precondition errors (RFC 4918 sections
// 14 and 16).

import (
	"net/url"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

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
		b = append(b, "<D:timeout>"+formatTimeout(l.Timeout, l.Infinite)+"</D:timeout>"...)
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

// supportedLockElement returns a DAV:supportedlock element announcing
// exclusive and shared write locks, for PROPFIND responses. It declares
// the D prefix itself.
func supportedLockElement() []byte {
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
	condCannotModifyProtectedProperty = "cannot-modify-protected-property"
	condPropfindFiniteDepth           = "propfind-finite-depth"
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

// MarshalLockFailure returns the DAV:multistatus document of a LOCK
// refused for locks below its request URI: a DAV:response with 423 for
// each of blocked, then one with 424 for the request URI. Hrefs are
// unescaped paths, URL-escaped here.
func MarshalLockFailure(blocked []string, requestURI string) []byte {
	b := []byte(xmlDecl + `<D:multistatus xmlns:D="DAV:">`)
	status := func(href, line string) {
		b = append(b, "<D:response><D:href>"...)
		b = appendEscaped(b, escapePath(href), false)
		b = append(b, "</D:href><D:status>"+line+"</D:status></D:response>"...)
	}
	for _, h := range blocked {
		status(h, "HTTP/1.1 423 Locked")
	}
	status(requestURI, "HTTP/1.1 424 Failed Dependency")
	return append(b, "</D:multistatus>"...)
}

// OwnerText returns a plain-text owner as content for DAV:owner (and
// ActiveLock.Owner): s escaped as XML character data.
func OwnerText(s string) []byte {
	return appendEscaped(nil, s, false)
}
