// Package caddylock is a Caddy HTTP handler that enforces locks in front of
// a backend: a write to a resource holds an exclusive lock while it is
// proxied, and a conflicting request is answered with 423 Locked before it
// reaches the backend.
package caddylock

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the handler's settings.
const (
	defaultZone    = "default"
	defaultMaxHold = 5 * time.Minute
)

// readMethods take no lock unless the config says otherwise: they do not
// change the resource.
var readMethods = []string{"GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "REPORT", "SEARCH"}

// Handler enforces per-resource locks. A request whose method takes a lock
// holds it for as long as the rest of the route (usually reverse_proxy)
// runs; a request that conflicts with a held lock gets 423 Locked, with
// Retry-After and an application/problem+json body, and never reaches the
// next handler.
type Handler struct {
	// Key identifies the resource a request locks, with placeholders.
	// The result, when it starts with "/", is normalised as a path
	// (percent-decoding, dot segments, repeated and trailing slashes,
	// ;parameters), so that every spelling of a path maps to one key.
	// Default: the request path. The host is left out on purpose: a
	// client could otherwise dodge a lock by varying the Host header;
	// give each backend its own zone instead.
	Key string `json:"key,omitempty"`

	// Exclusive lists the methods that take an exclusive lock. Default:
	// every method except GET, HEAD, OPTIONS, TRACE, PROPFIND, REPORT and
	// SEARCH, so that an unknown method counts as a write.
	Exclusive []string `json:"exclusive,omitempty"`

	// Shared lists the methods that take a shared lock: shared locks
	// coexist, an exclusive lock excludes them. Default: none.
	Shared []string `json:"shared,omitempty"`

	// Hierarchy makes a lock on /a cover everything under /a/ as well
	// (depth infinity), both ways. Default: off.
	Hierarchy bool `json:"hierarchy,omitempty"`

	// CaseInsensitive folds case in the key, for backends that do.
	CaseInsensitive bool `json:"case_insensitive,omitempty"`

	// Wait is how long a conflicting request queues (first in, first
	// out) before it gets 423. A client that goes away leaves the queue
	// at once. Default: 0, answer at once.
	Wait caddy.Duration `json:"wait,omitempty"`

	// MaxWaiters bounds the queue of one key; past it a conflicting
	// request gets 423 at once. Default: 64.
	MaxWaiters int `json:"max_waiters,omitempty"`

	// RetryAfter is the Retry-After value of a refusal. Default:
	// estimated from the recent hold times of locks in the zone, in whole
	// seconds, at least 1.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	// MaxHold is the longest one request may hold a lock; past it the
	// rest of the route (the upstream request) is cancelled, reads of the
	// client's body fail, and the lock is released once the route has
	// returned. Default: 5m.
	MaxHold caddy.Duration `json:"max_hold,omitempty"`

	// MaxWaitBody is the largest request body, in bytes, that a write
	// which conflicts may queue with (wait): a queued write's body is
	// read into memory while it waits, so that a client that leaves is
	// noticed. A larger one gets 423 at once. Default: 1 MiB.
	MaxWaitBody int64 `json:"max_wait_body,omitempty"`

	// MaxLocks bounds held locks plus waiters in the zone; past it a new
	// request is refused with 503. A held lock is never evicted. Default:
	// 100000.
	MaxLocks int `json:"max_locks,omitempty"`

	// MaxLockBytes bounds, in bytes, what the zone's explicit locks
	// (WebDAV LOCK, admin API) keep: each counts its token, path, owner
	// XML and user plus a fixed share (see docs/explicit-lock-limits.md).
	// A lock past it is refused with 503, as past max_locks: an owner may
	// be up to twice max_lock_body, so a count alone bounds nothing.
	// Held locks are never evicted. Default: 64 MiB.
	MaxLockBytes int64 `json:"max_lock_bytes,omitempty"`

	// MaxLocksPerOwner bounds the explicit locks one user
	// ({http.auth.user.id}) holds in the zone; all unauthenticated
	// clients count as one user. A LOCK past it is refused with 503, so
	// that one user cannot take the whole table. Locks taken through the
	// admin API are not counted. Default: 100.
	MaxLocksPerOwner int `json:"max_locks_per_owner,omitempty"`

	// Zone names the lock table. Handlers with the same zone share locks
	// across sites and routes. Default: "default".
	Zone string `json:"zone,omitempty"`

	// UseHandleErrors hands a refusal to Caddy's handle_errors routes
	// (as an error with status 423 or 503) instead of writing the
	// problem+json body, for sites that want their own error page.
	// Retry-After is set either way.
	UseHandleErrors bool `json:"use_handle_errors,omitempty"`

	// WebDAV answers LOCK and UNLOCK (RFC 4918) here and enforces the
	// lock tokens they issue on every write, so that a backend without
	// lock support gets class 2 locking. It keys by path and turns on
	// hierarchy. Default: off.
	WebDAV bool `json:"webdav,omitempty"`

	// MaxTimeout clamps the timeout of a WebDAV lock, also "Infinite".
	// Default: 1h.
	MaxTimeout caddy.Duration `json:"max_timeout,omitempty"`

	// DefaultTimeout is the timeout of a WebDAV lock whose LOCK request
	// has no Timeout header. Default: 10m.
	DefaultTimeout caddy.Duration `json:"default_timeout,omitempty"`

	// MaxLockBody is the largest LOCK request body accepted, in bytes;
	// a larger one gets 413. Default: 65536.
	MaxLockBody int64 `json:"max_lock_body,omitempty"`

	// Store is where the zone's lock tables live: a module of the
	// http.handlers.lock.stores namespace, such as redis, which shares
	// them between Caddy instances. Default: this instance's memory.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.lock.stores inline_key=type"`

	// FenceHeader names a request header that carries the lock's
	// fencing number to the backend (the same value as
	// {http.lock.fence}); a client's own header of that name is always
	// removed. Needs a store that issues fencing numbers (redis).
	FenceHeader string `json:"fence_header,omitempty"`

	// ETags gives a 200 answer to GET or HEAD that has no ETag a strong
	// one computed from its body, so that clients of a backend that sends
	// none can make conditional writes (see docs/etags.md). Answers past
	// etag_max_size, ranges and content-encoded answers get none. A HEAD
	// is asked of the backend as a GET, whose body is dropped. Default: off.
	ETags bool `json:"etags,omitempty"`

	// ETagMaxSize is the largest body, in bytes, that etags buffers to
	// hash. Default: 1 MiB.
	ETagMaxSize int64 `json:"etag_max_size,omitempty"`

	// RequireIfMatch refuses a write (a method that takes an exclusive
	// lock) that carries none of If-Match, If-Unmodified-Since and
	// If-None-Match: * with 428 Precondition Required, so that no client
	// can overwrite a version it never read. Default: off.
	RequireIfMatch bool `json:"require_if_match,omitempty"`

	// VerifyETag evaluates a write's If-Match, If-None-Match and
	// If-Unmodified-Since here, under the write's exclusive lock, against
	// the validators the server gives the resource now (one HEAD through
	// the route, or GET with etags): 412 when one fails, and the write
	// never reaches the backend. For backends that ignore them. Default: off.
	VerifyETag bool `json:"verify_etag,omitempty"`

	// VerifyETagGET makes verify_etag ask with GET rather than HEAD, for
	// backends whose HEAD answers lack or differ in their validators.
	VerifyETagGET bool `json:"verify_etag_get,omitempty"`

	// Source is where the handler was configured (file:line), set by
	// the Caddyfile adapter: errors that only the whole config shows,
	// such as handlers of one zone that disagree, name it.
	Source string `json:"source,omitempty"`

	store   lockstore.Store
	trouble *troubleLog
	kinds   map[string]lockstore.Kind // method -> kind; absent takes no lock unless defaultExclusive
	defExcl bool                      // methods not listed take an exclusive lock
	zone    *zone
	shared  *zoneSettings // this handler's part in the zone's settings
	metrics zoneMetrics
	reaper  *holdReaper // ends granted requests at max_hold
	logger  *zap.Logger
	// keyParts are the key's placeholders that a request can repeat.
	keyParts keyParts
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.lock",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler and attaches it to its zone's lock table.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Zone == "" {
		h.Zone = defaultZone
	}
	if h.MaxHold == 0 {
		h.MaxHold = caddy.Duration(defaultMaxHold)
	}
	if h.WebDAV {
		h.provisionDAV()
	}
	h.kinds = make(map[string]lockstore.Kind)
	h.defExcl = len(h.Exclusive) == 0
	for _, m := range h.Exclusive {
		h.kinds[strings.ToUpper(m)] = lockstore.Exclusive
	}
	for _, m := range h.Shared {
		h.kinds[strings.ToUpper(m)] = lockstore.Shared
	}
	h.trouble = new(troubleLog)
	h.keyParts = parseKeyParts(h.Key)
	if h.StoreRaw != nil {
		mod, err := ctx.LoadModule(h, "StoreRaw")
		if err != nil {
			return fmt.Errorf("lock zone %q: loading store: %w", h.Zone, err)
		}
		h.store = mod.(lockstore.Store)
	} else {
		h.store = new(memoryStore)
	}
	if _, inMemory := h.store.(*memoryStore); inMemory && h.FenceHeader != "" {
		return fmt.Errorf("lock: fence_header %q needs a store that issues fencing numbers, such as store redis", h.FenceHeader)
	}
	poolKey := zoneTableKey(h.Zone, h.Hierarchy, h.store)
	if err := checkZoneTable(ctx, h, poolKey); err != nil {
		return err
	}
	z, _, err := loadZone(poolKey, h.Zone, h.Hierarchy, h.store)
	if err != nil {
		h.logger.Error("provisioning lock zone", zap.String("zone", h.Zone), zap.Error(err))
		return fmt.Errorf("lock zone %q: %w", h.Zone, err)
	}
	h.zone = z
	h.shared = h.settingsOf(z)
	h.shared.attach()
	h.metrics = registerMetrics(ctx, h.logger, h.Zone)
	h.reaper = newHoldReaper(time.Duration(h.MaxHold), h.metrics.held)
	// Instances sharing the zone in a store must read keys alike, as
	// checkZoneTable has the handlers of one config do.
	if a, ok := z.locker.(zoneAgreer); ok {
		if err := a.Agree(ctx, h.CaseInsensitive); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	seen := make(map[string]string)
	for list, methods := range map[string][]string{"exclusive": h.Exclusive, "shared": h.Shared} {
		for _, m := range methods {
			if !validMethod(m) {
				return fmt.Errorf("lock: %s: %q is not an HTTP method", list, m)
			}
			um := strings.ToUpper(m)
			if other, ok := seen[um]; ok && other != list {
				return fmt.Errorf("lock: method %s is listed as both exclusive and shared", um)
			}
			seen[um] = list
		}
	}
	for name, d := range map[string]caddy.Duration{"wait": h.Wait, "retry_after": h.RetryAfter, "max_hold": h.MaxHold} {
		if d < 0 {
			return fmt.Errorf("lock: %s must not be negative, got %s", name, time.Duration(d))
		}
	}
	if h.MaxLocks < 0 || h.MaxWaiters < 0 {
		return fmt.Errorf("lock: max_locks and max_waiters must not be negative")
	}
	if h.MaxLockBytes < 0 || h.MaxLocksPerOwner < 0 {
		return fmt.Errorf("lock: max_lock_bytes and max_locks_per_owner must not be negative")
	}
	if strings.Contains(h.Zone, "/") {
		// The admin API could not name the zone: /lock/<zone>/<token>.
		return fmt.Errorf("lock: zone: %q must not contain '/'", h.Zone)
	}
	if h.FenceHeader != "" && !validMethod(h.FenceHeader) { // header names are RFC 9110 tokens too
		return fmt.Errorf("lock: fence_header: %q is not a valid header name", h.FenceHeader)
	}
	if err := h.validateETags(); err != nil {
		return err
	}
	return h.validateDAV()
}

// Cleanup lets go of the zone; its locks live on while another config
// (the one replacing this one on a reload) still uses it.
//
// h.zone stays set: Caddy unloads a config while its requests may still
// be running in this handler, and they go on using the zone (which
// Destruct keeps usable until they are done).
func (h *Handler) Cleanup() error {
	if h.zone == nil {
		return nil
	}
	h.shared.detach()
	_, err := zones.Delete(h.zone.poolKey)
	return err
}

// validMethod tells whether m is an RFC 9110 token, as method and header
// names must be.
func validMethod(m string) bool { return httpguts.ValidHeaderFieldName(m) }

// kindOf returns the lock a method takes, and false for none. Methods are
// compared upper-cased, as the lists are kept: HTTP methods are
// case-sensitive, but frameworks that upper-case them would take "put"
// for a PUT, so it must not pass a lock that PUT takes.
func (h *Handler) kindOf(method string) (lockstore.Kind, bool) {
	method = strings.ToUpper(method) // no copy when already upper-case
	if k, ok := h.kinds[method]; ok {
		return k, true
	}
	if h.defExcl && !slices.Contains(readMethods, method) {
		return lockstore.Exclusive, true
	}
	return 0, false
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	next = h.withETags(r, next) // etags (etag.go): sub-requests' answers too
	if h.passesSub(r) {
		// A request this zone's WebDAV handling makes for a client,
		// under the locks of the client's request (see davRequest.sub).
		return next.ServeHTTP(w, r)
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	// The method overrides count, and path-rewriting headers go (override.go).
	kind, ok, davMethod, amb := h.requestKind(r)
	if amb != nil {
		return h.refuseAmbiguous(w, r, repl, amb)
	}
	if h.heldBefore(r, repl, kind, ok) {
		// A lock handler earlier in the route (a site-wide one, say)
		// holds this lock for this request (or one of the zone, and this
		// handler takes none for the method): taking it again would
		// conflict with itself. Its placeholders and fence header stand;
		// this handler's fence header carries the held lock's number, not
		// a client's, which the earlier handler did not know to remove.
		if h.FenceHeader != "" {
			if fence, _ := repl.GetString("http.lock.fence"); fence != "" {
				r.Header.Set(h.FenceHeader, fence)
			} else {
				r.Header.Del(h.FenceHeader)
			}
		}
		// This handler's preconditions, under the held lock (precondition.go).
		if answered, err := h.checkHeldPreconditions(w, r, repl, kind, ok); answered {
			return err
		}
		return next.ServeHTTP(w, r)
	}
	if h.FenceHeader != "" {
		r.Header.Del(h.FenceHeader) // only the lock sets it
	}
	if !ok && !h.WebDAV {
		setNoLockPlaceholders(repl) // placeholders.go
		h.metrics.count(resultNone)
		return next.ServeHTTP(w, r)
	}
	repl.Set("http.lock.fence", "")
	// Set on every path, also where webdav takes no in-flight lock.
	repl.Set("http.lock.wait", time.Duration(0))
	z := h.zone
	if z.drain {
		var borrowed bool
		var err error
		if z, borrowed, err = h.enter(); err != nil {
			return caddyhttp.Error(http.StatusServiceUnavailable, err)
		}
		defer h.leave(z, borrowed)
	}
	if r.URL.Path == "" {
		// An absolute-form target without a path (PUT http://host):
		// it goes upstream as "/", so it locks "/".
		r.URL.Path = "/"
	}
	if h.keyParts != nil {
		// A key part the request gives twice (keyparts.go).
		if amb := h.keyParts.check(r); amb != nil {
			return h.refuseAmbiguous(w, r, repl, amb)
		}
	}
	key, err := h.keyOf(r, repl)
	if err != nil {
		repl.Set("http.lock.key", key)
		if err == errNULKey {
			return h.refuse(w, r, repl, key, err)
		}
		return h.refuse(w, r, repl, r.URL.Path, err)
	}
	if h.WebDAV {
		repl.Set("http.lock.key", key)
		return h.serveDAV(w, r, next, repl, z, key, davMethod, kind, ok)
	}

	a := acquisition{conflictHere: true}
	if err := h.acquire(&a, w, r, repl, z, key, lockstore.Request{Key: key, Kind: kind}); err != nil {
		repl.Set("http.lock.key", key)
		if err == errConflictInto {
			return h.refuseWith(w, r, repl, key, nil, &a.conflict)
		}
		return h.refuse(w, r, repl, key, err)
	}
	defer a.release()
	if a.result == resultFailOpen {
		repl.Set("http.lock.key", key)
		if err := a.ready(); err != nil {
			return a.bw.abandon(key, err)
		}
		h.passUnchecked(repl, kind) // no lock, no precondition check
		return h.failOpen(w, r, repl, key, a.storeErr, next)
	}
	// Constant strings: a placeholder set from a variable would allocate.
	if a.result == resultWaited {
		repl.Set("http.lock.result", resultWaited)
	} else {
		repl.Set("http.lock.result", resultAcquired)
	}
	a.hc.zone, a.hc.key, a.hc.kind = z, heldKey(key), kind
	// The key of a granted request is its hold's: a string set as a
	// placeholder would be boxed, an allocation per locked write.
	repl.Set("http.lock.key", &a.hc.key)
	// A write the precondition check may refuse is counted after it.
	checked := h.checksPreconditions(kind)
	if kind == lockstore.Exclusive {
		// It counts the request, by how it ends.
		if refused, err := h.refuseMaintenance(w, r, repl, z, key, a.lease, countNow(a.result, checked)); refused {
			return err
		}
	} else {
		h.metrics.count(a.result)
	}
	if err := a.ready(); err != nil {
		h.countChecked(repl, checked)
		return a.settle(w, key, a.bw.abandon(key, err))
	}
	aw := a.writer(w)
	// require_if_match, verify_etag (precondition.go), under the lock:
	// see acquisition.ready. A refusal is counted by its result.
	if answered, err := h.checkPreconditions(a.hc, aw, r, repl, z, key, kind == lockstore.Exclusive); answered {
		return a.settle(w, key, err)
	}
	h.countChecked(repl, checked)
	return a.settle(w, key, serveOn(a.ctx, aw, r, next))
}

// serveOn runs the rest of the route on ctx. The request is switched to
// ctx in place, and back when the route returns, rather than copied with
// WithContext: a copy is 320 bytes allocated per locked write, and
// Caddy's own handlers change the request in place as it goes down the
// route (rewrite, method, request_body), so a handler before this one
// sees nothing it would not see otherwise once the route has returned.
func serveOn(ctx context.Context, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	orig := r.Context()
	*r = *r.WithContext(ctx)
	defer func() { *r = *r.WithContext(orig) }()
	return next.ServeHTTP(w, r)
}

// heldBefore reports whether r holds, through a lock handler of this
// zone earlier in its route, a lock that this handler has nothing to add
// to: the lock it would take (kind, when locks), or any lock when it takes
// none for the method.
func (h *Handler) heldBefore(r *http.Request, repl *caddy.Replacer, kind lockstore.Kind, locks bool) bool {
	if h.WebDAV {
		return false
	}
	c := heldIn(r.Context(), h.zone)
	if c == nil || c.released.Load() {
		return false
	}
	if !locks {
		return true
	}
	key, err := h.keyOf(r, repl)
	return err == nil && (c.kind == lockstore.Exclusive || kind == lockstore.Shared) && string(c.key) == key
}

// heldIn is the hold of zone z that ctx runs under, nil if none. The
// hold ctx answers with is the last one taken, by the last lock handler
// of the route, which may be of another zone (or a WebDAV one, of none):
// the earlier holds are behind it, each in the context its successor was
// granted in.
func heldIn(ctx context.Context, z *zone) *holdContext {
	c, _ := ctx.Value(heldLockKey{}).(*holdContext)
	for c != nil && c.zone != z {
		c, _ = c.base.values.Value(heldLockKey{}).(*holdContext)
	}
	return c
}

// keyOf computes the lock key of a request, or a *pathError for a path
// that backends may read as different resources, or the key and
// errNULKey (see lockKey). The path key is that of
// the target as it goes upstream, still encoded (Caddy forwards it byte
// for byte): Go's URL.Path has decoded it once already, which would hide
// the reading of a backend that resolves dot segments before decoding.
func (h *Handler) keyOf(r *http.Request, repl *caddy.Replacer) (string, error) {
	k := r.URL.Path
	if h.Key != "" && h.Key != pathKeyTemplate {
		k = repl.ReplaceAll(h.Key, "")
	} else if r.URL.RawPath != "" || !isCleanPath(k) {
		k = r.URL.EscapedPath()
	}
	return lockKey(k, h.CaseInsensitive)
}

// foldCase is the case folding of case_insensitive, for every key: request
// paths, paths in headers and the admin API's. Upper- then lower-casing
// folds the letters that have several lower-case forms (ſ and s, ς and
// σ, ı and i) to one.
func foldCase(k string) string {
	return strings.ToLower(strings.ToUpper(k))
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
