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
