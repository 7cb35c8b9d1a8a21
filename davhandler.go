package caddylock

// The HTTP side of WebDAV locking (RFC 4918 sections 6, 7, 9.10, 9.11):
// LOCK and UNLOCK are answered here, every other request has its If
// header evaluated and removed, and writes into a locked scope need the
// lock's token. The parsers and XML writers live in internal/dav, the locks
// in the zone's LockStore.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Defaults of the WebDAV settings.
const (
	DefaultMaxTimeout  = time.Hour
	DefaultLockTimeout = 10 * time.Minute
)

// pathKeyTemplate is the key template that WebDAV allows besides the
// default: the request path, as the Caddyfile's {path} expands.
const pathKeyTemplate = "{http.request.uri.path}"

// davWrites are the methods that modify a resource or a collection's
// member list, whatever lock kind the config gives them.
var davWrites = []string{"PUT", "POST", "PATCH", "PROPPATCH", "MKCOL", "DELETE", "MOVE", "COPY"}

// provisionDAV sets the WebDAV defaults. Locks on a collection cover its
// members, so in-flight locks are hierarchical.
func (h *Handler) provisionDAV() {
	h.Hierarchy = true
	if h.MaxTimeout == 0 {
		h.MaxTimeout = caddy.Duration(DefaultMaxTimeout)
	}
	if h.DefaultTimeout == 0 {
		h.DefaultTimeout = caddy.Duration(min(DefaultLockTimeout, time.Duration(h.MaxTimeout)))
	}
	if h.MaxLockBody == 0 {
		h.MaxLockBody = dav.DefaultMaxLockInfoBytes
	}
}

// validateDAV checks the WebDAV settings.
func (h *Handler) validateDAV() error {
	if !h.WebDAV {
		if h.MaxTimeout != 0 || h.DefaultTimeout != 0 || h.MaxLockBody != 0 {
			return errors.New("lock: max_timeout, default_timeout and max_lock_body need webdav")
		}
		return nil
	}
	if h.Key != "" && h.Key != pathKeyTemplate {
		return fmt.Errorf("lock: webdav locks resources by their path, so key must be left out (or be %s), got %q", pathKeyTemplate, h.Key)
	}
	if h.MaxTimeout < 0 || h.DefaultTimeout < 0 || h.MaxLockBody < 0 {
		return errors.New("lock: max_timeout, default_timeout and max_lock_body must not be negative")
	}
	if h.DefaultTimeout > h.MaxTimeout {
		return fmt.Errorf("lock: default_timeout %s is longer than max_timeout %s",
			time.Duration(h.DefaultTimeout), time.Duration(h.MaxTimeout))
	}
	return nil
}

// keyOfPath is the lock key of a path named in a header (Destination, If
// tags, PROPFIND hrefs) as url.Parse decodes it: keyed as keyOf keys a
// request target. A path whose readings differ gets "", which no lock
// has: destination and resolveTag refuse such paths before they get here.
func (h *Handler) keyOfPath(p string) string {
	k, err := pathKey(p)
	if err != nil {
		return ""
	}
	if h.CaseInsensitive {
		k = foldCase(k)
	}
	return k
}

// headerPath is the path that a Destination value or an If tag names, as
// url.Parse decodes it, once the readings of both Go and nginx agree on
// its key, and keyOfPath keys that path alike.
func (h *Handler) headerPath(v string, u *url.URL) (string, error) {
	key, err := destinationKey(v, u)
	if err != nil {
		return "", err
	}
	p := u.Path
	if p == "" {
		p = "/"
	}
	if h.CaseInsensitive {
		key = foldCase(key)
	}
	if k := h.keyOfPath(p); k != key {
		return "", ambiguous(p, key)
	}
	return p, nil
}

// davRequest is one request in WebDAV mode, with what the handler has
// worked out about it.
type davRequest struct {
	h    *Handler
	z    *zone // the request's zone (see enter)
	w    http.ResponseWriter
	r    *http.Request
	next caddyhttp.Handler
	repl *caddy.Replacer
	key  string       // lock key of the request URI
	user string       // {http.auth.user.id}, "" when not authenticated
	ifh  dav.IfHeader // parsed If header; no lists when there was none
	xml  bool         // the client speaks WebDAV: refusals are DAV:error XML
	done func()       // releases the in-flight locks; nil when none are held
	// method is r.Method upper-cased, as kindOf compares it (a backend
	// that upper-cases methods moves on "move"), or the method that an
	// override names, whose checks cover both (see davOverride).
	method string
	// held is what the request holds once its in-flight locks were
	// granted; nil before, and when it passes without them.
	held *acquisition
	// result is {http.lock.result} unless the request is refused;
	// counted tells that the request was counted in the metrics.
	result  string
	counted bool
	// client is the client's request context, which its departure
	// cancels (d.r's becomes a hold context, which it does not).
	client context.Context
}

// settle sets {http.lock.result} and counts the request in the metrics,
// once per request.
func (d *davRequest) settle(result string) {
	d.repl.Set("http.lock.result", result)
	if !d.counted {
		d.counted = true
		d.h.metrics.count(result)
	}
}

// serveDAV handles a request in WebDAV mode. method is the one its checks
// follow (see requestKind); kind and locks are what the request takes as
// an in-flight lock.
func (h *Handler) serveDAV(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer, z *zone, key, method string, kind lockstore.Kind, locks bool) error {
	d := &davRequest{h: h, z: z, w: w, r: r, next: next, repl: repl, key: key, method: method, xml: isDAVClient(r), result: resultNone}
	d.user, _ = repl.GetString("http.auth.user.id")
	d.client = r.Context()
	if !strings.HasPrefix(key, "/") {
		return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("lock: webdav needs a path key, got %q", key))
	}
	// Every method here looks up the explicit locks of each ancestor of
	// the key, reads too: a key deeper than the lock tables accept is
	// refused before that walk, as a write to it would be.
	if err := lockstore.CheckDepth(key); err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	if vals := r.Header.Values("If"); len(vals) > 0 {
		ifh, err := dav.ParseIf(strings.Join(vals, " "))
		if err != nil {
			return d.plain(http.StatusBadRequest, err.Error())
		}
		d.ifh = ifh
	}
	// Depth is 0, 1 or infinity for every method that takes one; which of
	// them a method allows is for LOCK to say (ParseLockDepth) and for
	// the backend otherwise. More than one Depth header is malformed too.
	if _, err := dav.ParseDepth(strings.Join(r.Header.Values("Depth"), ", "), lockstore.DepthInfinity); err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	defer func() {
		if !d.counted {
			d.settle(d.result)
		}
		if d.done != nil {
			d.done()
		}
	}()
	var err error
	switch d.method {
	case "LOCK":
		err = d.lock()
	case "UNLOCK":
		err = d.unlock()
	default:
		err = d.forward(kind, locks)
	}
	if d.held != nil {
		err = d.held.settle(d.w, d.key, err)
	}
	return err
}

// isDAVClient reports whether a refusal should be a DAV:error document:
// the client asked for XML, sent a WebDAV header or used a WebDAV method.
func isDAVClient(r *http.Request) bool {
	if asksForXML(strings.Join(r.Header.Values("Accept"), ",")) {
		return true
	}
	for _, name := range []string{"If", "Depth", "Lock-Token", "Overwrite", "Destination", "Timeout"} {
		if r.Header.Get(name) != "" {
			return true
		}
	}
	switch r.Method {
	case "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK":
		return true
	}
	return false
}

// asksForXML reports whether an Accept header asks for XML: it names
// application/xml or text/xml with a quality above 0, and names neither
// text/html nor a JSON type with a quality as high. A browser's Accept,
// which lists application/xml below text/html, does not.
func asksForXML(accept string) bool {
	var xmlQ, otherQ float64
	for r := range strings.SplitSeq(accept, ",") {
		params := strings.Split(r, ";")
		mt := strings.ToLower(strings.TrimSpace(params[0]))
		q := 1.0
		for _, p := range params[1:] {
			name, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(strings.TrimSpace(name), "q") {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					f = 0 // a range with an unreadable quality counts for nothing
				}
				q = min(max(f, 0), 1)
			}
		}
		switch {
		case mt == "application/xml" || mt == "text/xml":
			xmlQ = max(xmlQ, q)
		case mt == "text/html" || strings.HasSuffix(mt, "/json") || strings.HasSuffix(mt, "+json"):
			otherQ = max(otherQ, q)
		}
	}
	return xmlQ > 0 && xmlQ > otherQ
}

func (d *davRequest) store() lockstore.LockStore { return d.z.explicit }

// ctx is the request's context; once in-flight locks are held it is the
// hold context, which a departing client does not cancel.
func (d *davRequest) ctx() context.Context { return d.r.Context() }

// hold takes the in-flight locks of reqs, in key order and without
// taking a lock its ancestor's lock already covers, and runs the rest of
// the request on a context bounded by max_hold: Handler.acquire, the
// path ServeHTTP takes too.
func (d *davRequest) hold(reqs []lockstore.Request) error {
	h := d.h
	a := new(acquisition)
	if err := h.acquire(a, d.w, d.r, d.repl, d.z, d.key, coalesce(reqs)...); err != nil {
		return err
	}
	if err := a.ready(); err != nil {
		a.release()
		return err
	}
	d.done = a.release
	if a.result == resultFailOpen {
		h.storeTrouble(d.key, a.storeErr)
		d.result = resultFailOpen
		return nil
	}
	d.result = a.result
	d.held = a
	d.w = a.writer(d.w)
	d.r = d.r.WithContext(a.ctx)
	// require_if_match, verify_etag (precondition.go), under the locks:
	// see acquisition.ready.
	if answered, err := h.checkPreconditions(a.hc, d.w, d.r, d.repl, d.z, d.key, exclusiveOn(reqs, d.key)); answered {
		return &preconditionAnswered{err}
	}
	return nil
}

// coalesce sorts lock requests by key and drops those whose key is at or
// below another's (hierarchy makes that one cover them), keeping the
// stronger kind: taking both would conflict with itself.
func coalesce(reqs []lockstore.Request) []lockstore.Request {
	slices.SortFunc(reqs, func(a, b lockstore.Request) int { return strings.Compare(a.Key, b.Key) })
	out := reqs[:0]
	for _, q := range reqs {
		merged := false
		for i := range out {
			if q.Key == out[i].Key || lockstore.Below(q.Key, out[i].Key) {
				out[i].Kind = max(out[i].Kind, q.Kind)
				merged = true
				break
			}
		}
		if !merged {
			out = append(out, q)
		}
	}
	return out
}

// forward handles every method but LOCK and UNLOCK: in-flight locks,
// the If header, the tokens of explicit locks, then the next handler.
func (d *davRequest) forward(kind lockstore.Kind, locks bool) error {
	var reqs []lockstore.Request
	if locks {
		reqs = append(reqs, lockstore.Request{Key: d.key, Kind: kind})
	}
	destKey := ""
	if d.method == "MOVE" || d.method == "COPY" {
		dest, err := d.destination()
		if err != nil {
			return err
		}
		if dest == "" {
			return nil // refused
		}
		destKey = d.h.keyOfPath(dest)
		reqs = append(reqs, lockstore.Request{Key: destKey, Kind: lockstore.Exclusive})
	}
	if len(reqs) > 0 {
		if err := d.hold(reqs); err != nil {
			return d.refuseInflight(err)
		}
	} else {
		d.result = resultNone
	}
	if ok, err := d.checkIf(); !ok {
		return err
	}
	if (locks && kind == lockstore.Exclusive) || slices.Contains(davWrites, d.method) {
		touched, err := d.touched(destKey)
		if err != nil {
			if !d.failOpen(err) {
				return d.storeFailed(err)
			}
			touched = nil
		}
		if missing := d.missing(touched); len(missing) > 0 {
			return d.refuseExplicit(missing, dav.CondLockTokenSubmitted)
		}
	}
	d.stripIf()
	d.settle(d.result)
	switch d.method {
	case http.MethodOptions:
		return d.next.ServeHTTP(&headerHook{ResponseWriter: d.w, hook: func(_ int, hdr http.Header) { mergeDAVHeader(hdr) }}, d.r)
	case "PROPFIND":
		return d.propfind()
	case http.MethodDelete, "MOVE":
		hook := &headerHook{ResponseWriter: d.w}
		err := d.next.ServeHTTP(hook, d.r)
		// The locks of what is gone go with it. A 207 says that part of
		// it failed (RFC 4918 section 9.6.1) and what remains is not read
		// from its body: the locks stay, so that no remaining resource
		// loses its lock; those of what is gone end by their timeout or
		// UNLOCK.
		if hook.status >= 200 && hook.status < 300 && hook.status != http.StatusMultiStatus {
			n, rerr := d.store().RemoveUnder(d.ctx(), d.key)
			if rerr != nil {
				d.h.logger.Error("removing the locks of a deleted resource", zap.String("key", d.key), zap.Error(rerr))
			} else if n > 0 {
				d.h.logger.Debug("locks removed with their resource", zap.String("key", d.key), zap.Int("locks", n))
			}
		}
		return err
	}
	return d.next.ServeHTTP(d.w, d.r)
}

// destination returns the path of the Destination header, or "" after
// refusing the request.
func (d *davRequest) destination() (string, error) {
	vals := d.r.Header.Values("Destination")
	if len(vals) == 0 || vals[0] == "" {
		return "", d.plain(http.StatusBadRequest, d.r.Method+" needs a Destination header")
	}
	// Two Destinations: the backend might write to the one not checked.
	if len(vals) > 1 {
		return "", d.plain(http.StatusBadRequest, d.r.Method+" has more than one Destination header")
	}
	v := vals[0]
	u, err := url.Parse(v)
	if err != nil || (u.Host == "" && !strings.HasPrefix(u.Path, "/")) {
		return "", d.plain(http.StatusBadRequest, fmt.Sprintf("invalid Destination header %.200q: expected an absolute URI or path", v))
	}
	if err := nulFree(u.Path); err != nil {
		return "", d.plain(http.StatusBadRequest, fmt.Sprintf("invalid Destination header %.200q: %v", v, err))
	}
	if u.Host != "" && !sameHost(u, d.r.Host) {
		return "", d.plain(http.StatusBadGateway, fmt.Sprintf("Destination %.200q is on another server", v))
	}
	p, err := d.h.headerPath(v, u)
	if err != nil {
		var pe *pathError
		if errors.As(err, &pe) {
			err = &pathError{pe.result, "Destination: " + pe.msg}
		}
		d.counted = true // refuse sets the result and counts it
		return "", d.h.refuse(d.w, d.r, d.repl, d.key, err)
	}
	return p, nil
}

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

// sub sends a request without a body for p (a path as the client names
// it, with raw its escaped form or "") on the client's behalf: HEAD for
// an ETag or an existence check, PROPFIND for the latter, PUT to create a
// resource. It returns the status and headers of the answer.
//
// It goes through the whole server (the *caddyhttp.Server that serves
// the request), not only the rest of this route: a request made for a
// client meets every route, matcher and auth that the client's own
// request to p would, and a path that the config hides or refuses this
// client answers as it would answer the client. The client's credentials
// and cookies go along; conditional and WebDAV headers do not. The server
// logs it as any request (access log, errors). The lock handlers of this
// zone let it through untouched (see subRequestMark); the request's
// in-flight lock covers the only write it makes, the PUT of its own path.
func (d *davRequest) sub(method, p, raw string, header http.Header) (int, http.Header, error) {
	srv, ok := d.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok || srv == nil {
		return 0, nil, errors.New("no server in the request context to send the request through")
	}
	ctx := &subContext{Context: d.r.Context(), mark: &subRequestMark{poolKey: d.z.poolKey}}
	sr := d.r.Clone(ctx)
	sr.Method = method
	sr.URL.Path, sr.URL.RawPath, sr.URL.RawQuery, sr.URL.Fragment, sr.URL.RawFragment = p, raw, "", "", ""
	sr.RequestURI = sr.URL.RequestURI()
	sr.Body, sr.ContentLength, sr.TransferEncoding = http.NoBody, 0, nil
	for _, name := range []string{"If", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
		"If-Range", "Range", "Depth", "Destination", "Overwrite", "Lock-Token", "Timeout", "Content-Type",
		"Content-Length", "Content-Encoding", "Content-Range", "Expect", "Transfer-Encoding"} {
		sr.Header.Del(name)
	}
	for name, vals := range header {
		sr.Header[name] = vals
	}
	rec := &subResponse{header: http.Header{}}
	// The server answers errors itself (error routes included), as it
	// does for the client.
	srv.ServeHTTP(rec, sr)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.status, rec.header, nil
}

// subRequestMark marks a sub-request (see sub) in its context, where no
// client can set it: the lock handlers of the zone it names let it
// through without taking locks or checking If headers again. The request
// that made it holds what it needs in that zone.
type subRequestMark struct {
	poolKey string // the zone's table (zone.poolKey)
}

type subRequestKey struct{}

// subContext is the context of a sub-request: the request's own, with
// the mark. The lock that a handler without webdav earlier in the route
// holds for the request shows through the WebDAV request's own in-flight
// hold, so that such a handler lets the sub-request pass as it lets the
// request pass (see Handler.heldBefore), rather than wait for itself.
type subContext struct {
	context.Context
	mark *subRequestMark
}

func (c *subContext) Value(key any) any {
	switch key {
	case subRequestKey{}:
		return c.mark
	case heldLockKey{}:
		hc, _ := c.Context.Value(heldLockKey{}).(*holdContext)
		for hc != nil && hc.zone == nil {
			hc, _ = hc.base.values.Value(heldLockKey{}).(*holdContext)
		}
		if hc == nil {
			return nil
		}
		return hc
	}
	return c.Context.Value(key)
}

// passesSub reports whether r is a sub-request of this handler's zone,
// which the handler lets through untouched.
func (h *Handler) passesSub(r *http.Request) bool {
	m, ok := r.Context().Value(subRequestKey{}).(*subRequestMark)
	return ok && h.zone != nil && m.poolKey == h.zone.poolKey
}

// subResponse records the status and headers of a sub-request and drops
// its body.
type subResponse struct {
	header http.Header
	status int
}

func (s *subResponse) Header() http.Header { return s.header }

func (s *subResponse) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
}

func (s *subResponse) Write(p []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(p), nil
}

// headerHook passes a response through, recording its status and
// calling hook (when set) just before the headers go out.
type headerHook struct {
	http.ResponseWriter
	hook   func(status int, h http.Header)
	status int
}

func (w *headerHook) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
		if w.hook != nil {
			w.hook(code, w.Header())
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *headerHook) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *headerHook) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *headerHook) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// mergeDAVHeader makes an OPTIONS answer announce class 1 and 2
// compliance, keeping what the backend announced, and LOCK and UNLOCK in
// Allow when the backend sent one.
func mergeDAVHeader(h http.Header) {
	classes := []string{"1", "2"}
	for _, v := range h.Values("DAV") {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !slices.Contains(classes, c) {
				classes = append(classes, c)
			}
		}
	}
	h.Set("DAV", strings.Join(classes, ", "))
	if allow := h.Values("Allow"); len(allow) > 0 {
		methods := strings.Join(allow, ",")
		for _, m := range []string{"LOCK", "UNLOCK"} {
			if !slices.ContainsFunc(strings.Split(methods, ","), func(s string) bool { return strings.EqualFold(strings.TrimSpace(s), m) }) {
				methods += ", " + m
			}
		}
		h.Set("Allow", methods)
	}
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

// ---------------------------------------------------------------------------
// Answers

// plain answers with a short text/plain message.
func (d *davRequest) plain(status int, msg string) error {
	d.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	d.w.Header().Set("Content-Length", strconv.Itoa(len(msg)+1))
	d.w.WriteHeader(status)
	_, _ = d.w.Write([]byte(msg + "\n"))
	return nil
}

// writeXML answers with an XML body.
func (d *davRequest) writeXML(status int, body []byte) error {
	return writeXML(d.w, status, body)
}

// davError answers with a DAV:error document naming condition.
func (d *davRequest) davError(status int, condition string, hrefs ...string) error {
	return d.writeXML(status, dav.MarshalDAVError(condition, hrefs...))
}

// failOpen reports whether a write whose explicit locks could not be
// read goes on regardless (the store's on_error fail_open); it logs and
// counts the pass.
func (d *davRequest) failOpen(err error) bool {
	h := d.h
	if !h.failsOpen(err) {
		return false
	}
	h.storeTrouble(d.key, err)
	if d.result != resultFailOpen {
		d.result = resultFailOpen
		if d.counted {
			// ServeHTTP counted the request as acquired; it passes as fail_open.
			d.repl.Set("http.lock.result", resultFailOpen)
		}
	}
	return true
}

// storeFailed answers 503 when the lock store failed.
func (d *davRequest) storeFailed(err error) error {
	result, err := d.h.refuseExplicitStore(d.w, d.r, d.repl, d.key, err)
	switch result {
	case "":
		d.counted = true // refuse counted it
	case resultFull:
		d.settle(resultFull)
	}
	return err
}

// refuseInflight answers a request whose in-flight lock was not granted:
// a WebDAV client gets 423 with DAV:error naming the busy resource,
// everybody else the handler's usual refusal.
func (d *davRequest) refuseInflight(err error) error {
	if a, ok := err.(*preconditionAnswered); ok {
		return a.err // hold's precondition check answered
	}
	var conflict *lockstore.ConflictError
	if !d.xml || !errors.As(err, &conflict) {
		d.counted = true // refuse counts it
		return d.h.refuse(d.w, d.r, d.repl, d.key, err)
	}
	d.settle(resultConflict)
	retry := conflict.RetryAfter
	if d.h.RetryAfter > 0 {
		retry = time.Duration(d.h.RetryAfter)
	}
	setRetryAfter(d.w, retry)
	cond := dav.CondLockTokenSubmitted
	if d.method == "LOCK" {
		cond = dav.CondNoConflictingLock
	}
	return d.davError(http.StatusLocked, cond, conflict.Key)
}

// lockRoots returns the roots of locks as the clients named them
// (without repeats, in the order of locks) and how long until the last
// of the locks ends unless refreshed.
func lockRoots(locks []lockstore.ExplicitLock) (hrefs []string, retry time.Duration) {
	for _, l := range locks {
		retry = max(retry, time.Until(l.Expires))
		if !slices.Contains(hrefs, l.Href) {
			hrefs = append(hrefs, l.Href)
		}
	}
	return hrefs, retry
}

// refuseExplicit answers 423 for explicit locks in the way (see
// Handler.refuseExplicit).
func (d *davRequest) refuseExplicit(locks []lockstore.ExplicitLock, condition string) error {
	d.settle(resultConflict)
	return d.h.refuseExplicit(d.w, d.r, d.key, d.xml, locks, condition)
}

// allBelow reports whether every lock of locks is rooted strictly below
// key: only a depth-infinity LOCK on key meets such locks.
func allBelow(locks []lockstore.ExplicitLock, key string) bool {
	return len(locks) > 0 && !slices.ContainsFunc(locks, func(l lockstore.ExplicitLock) bool { return !lockstore.Below(l.Root, key) })
}

// refuseBelow answers a depth-infinity LOCK that locks on resources below
// the request URI keep from being granted, as RFC 4918 section 9.10.6
// (and the example of 9.10.9) says: 207 Multi-Status with a response of
// 423 Locked for each of their roots and one of 424 Failed Dependency for
// the request URI. Retry-After says when the last of them ends unless
// refreshed.
func (d *davRequest) refuseBelow(locks []lockstore.ExplicitLock) error {
	if len(locks) == 0 {
		return d.refuseExplicit(nil, dav.CondNoConflictingLock)
	}
	d.settle(resultConflict)
	hrefs, retry := lockRoots(locks)
	d.h.logger.Debug("explicit lock conflict below", zap.String("key", d.key),
		zap.String("lock_root", locks[0].Root), zap.String("token", tokenPrefix(locks[0].Token)), zap.Int("locks", len(locks)))
	setRetryAfter(d.w, retry)
	return d.writeXML(http.StatusMultiStatus, dav.MarshalLockFailure(hrefs, d.href()))
}

// Interface guards
var (
	_ http.ResponseWriter = (*subResponse)(nil)
	_ http.ResponseWriter = (*headerHook)(nil)
	_ http.Flusher        = (*headerHook)(nil)
	_ http.ResponseWriter = (*multiStatusBuffer)(nil)
	_ http.Flusher        = (*multiStatusBuffer)(nil)
)
