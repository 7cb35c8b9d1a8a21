package caddylock

// LOCK, its refresh, and UNLOCK: the lock's timeout, its creation (with
// the PUT that makes an unmapped resource), and the lockdiscovery answers.

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// timeout reads the Timeout header; "Second-0" gets the shortest lock
// there is, one second.
func (d *davRequest) timeout() (time.Duration, error) {
	t, err := dav.ParseTimeout(d.r.Header.Get("Timeout"), time.Duration(d.h.DefaultTimeout), time.Duration(d.h.MaxTimeout))
	return max(t, time.Second), err
}

// lock answers LOCK: a new lock, or a refresh when there is no body.
func (d *davRequest) lock() error {
	info, err := dav.ParseLockInfo(d.r.Body, d.h.MaxLockBody)
	switch {
	case errors.Is(err, dav.ErrNoBody):
		return d.refresh()
	case errors.Is(err, dav.ErrBodyTooLarge):
		return d.plain(http.StatusRequestEntityTooLarge, err.Error())
	case err != nil:
		return d.plain(http.StatusBadRequest, err.Error())
	}
	depth, err := dav.ParseLockDepth(d.r.Header.Get("Depth"))
	if err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	timeout, err := d.timeout()
	if err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	if err := d.hold([]lockstore.Request{{Key: d.key, Kind: lockstore.Exclusive}}); err != nil {
		return d.refuseInflight(err)
	}
	if ok, err := d.checkIf(); !ok {
		return err
	}
	// A LOCK on an unmapped URL creates the resource, and needs the
	// collection's lock to (see create); on a resource whose existence
	// the server does not tell, neither creating it (the empty PUT could
	// overwrite it: x/net/webdav, for one, ignores If-None-Match) nor
	// locking it uncreated (a new member would pass the collection's
	// lock) is safe: the LOCK is refused.
	e, status, hdr, err := d.exists()
	if err != nil {
		return d.plain(http.StatusBadGateway, "checking whether "+d.href()+" exists: "+err.Error())
	}
	if e == resourceUnknown {
		return d.subFailed(status, hdr, fmt.Sprintf("cannot tell whether %s exists: neither HEAD nor PROPFIND gave a clear answer (the last was %d)", d.href(), status))
	}
	exists := e == resourceExists
	l, err := d.store().Create(d.ctx(), lockstore.ExplicitLock{
		Token:   dav.NewLockToken(),
		Root:    d.key,
		Href:    d.href(),
		Scope:   info.Scope,
		Depth:   depth,
		Owner:   info.Owner,
		Creator: d.user,
		Timeout: timeout,
	})
	var conflict *lockstore.LockConflictError
	switch {
	case errors.As(err, &conflict) && len(conflict.Conflicts) == 0:
		// The locks in the way ended while the store read them (Redis:
		// a lock's hash expired before its index entry was purged): a
		// conflict with nothing to name, which a retry will likely pass.
		return d.refuseExplicit(nil, dav.CondNoConflictingLock)
	case errors.As(err, &conflict) && allBelow(conflict.Conflicts, d.key):
		return d.refuseBelow(conflict.Conflicts)
	case errors.As(err, &conflict):
		return d.refuseExplicit(conflict.Conflicts, dav.CondNoConflictingLock)
	case err != nil:
		return d.storeFailed(err)
	}
	created := false
	if !exists {
		var refused bool
		if created, refused, err = d.create(l); refused {
			if _, rerr := d.store().Remove(d.ctx(), l.Token); rerr != nil && !errors.Is(rerr, lockstore.ErrNoSuchLock) {
				d.h.logger.Error("removing a lock whose resource was not created", zap.String("token", tokenPrefix(l.Token)), zap.Error(rerr))
			}
			return err
		}
	}
	d.h.logger.Debug("locked", zap.String("key", d.key), zap.String("scope", l.Scope.String()),
		zap.String("depth", l.Depth.String()), zap.String("token", tokenPrefix(l.Token)), zap.Bool("created", created))
	d.settle(d.result)
	d.w.Header().Set("Lock-Token", "<"+l.Token+">")
	status = http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return d.writeXML(status, dav.MarshalLockDiscovery(d.active(l, true)))
}

// create makes the empty resource of a LOCK on an unmapped URL with an
// empty PUT through the next handler. It reports whether it created the
// resource, and refused when it answered the request instead (the lock
// must then go). A resource that appeared meanwhile is neither: the lock
// stands.
func (d *davRequest) create(l lockstore.ExplicitLock) (created, refused bool, err error) {
	ls, err := d.locksFor(d.key, false, true)
	if err != nil {
		return false, true, d.storeFailed(err)
	}
	ls = slices.DeleteFunc(ls, func(o lockstore.ExplicitLock) bool { return sameToken(o.Token, l.Token) })
	if missing := d.missing(ls); len(missing) > 0 {
		return false, true, d.refuseExplicit(missing, dav.CondLockTokenSubmitted)
	}
	// Through the whole server, as the client's own PUT would go: it
	// meets the route's matchers and auth for PUT, which may ask more
	// than those for LOCK.
	p, raw := d.ownPath()
	status, hdr, err := d.sub(http.MethodPut, p, raw, http.Header{"If-None-Match": {"*"}})
	switch {
	case err != nil:
		return false, true, d.plain(http.StatusBadGateway, "creating "+d.href()+": "+err.Error())
	case status >= 200 && status < 300:
		return true, false, nil
	case status == http.StatusPreconditionFailed:
		return false, false, nil
	case status == http.StatusNotFound || status == http.StatusConflict:
		return false, true, d.plain(http.StatusConflict, "the collection of "+d.href()+" does not exist")
	}
	return false, true, d.relay(status, hdr, fmt.Sprintf("the server answered %d to the PUT that creates %s", status, d.href()))
}

// Existence of a resource, as the server's answers tell it.
const (
	resourceUnknown = iota
	resourceExists
	resourceMissing
)

// existenceOf reads a status: only a clear answer tells. 2xx (and 304)
// say that the resource exists, 404 and 410 that it does not; 401, 403,
// 405, a redirect or a 5xx say nothing of it.
func existenceOf(status int) int {
	switch {
	case status >= 200 && status < 300, status == http.StatusNotModified:
		return resourceExists
	case status == http.StatusNotFound, status == http.StatusGone:
		return resourceMissing
	}
	return resourceUnknown
}

// exists asks the server whether the request's own resource exists:
// with HEAD, then, when that gives no clear answer, with PROPFIND of
// Depth 0, which every WebDAV server answers for a collection too
// (x/net/webdav answers HEAD on a collection with 405). It returns the
// last answer's status and headers.
func (d *davRequest) exists() (e, status int, hdr http.Header, err error) {
	p, raw := d.ownPath()
	for _, q := range []struct {
		method string
		header http.Header
	}{{http.MethodHead, nil}, {"PROPFIND", http.Header{"Depth": {"0"}}}} {
		status, hdr, err = d.sub(q.method, p, raw, q.header)
		if err != nil {
			return resourceUnknown, 0, nil, fmt.Errorf("%s %s: %w", q.method, p, err)
		}
		if e = existenceOf(status); e != resourceUnknown {
			return e, status, hdr, nil
		}
	}
	return resourceUnknown, status, hdr, nil
}

// subFailed answers a request whose sub-request got no usable answer:
// 401 and 403 as they came (see relay), for they are about this client;
// 502 otherwise.
func (d *davRequest) subFailed(status int, hdr http.Header, msg string) error {
	if status != http.StatusUnauthorized && status != http.StatusForbidden {
		status = http.StatusBadGateway
	}
	return d.relay(status, hdr, msg)
}

// relay answers with status and msg, and the challenges of a sub-request's
// answer, so that a client that must log in learns how.
func (d *davRequest) relay(status int, hdr http.Header, msg string) error {
	for _, name := range []string{"WWW-Authenticate", "Proxy-Authenticate"} {
		if v := hdr.Values(name); len(v) > 0 && (status == http.StatusUnauthorized || status == http.StatusProxyAuthRequired) {
			d.w.Header()[name] = slices.Clone(v)
		}
	}
	return d.plain(status, msg)
}

// refresh answers a LOCK without a body: the lock named in the If header
// gets a new timeout.
func (d *davRequest) refresh() error {
	tokens := d.ifh.Tokens()
	if len(tokens) == 0 {
		return d.plain(http.StatusBadRequest, "a LOCK without a body refreshes a lock and needs an If header with its token")
	}
	timeout, err := d.timeout()
	if err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	// The first covering lock the caller may use is refreshed; another
	// user's covering lock named before it (the If header may list
	// several tokens) does not stand in the way.
	var found *lockstore.ExplicitLock
	others := false
	for _, t := range tokens {
		l, err := d.store().Get(d.ctx(), t)
		if errors.Is(err, lockstore.ErrNoSuchLock) {
			continue
		}
		if err != nil {
			return d.storeFailed(err)
		}
		if !l.Covers(d.key) {
			continue
		}
		if !d.mayUse(l) {
			others = true
			continue
		}
		found = &l
		break
	}
	if found == nil && others {
		return d.plain(http.StatusForbidden, "the lock belongs to another user")
	}
	if found == nil {
		return d.davError(http.StatusPreconditionFailed, dav.CondLockTokenMatchesRequestURI)
	}
	if strings.Trim(d.r.Header.Get("Timeout"), " \t") == "" && found.Timeout > 0 {
		// A refresh restarts the lock's own timeout (RFC 4918 section
		// 6.6); default_timeout is for new locks.
		timeout = max(min(found.Timeout, time.Duration(d.h.MaxTimeout)), time.Second)
	}
	if ok, err := d.checkIf(); !ok {
		return err
	}
	l, err := d.store().Refresh(d.ctx(), found.Token, timeout)
	if errors.Is(err, lockstore.ErrNoSuchLock) {
		return d.davError(http.StatusPreconditionFailed, dav.CondLockTokenMatchesRequestURI)
	}
	if err != nil {
		return d.storeFailed(err)
	}
	return d.writeXML(http.StatusOK, dav.MarshalLockDiscovery(d.active(l, true)))
}

// unlock answers UNLOCK; it takes no in-flight lock.
func (d *davRequest) unlock() error {
	d.result = resultNone
	token, err := dav.ParseLockToken(d.r.Header.Get("Lock-Token"))
	if err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	l, err := d.store().Get(d.ctx(), token)
	if errors.Is(err, lockstore.ErrNoSuchLock) || (err == nil && !l.Covers(d.key)) {
		return d.davError(http.StatusConflict, dav.CondLockTokenMatchesRequestURI)
	}
	if err != nil {
		return d.storeFailed(err)
	}
	if !d.mayUse(l) {
		return d.plain(http.StatusForbidden, "the lock belongs to another user")
	}
	if _, err := d.store().Remove(d.ctx(), token); errors.Is(err, lockstore.ErrNoSuchLock) {
		return d.davError(http.StatusConflict, dav.CondLockTokenMatchesRequestURI)
	} else if err != nil {
		return d.storeFailed(err)
	}
	d.h.logger.Debug("unlocked", zap.String("key", l.Root), zap.String("token", tokenPrefix(token)))
	d.w.WriteHeader(http.StatusNoContent)
	return nil
}

// href is the request path as the client spelled it (before rewrites),
// for DAV:lockroot.
func (d *davRequest) href() string {
	if or, ok := d.r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && or.URL != nil {
		return or.URL.Path
	}
	return d.r.URL.Path
}

// active describes l for DAV:lockdiscovery; the token only when the
// client may use it.
func (d *davRequest) active(l lockstore.ExplicitLock, withToken bool) dav.ActiveLock {
	a := dav.ActiveLock{Root: l.Href, Scope: l.Scope, Depth: l.Depth, Owner: l.Owner, Timeout: max(0, time.Until(l.Expires))}
	if withToken && d.mayUse(l) {
		a.Token = l.Token
	}
	return a
}

// ownResource stands for the request's own resource where If lists are
// resolved to paths: no path holds a NUL.
const ownResource = "\x00own"

// ownPath is the request's path as the client sent it, before any
// rewrite: a sub-request for it goes through the route again, rewrites
// included, as the client's own request would.
func (d *davRequest) ownPath() (p, raw string) {
	if or, ok := d.r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && or.URL != nil {
		p, raw = or.URL.Path, or.URL.RawPath
	} else {
		p, raw = d.r.URL.Path, d.r.URL.RawPath
	}
	if p == "" {
		return "/", ""
	}
	return p, raw
}

// tokenPrefix shortens a token for logs and listings: enough to tell
// locks apart, not enough to use one.
func tokenPrefix(t string) string {
	const n = len("urn:uuid:") + 8
	if len(t) <= n {
		return t[:len(t)/2]
	}
	return t[:n]
}
