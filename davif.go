package caddylock

// The If header (RFC 4918 section 10.4) and the lock tokens a request
// must submit: which locks a request touches, which of their tokens it
// lacks, and the If header stripped before the request goes on.

import (
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"
)

// maxIfResources bounds the resources one If header may name: each may
// cost a HEAD request to the backend.
const maxIfResources = 32

// checkIf evaluates the If header; it reports false after answering 412
// (or 502 when the backend could not be asked for an ETag).
func (d *davRequest) checkIf() (bool, error) {
	if len(d.ifh.Lists) == 0 {
		return true, nil
	}
	hasETag := false
	for _, l := range d.ifh.Lists {
		for _, c := range l.Conditions {
			hasETag = hasETag || c.ETag != ""
		}
	}
	// The first failure ends the evaluation; it is answered once.
	var storeErr, headErr error
	resources := 0
	// An untagged list names the request's own resource: its key is the
	// request's, and its HEAD goes out for the path the client sent,
	// which the route rewrites again as it did the request.
	resolve := func(tag string) (string, bool) {
		if tag == "" {
			return ownResource, true
		}
		return d.resolveTag(tag)
	}
	holds := d.ifh.Eval(resolve, func(p string) ([]string, string) {
		if storeErr != nil || headErr != nil {
			return nil, ""
		}
		if resources++; resources > maxIfResources {
			return nil, ""
		}
		key, sp, raw := d.key, "", ""
		if p == ownResource {
			sp, raw = d.ownPath()
		} else {
			key, sp = d.h.keyOfPath(p), p
		}
		tokens, err := d.stateTokens(key)
		if err != nil {
			storeErr = err
			return nil, ""
		}
		etag := ""
		if hasETag {
			// Through the whole server, as the client's own HEAD of sp
			// would go: a path that the route hides or refuses this
			// client answers with no ETag, so the condition does not
			// hold, and the answer tells nothing of the resource.
			status, hdr, err := d.sub(http.MethodHead, sp, raw, nil)
			if err != nil {
				headErr = fmt.Errorf("checking the ETag of %s: %w", sp, err)
				return nil, ""
			}
			if status >= 200 && status < 300 {
				etag = hdr.Get("ETag")
			}
		}
		return tokens, etag
	})
	switch {
	case resources > maxIfResources:
		return false, d.plain(http.StatusBadRequest, fmt.Sprintf("the If header names more than %d resources", maxIfResources))
	case storeErr != nil:
		return false, d.storeFailed(storeErr)
	case headErr != nil:
		return false, d.plain(http.StatusBadGateway, headErr.Error())
	}
	if !holds {
		return false, d.plain(http.StatusPreconditionFailed, "the If header does not hold: "+d.ifh.String())
	}
	return true, nil
}

// sameHost reports whether the absolute URI u names the host the client
// sent the request to, ignoring case and the scheme's default port.
func sameHost(u *url.URL, requestHost string) bool {
	strip := func(h string) string {
		h = strings.ToLower(h)
		switch {
		case u.Scheme == "http" && strings.HasSuffix(h, ":80"):
			return strings.TrimSuffix(h, ":80")
		case u.Scheme == "https" && strings.HasSuffix(h, ":443"):
			return strings.TrimSuffix(h, ":443")
		}
		return h
	}
	return strip(u.Host) == strip(requestHost)
}

// resolveTag maps an If header resource tag to the path it names: the
// request path for untagged lists; tags must name this host.
func (d *davRequest) resolveTag(tag string) (string, bool) {
	if tag == "" {
		return d.r.URL.Path, true
	}
	u, err := url.Parse(tag)
	if err != nil || (u.Host != "" && !sameHost(u, d.r.Host)) {
		return "", false
	}
	// A tag that backends read as different resources names none.
	p, err := d.h.headerPath(tag, u)
	return p, err == nil
}

// stateTokens are the lock tokens a resource has for If evaluation: its
// locks, and the depth-0 locks of its collection, which guard the
// collection's member list.
func (d *davRequest) stateTokens(key string) ([]string, error) {
	ls, err := d.locksFor(key, false, true)
	if err != nil {
		return nil, err
	}
	tokens := make([]string, len(ls))
	for i, l := range ls {
		tokens[i] = l.Token
	}
	return tokens, nil
}

// locksFor returns the explicit locks that a change of key touches:
// those whose scope includes key, with below those rooted under it, and
// with member the depth-0 locks of key's collection, whose member list
// the change alters (creating, deleting or moving key).
func (d *davRequest) locksFor(key string, below, member bool) ([]lockstore.ExplicitLock, error) {
	ls, err := d.store().Affecting(d.ctx(), key, below)
	if err != nil || !member || key == "/" {
		return ls, err
	}
	parent := path.Dir(key)
	pl, err := d.store().Affecting(d.ctx(), parent, false)
	if err != nil {
		return nil, err
	}
	for _, l := range pl {
		if l.Root == parent && l.Depth == lockstore.DepthZero {
			ls = append(ls, l)
		}
	}
	return ls, nil
}

// touched returns the explicit locks a write needs the tokens of (RFC
// 4918 sections 7.4, 9.6.1, 9.8.5, 9.9.4).
func (d *davRequest) touched(destKey string) ([]lockstore.ExplicitLock, error) {
	switch d.method {
	case http.MethodDelete:
		return d.locksFor(d.key, true, true)
	case "MKCOL":
		return d.locksFor(d.key, false, true)
	case "COPY":
		return d.locksFor(destKey, true, true)
	case "MOVE":
		src, err := d.locksFor(d.key, true, true)
		if err != nil {
			return nil, err
		}
		dst, err := d.locksFor(destKey, true, true)
		return append(src, dst...), err
	case http.MethodPut:
		// A PUT alters the member list only when it creates the
		// resource; ask the backend only when that matters.
		ls, err := d.locksFor(d.key, false, true)
		if err != nil {
			return nil, err
		}
		collectionLock := func(l lockstore.ExplicitLock) bool { return !l.Covers(d.key) }
		if slices.ContainsFunc(ls, collectionLock) {
			// An existing resource keeps the member list as it is. Only
			// an answer that says it exists lets the collection's lock
			// go; any other (401, 405, 5xx, an error) keeps it needed.
			if e, _, _, err := d.exists(); err == nil && e == resourceExists {
				ls = slices.DeleteFunc(ls, collectionLock)
			}
		}
		return ls, nil
	}
	return d.locksFor(d.key, false, false)
}

// missing returns the locks of ls (without repeats) that the request
// does not hold: it holds a lock when it submitted the token and the
// lock's creator is the request's user. Shared locks on one root are
// held together: the token of any of them lets its holder write, except
// under a maintenance lock (the admin API's, shared or not), which nobody
// holds: a client's own shared lock beside it must not open it.
func (d *davRequest) missing(ls []lockstore.ExplicitLock) []lockstore.ExplicitLock {
	submitted := d.ifh.Tokens()
	holds := func(l lockstore.ExplicitLock) bool { return tokenIn(submitted, l.Token) && d.mayUse(l) }
	var out []lockstore.ExplicitLock
	for _, l := range ls {
		if holds(l) || slices.ContainsFunc(out, func(o lockstore.ExplicitLock) bool { return sameToken(o.Token, l.Token) }) {
			continue
		}
		if l.Scope == lockstore.Shared && l.Creator != lockstore.AdminCreator && slices.ContainsFunc(ls, func(o lockstore.ExplicitLock) bool {
			return o.Scope == lockstore.Shared && o.Root == l.Root && holds(o)
		}) {
			continue
		}
		out = append(out, l)
	}
	return out
}

// mayUse reports whether the request's user may use the lock's token.
func (d *davRequest) mayUse(l lockstore.ExplicitLock) bool {
	return l.Creator == "" || l.Creator == d.user
}

// stripIf removes the If header, which a backend without locks would
// fail on tokens it never issued, and keeps its entity-tag conditions as
// If-Match where one list on the request URI allows it.
func (d *davRequest) stripIf() {
	if len(d.ifh.Lists) == 0 {
		return
	}
	d.r.Header.Del("If")
	if len(d.ifh.Lists) != 1 || d.r.Header.Get("If-Match") != "" {
		return
	}
	l := d.ifh.Lists[0]
	if p, ok := d.resolveTag(l.Tag); !ok || d.h.keyOfPath(p) != d.key {
		return
	}
	l.Tag = ""
	if v, ok := (dav.IfHeader{Lists: []dav.IfList{l}}).IfMatch(); ok {
		d.r.Header.Set("If-Match", v)
	}
}
