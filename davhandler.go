package caddylock

// The HTTP side of WebDAV locking (RFC 4918 sections 6, 7, 9.10, 9.11):
// LOCK and UNLOCK are answered here, every other request has its If
// header evaluated and removed, and writes into a locked scope need the
// lock's token. The parsers and XML writers live in webdav.go, the locks
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

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Defaults of the WebDAV settings.
const (
	DefaultMaxTimeout  = time.Hour
	DefaultLockTimeout = 10 * time.Minute
)

// adminCreator is the Creator of locks taken through the admin API. No
// authenticated user has this id, so nobody can write with, refresh or
// UNLOCK such a lock through the proxy: it ends by its timeout or through
// the admin API.
const adminCreator = "\x00admin"

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
		h.MaxLockBody = DefaultMaxLockInfoBytes
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
	key  string   // lock key of the request URI
	user string   // {http.auth.user.id}, "" when not authenticated
	ifh  IfHeader // parsed If header; no lists when there was none
	xml  bool     // the client speaks WebDAV: refusals are DAV:error XML
	done func()   // releases the in-flight locks; nil when none are held
	// method is r.Method upper-cased, as kindOf compares it (a backend
	// that upper-cases methods moves on "move"), or the method that an
	// override names, whose checks cover both (see davOverride).
	method string
	// guards watch the in-flight leases that a store can lose.
	guards []*leaseGuard
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
func (h *Handler) serveDAV(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer, z *zone, key, method string, kind Kind, locks bool) error {
	d := &davRequest{h: h, z: z, w: w, r: r, next: next, repl: repl, key: key, method: method, xml: isDAVClient(r), result: resultNone}
	d.user, _ = repl.GetString("http.auth.user.id")
	d.client = r.Context()
	if !strings.HasPrefix(key, "/") {
		return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("lock: webdav needs a path key, got %q", key))
	}
	// Every method here looks up the explicit locks of each ancestor of
	// the key, reads too: a key deeper than the lock tables accept is
	// refused before that walk, as a write to it would be.
	if err := checkDepth(key); err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	if vals := r.Header.Values("If"); len(vals) > 0 {
		ifh, err := ParseIf(strings.Join(vals, " "))
		if err != nil {
			return d.plain(http.StatusBadRequest, err.Error())
		}
		d.ifh = ifh
	}
	// Depth is 0, 1 or infinity for every method that takes one; which of
	// them a method allows is for LOCK to say (ParseLockDepth) and for
	// the backend otherwise. More than one Depth header is malformed too.
	if _, err := ParseDepth(strings.Join(r.Header.Values("Depth"), ", "), DepthInfinity); err != nil {
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
	for _, g := range d.guards {
		err = g.settle(d.w, d.key, err)
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

func (d *davRequest) store() LockStore { return d.z.explicit }

// ctx is the request's context; once in-flight locks are held it is the
// hold context, which a departing client does not cancel.
func (d *davRequest) ctx() context.Context { return d.r.Context() }

// hold takes the in-flight locks of reqs, in key order and without
// taking a lock its ancestor's lock already covers, and runs the rest of
// the request on a context bounded by max_hold, as ServeHTTP does.
func (d *davRequest) hold(reqs []Request) error {
	h := d.h
	reqs = coalesce(reqs)
	start := time.Now()
	leases := make([]Lease, 0, len(reqs))
	// As in ServeHTTP: a request that queues reads its body meanwhile.
	abort := abortReads(d.w, d.r) // for max_hold; before anything reads the body
	bw := h.newBodyWait(d.w, d.r)
	for _, q := range reqs {
		q.Wait = time.Duration(h.Wait)
		l, err := bw.acquire(d.z.locker, q)
		if err != nil {
			for _, l := range leases {
				l.Release()
			}
			h.recordWait(d.repl, start) // a wait in vain is a wait too
			if errors.Is(err, ErrStoreUnavailable) && h.store != nil && h.store.FailOpen() {
				// fail_open: the request goes on without in-flight locks,
				// with the body it may have begun to read.
				if err := bw.ready(d.r.Context()); err != nil {
					bw.end()
					return err
				}
				h.storeTrouble(d.key, err)
				d.result = resultFailOpen
				d.done = bw.end
				return nil
			}
			bw.end()
			return err
		}
		leases = append(leases, l)
	}
	// The lease of the first key carries the fencing number the backend
	// sees; with MOVE and COPY that is the lower of the two keys.
	h.granted(d.r, d.repl, leases[0])
	waited := h.recordWait(d.repl, start)
	result := resultAcquired
	if slices.ContainsFunc(leases, queued) {
		result = resultWaited
	}
	d.result = result
	// As in ServeHTTP: a context that a departing client does not
	// cancel, ended by max_hold (see hold.go).
	hc := h.reaper.holdAll(d.r.Context(), start.Add(waited), leases, abort)
	// A lease that can be lost (Redis) cancels the request when it is
	// lost before the upstream request was sent, as in ServeHTTP.
	var ctx context.Context = hc
	guards := make([]*leaseGuard, 0, len(leases))
	for _, l := range leases {
		var g *leaseGuard
		g, ctx = h.guardLease(ctx, hc, l, d.key)
		if g != nil {
			guards = append(guards, g)
			d.w = g.writer(d.w)
		}
	}
	done := func() {
		for _, g := range guards {
			g.stop()
		}
		hc.finish()
		bw.end()
	}
	// A request that queued goes on only with its whole body and its
	// client still there; otherwise it is answered as a wait in vain.
	if err := bw.ready(ctx); err != nil {
		done()
		return err
	}
	d.guards = guards
	d.r = d.r.WithContext(ctx)
	d.done = done
	// require_if_match, verify_etag (precondition.go), under the locks.
	if answered, err := h.checkPreconditions(hc, d.w, d.r, d.repl, d.z, d.key, exclusiveOn(reqs, d.key)); answered {
		return &preconditionAnswered{err}
	}
	return nil
}

// coalesce sorts lock requests by key and drops those whose key is at or
// below another's (hierarchy makes that one cover them), keeping the
// stronger kind: taking both would conflict with itself.
func coalesce(reqs []Request) []Request {
	slices.SortFunc(reqs, func(a, b Request) int { return strings.Compare(a.Key, b.Key) })
	out := reqs[:0]
	for _, q := range reqs {
		merged := false
		for i := range out {
			if q.Key == out[i].Key || isBelow(q.Key, out[i].Key) {
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
func (d *davRequest) forward(kind Kind, locks bool) error {
	var reqs []Request
	if locks {
		reqs = append(reqs, Request{Key: d.key, Kind: kind})
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
		reqs = append(reqs, Request{Key: destKey, Kind: Exclusive})
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
	if (locks && kind == Exclusive) || slices.Contains(davWrites, d.method) {
		touched, err := d.touched(destKey)
		if err != nil {
			if !d.failOpen(err) {
				return d.storeFailed(err)
			}
			touched = nil
		}
		if missing := d.missing(touched); len(missing) > 0 {
			return d.refuseExplicit(missing, CondLockTokenSubmitted)
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
	if strings.IndexByte(u.Path, 0) >= 0 {
		return "", d.plain(http.StatusBadRequest, fmt.Sprintf("invalid Destination header %.200q: %v", v, errNULKey))
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
func (d *davRequest) locksFor(key string, below, member bool) ([]ExplicitLock, error) {
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
		if l.Root == parent && l.Depth == DepthZero {
			ls = append(ls, l)
		}
	}
	return ls, nil
}

// touched returns the explicit locks a write needs the tokens of (RFC
// 4918 sections 7.4, 9.6.1, 9.8.5, 9.9.4).
func (d *davRequest) touched(destKey string) ([]ExplicitLock, error) {
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
		collectionLock := func(l ExplicitLock) bool { return !l.Covers(d.key) }
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
func (d *davRequest) missing(ls []ExplicitLock) []ExplicitLock {
	submitted := d.ifh.Tokens()
	holds := func(l ExplicitLock) bool { return tokenIn(submitted, l.Token) && d.mayUse(l) }
	var out []ExplicitLock
	for _, l := range ls {
		if holds(l) || slices.ContainsFunc(out, func(o ExplicitLock) bool { return sameToken(o.Token, l.Token) }) {
			continue
		}
		if l.Scope == Shared && l.Creator != adminCreator && slices.ContainsFunc(ls, func(o ExplicitLock) bool {
			return o.Scope == Shared && o.Root == l.Root && holds(o)
		}) {
			continue
		}
		out = append(out, l)
	}
	return out
}

// mayUse reports whether the request's user may use the lock's token.
func (d *davRequest) mayUse(l ExplicitLock) bool {
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
	if v, ok := (IfHeader{Lists: []IfList{l}}).IfMatch(); ok {
		d.r.Header.Set("If-Match", v)
	}
}

// timeout reads the Timeout header; "Second-0" gets the shortest lock
// there is, one second.
func (d *davRequest) timeout() (time.Duration, error) {
	t, err := ParseTimeout(d.r.Header.Get("Timeout"), time.Duration(d.h.DefaultTimeout), time.Duration(d.h.MaxTimeout))
	return max(t, time.Second), err
}

// lock answers LOCK: a new lock, or a refresh when there is no body.
func (d *davRequest) lock() error {
	info, err := ParseLockInfo(d.r.Body, d.h.MaxLockBody)
	switch {
	case errors.Is(err, ErrNoBody):
		return d.refresh()
	case errors.Is(err, ErrBodyTooLarge):
		return d.plain(http.StatusRequestEntityTooLarge, err.Error())
	case err != nil:
		return d.plain(http.StatusBadRequest, err.Error())
	}
	depth, err := ParseLockDepth(d.r.Header.Get("Depth"))
	if err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	timeout, err := d.timeout()
	if err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	if err := d.hold([]Request{{Key: d.key, Kind: Exclusive}}); err != nil {
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
	l, err := d.store().Create(d.ctx(), ExplicitLock{
		Token:   NewLockToken(),
		Root:    d.key,
		Href:    d.href(),
		Scope:   info.Scope,
		Depth:   depth,
		Owner:   info.Owner,
		Creator: d.user,
		Timeout: timeout,
	})
	var conflict *LockConflictError
	switch {
	case errors.As(err, &conflict) && len(conflict.Conflicts) == 0:
		// The locks in the way ended while the store read them (Redis:
		// a lock's hash expired before its index entry was purged): a
		// conflict with nothing to name, which a retry will likely pass.
		return d.refuseExplicit(nil, CondNoConflictingLock)
	case errors.As(err, &conflict) && allBelow(conflict.Conflicts, d.key):
		return d.refuseBelow(conflict.Conflicts)
	case errors.As(err, &conflict):
		return d.refuseExplicit(conflict.Conflicts, CondNoConflictingLock)
	case err != nil:
		return d.storeFailed(err)
	}
	created := false
	if !exists {
		var refused bool
		if created, refused, err = d.create(l); refused {
			if _, rerr := d.store().Remove(d.ctx(), l.Token); rerr != nil && !errors.Is(rerr, ErrNoSuchLock) {
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
	return d.writeXML(status, MarshalLockDiscovery(d.active(l, true)))
}

// create makes the empty resource of a LOCK on an unmapped URL with an
// empty PUT through the next handler. It reports whether it created the
// resource, and refused when it answered the request instead (the lock
// must then go). A resource that appeared meanwhile is neither: the lock
// stands.
func (d *davRequest) create(l ExplicitLock) (created, refused bool, err error) {
	ls, err := d.locksFor(d.key, false, true)
	if err != nil {
		return false, true, d.storeFailed(err)
	}
	ls = slices.DeleteFunc(ls, func(o ExplicitLock) bool { return sameToken(o.Token, l.Token) })
	if missing := d.missing(ls); len(missing) > 0 {
		return false, true, d.refuseExplicit(missing, CondLockTokenSubmitted)
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
	var found *ExplicitLock
	others := false
	for _, t := range tokens {
		l, err := d.store().Get(d.ctx(), t)
		if errors.Is(err, ErrNoSuchLock) {
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
		return d.davError(http.StatusPreconditionFailed, CondLockTokenMatchesRequestURI)
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
	if errors.Is(err, ErrNoSuchLock) {
		return d.davError(http.StatusPreconditionFailed, CondLockTokenMatchesRequestURI)
	}
	if err != nil {
		return d.storeFailed(err)
	}
	return d.writeXML(http.StatusOK, MarshalLockDiscovery(d.active(l, true)))
}

// unlock answers UNLOCK; it takes no in-flight lock.
func (d *davRequest) unlock() error {
	d.result = resultNone
	token, err := ParseLockToken(d.r.Header.Get("Lock-Token"))
	if err != nil {
		return d.plain(http.StatusBadRequest, err.Error())
	}
	l, err := d.store().Get(d.ctx(), token)
	if errors.Is(err, ErrNoSuchLock) || (err == nil && !l.Covers(d.key)) {
		return d.davError(http.StatusConflict, CondLockTokenMatchesRequestURI)
	}
	if err != nil {
		return d.storeFailed(err)
	}
	if !d.mayUse(l) {
		return d.plain(http.StatusForbidden, "the lock belongs to another user")
	}
	if _, err := d.store().Remove(d.ctx(), token); errors.Is(err, ErrNoSuchLock) {
		return d.davError(http.StatusConflict, CondLockTokenMatchesRequestURI)
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
func (d *davRequest) active(l ExplicitLock, withToken bool) ActiveLock {
	a := ActiveLock{Root: l.Href, Scope: l.Scope, Depth: l.Depth, Owner: l.Owner, Timeout: max(0, time.Until(l.Expires))}
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
			hc, _ = hc.values.Value(heldLockKey{}).(*holdContext)
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
	d.w.Header().Set("Content-Type", "application/xml; charset=utf-8")
	d.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	d.w.WriteHeader(status)
	_, _ = d.w.Write(body)
	return nil
}

// davError answers with a DAV:error document naming condition.
func (d *davRequest) davError(status int, condition string, hrefs ...string) error {
	return d.writeXML(status, MarshalDAVError(condition, hrefs...))
}

// storeFailed answers 503 when the lock store failed.
// failOpen reports whether a write whose explicit locks could not be
// read goes on regardless (the store's on_error fail_open); it logs and
// counts the pass.
func (d *davRequest) failOpen(err error) bool {
	h := d.h
	if !errors.Is(err, ErrStoreUnavailable) || h.store == nil || !h.store.FailOpen() {
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

func (d *davRequest) storeFailed(err error) error {
	if errors.Is(err, ErrFull) {
		title, detail := "Lock table is full", fmt.Sprintf("zone %q holds its maximum of explicit locks; try again later", d.h.Zone)
		if lim := (*ExplicitLimitError)(nil); errors.As(err, &lim) {
			title, detail = limitTitle(lim.Limit), fmt.Sprintf("zone %q: %s; try again later", d.h.Zone, lim)
		}
		d.settle(resultFull)
		return d.h.writeRefusal(d.w, problem{
			Type: problemType, Title: title, Status: http.StatusServiceUnavailable,
			Detail: detail, Instance: d.r.URL.RequestURI(),
		}, time.Second, d.key, err)
	}
	if errors.Is(err, ErrStoreUnavailable) || errors.Is(err, ErrStoreFailed) {
		// fail_closed: 503 with Retry-After and a problem body, as for
		// an in-flight lock the store could not grant.
		d.counted = true // refuse counts it
		return d.h.refuse(d.w, d.r, d.repl, d.key, err)
	}
	d.h.logger.Error("explicit lock store", zap.String("key", d.key), zap.String("method", d.r.Method), zap.Error(err))
	return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("lock store: %w", err))
}

// refuseInflight answers a request whose in-flight lock was not granted:
// a WebDAV client gets 423 with DAV:error naming the busy resource,
// everybody else the handler's usual refusal.
func (d *davRequest) refuseInflight(err error) error {
	if a, ok := err.(*preconditionAnswered); ok {
		return a.err // hold's precondition check answered
	}
	var conflict *ConflictError
	if !d.xml || !errors.As(err, &conflict) {
		d.counted = true // refuse counts it
		return d.h.refuse(d.w, d.r, d.repl, d.key, err)
	}
	d.settle(resultConflict)
	retry := conflict.RetryAfter
	if d.h.RetryAfter > 0 {
		retry = time.Duration(d.h.RetryAfter)
	}
	d.setRetryAfter(retry)
	cond := CondLockTokenSubmitted
	if d.method == "LOCK" {
		cond = CondNoConflictingLock
	}
	return d.davError(http.StatusLocked, cond, conflict.Key)
}

// lockRoots returns the roots of locks as the clients named them
// (without repeats, in the order of locks) and how long until the last
// of the locks ends unless refreshed.
func lockRoots(locks []ExplicitLock) (hrefs []string, retry time.Duration) {
	for _, l := range locks {
		retry = max(retry, time.Until(l.Expires))
		if !slices.Contains(hrefs, l.Href) {
			hrefs = append(hrefs, l.Href)
		}
	}
	return hrefs, retry
}

// setRetryAfter sets Retry-After to retry in whole seconds, at least one.
func (d *davRequest) setRetryAfter(retry time.Duration) {
	d.w.Header().Set("Retry-After", strconv.FormatInt(max(1, int64((retry+time.Second-1)/time.Second)), 10))
}

// refuseExplicit answers 423 for explicit locks in the way: DAV:error
// naming their roots for WebDAV clients, a problem document otherwise;
// Retry-After says when the last of them ends unless refreshed.
func (d *davRequest) refuseExplicit(locks []ExplicitLock, condition string) error {
	d.settle(resultConflict)
	if len(locks) == 0 {
		return d.refuseVanished(condition)
	}
	hrefs, retry := lockRoots(locks)
	first := locks[0]
	d.h.logger.Debug("explicit lock conflict", zap.String("key", d.key), zap.String("method", d.r.Method),
		zap.String("lock_root", first.Root), zap.String("token", tokenPrefix(first.Token)))
	if d.xml {
		d.setRetryAfter(retry)
		return d.davError(http.StatusLocked, condition, hrefs...)
	}
	expires := first.Expires
	return d.h.writeRefusalTo(d.w, d.r, problem{
		Type:     problemType,
		Title:    "Resource is locked",
		Status:   http.StatusLocked,
		Detail:   fmt.Sprintf("%s %s needs the token of the %s lock on %s", d.r.Method, d.key, first.Scope, first.Href),
		Instance: d.r.URL.RequestURI(),
		Lock: &problemLock{
			Key:         first.Root,
			Kind:        first.Scope.String(),
			HeldSeconds: time.Since(first.Created).Seconds(),
			Explicit:    true,
			Expires:     &expires,
		},
	}, retry, d.key, fmt.Errorf("held by an explicit lock on %s", first.Root))
}

// refuseVanished answers 423 for a conflict whose locks ended as the
// store read them: there is nothing to name, and a retry in a second
// will likely pass.
func (d *davRequest) refuseVanished(condition string) error {
	d.h.logger.Debug("explicit lock conflict with locks that ended meanwhile", zap.String("key", d.key), zap.String("method", d.r.Method))
	if d.xml {
		d.setRetryAfter(time.Second)
		return d.davError(http.StatusLocked, condition)
	}
	return d.h.writeRefusalTo(d.w, d.r, problem{
		Type:     problemType,
		Title:    "Resource is locked",
		Status:   http.StatusLocked,
		Detail:   fmt.Sprintf("%s %s met locks that ended as they were read; try again", d.r.Method, d.key),
		Instance: d.r.URL.RequestURI(),
	}, time.Second, d.key, errors.New("held by explicit locks that ended meanwhile"))
}

// allBelow reports whether every lock of locks is rooted strictly below
// key: only a depth-infinity LOCK on key meets such locks.
func allBelow(locks []ExplicitLock, key string) bool {
	return len(locks) > 0 && !slices.ContainsFunc(locks, func(l ExplicitLock) bool { return !isBelow(l.Root, key) })
}

// refuseBelow answers a depth-infinity LOCK that locks on resources below
// the request URI keep from being granted, as RFC 4918 section 9.10.6
// (and the example of 9.10.9) says: 207 Multi-Status with a response of
// 423 Locked for each of their roots and one of 424 Failed Dependency for
// the request URI. Retry-After says when the last of them ends unless
// refreshed.
func (d *davRequest) refuseBelow(locks []ExplicitLock) error {
	if len(locks) == 0 {
		return d.refuseExplicit(nil, CondNoConflictingLock)
	}
	d.settle(resultConflict)
	hrefs, retry := lockRoots(locks)
	d.h.logger.Debug("explicit lock conflict below", zap.String("key", d.key),
		zap.String("lock_root", locks[0].Root), zap.String("token", tokenPrefix(locks[0].Token)), zap.Int("locks", len(locks)))
	d.setRetryAfter(retry)
	return d.writeXML(http.StatusMultiStatus, marshalLockFailure(hrefs, d.href()))
}

// marshalLockFailure returns the DAV:multistatus document of a LOCK
// refused for locks below its request URI: a DAV:response with 423 for
// each of blocked, then one with 424 for the request URI. Hrefs are
// unescaped paths, URL-escaped here.
func marshalLockFailure(blocked []string, requestURI string) []byte {
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

// refuseMaintenance refuses a write that an explicit lock covers in a
// zone without webdav, where no client can hold a token: such locks are
// the admin API's maintenance windows. It reports whether it answered.
// It counts the request in the metrics: as result (acquired or waited,
// which ServeHTTP has set as {http.lock.result}) when it passes, by its
// refusal otherwise, so that a refused write is not counted as acquired.
func (h *Handler) refuseMaintenance(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, z *zone, key string, lease Lease, result string) (bool, error) {
	if hint, ok := lease.(explicitHint); ok && !hint.ExplicitLocksInZone() {
		// The grant saw no explicit lock in the zone; one made since
		// then is no different from one made while this write was
		// already in flight.
		h.metrics.count(result)
		return false, nil
	}
	d := &davRequest{h: h, z: z, w: w, r: r, repl: repl, key: key, xml: isDAVClient(r)}
	// With hierarchy a write covers the keys below its own, as the
	// in-flight table has it: locks rooted there are in its way too.
	ls, err := z.explicit.Affecting(r.Context(), key, h.Hierarchy)
	if err != nil {
		if d.failOpen(err) {
			d.settle(resultFailOpen)
			return false, nil
		}
		result := resultUnavailable
		if errors.Is(err, ErrFull) {
			result = resultFull
		}
		err = d.storeFailed(err)
		if !d.counted {
			d.settle(result)
		}
		return true, err
	}
	if len(ls) == 0 {
		h.metrics.count(result)
		return false, nil
	}
	return true, d.refuseExplicit(ls, CondLockTokenSubmitted)
}

// Interface guards
var (
	_ http.ResponseWriter = (*subResponse)(nil)
	_ http.ResponseWriter = (*headerHook)(nil)
	_ http.Flusher        = (*headerHook)(nil)
	_ http.ResponseWriter = (*multiStatusBuffer)(nil)
	_ http.Flusher        = (*multiStatusBuffer)(nil)
)
