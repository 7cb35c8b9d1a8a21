// Package caddylock is a Caddy HTTP handler that enforces locks in front of
// a backend: a write to a resource holds an exclusive lock while it is
// proxied, and a conflicting request is answered with 423 Locked before it
// reaches the backend.
package caddylock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the handler's settings.
const (
	DefaultZone    = "default"
	DefaultMaxHold = 5 * time.Minute
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

	store   Store
	trouble *troubleLog
	kinds   map[string]Kind // method -> kind; absent takes no lock unless defaultExclusive
	defExcl bool            // methods not listed take an exclusive lock
	zone    *zone
	shared  *zoneSettings // this handler's part in the zone's settings
	metrics zoneMetrics
	reaper  *holdReaper // ends granted requests at max_hold
	logger  *zap.Logger
	// keyParts are the key's placeholders that a request can repeat.
	keyParts keyParts
	// preconditions count {http.lock.precondition} (precondition.go).
	preconditions map[string]prometheus.Counter
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
		h.Zone = DefaultZone
	}
	if h.MaxHold == 0 {
		h.MaxHold = caddy.Duration(DefaultMaxHold)
	}
	if h.WebDAV {
		h.provisionDAV()
	}
	h.kinds = make(map[string]Kind)
	h.defExcl = len(h.Exclusive) == 0
	for _, m := range h.Exclusive {
		h.kinds[strings.ToUpper(m)] = Exclusive
	}
	for _, m := range h.Shared {
		h.kinds[strings.ToUpper(m)] = Shared
	}
	h.trouble = new(troubleLog)
	h.keyParts = parseKeyParts(h.Key)
	if h.StoreRaw != nil {
		mod, err := ctx.LoadModule(h, "StoreRaw")
		if err != nil {
			return fmt.Errorf("lock zone %q: loading store: %w", h.Zone, err)
		}
		h.store = mod.(Store)
	}
	if h.FenceHeader != "" && h.store == nil {
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
	h.preconditions = registerPreconditionMetrics(ctx, h.logger, h.Zone)
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

// zoneAgreer is implemented by lockers shared between Caddy instances,
// which refuse an instance whose settings differ from another's.
type zoneAgreer interface {
	Agree(ctx context.Context, caseInsensitive bool) error
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

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range m {
		// RFC 9110 token characters.
		if c > 0x7e || c <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	return true
}

// kindOf returns the lock a method takes, and false for none. Methods are
// compared upper-cased, as the lists are kept: HTTP methods are
// case-sensitive, but frameworks that upper-case them would take "put"
// for a PUT, so it must not pass a lock that PUT takes.
func (h *Handler) kindOf(method string) (Kind, bool) {
	method = strings.ToUpper(method) // no copy when already upper-case
	if k, ok := h.kinds[method]; ok {
		return k, true
	}
	if h.defExcl && !slices.Contains(readMethods, method) {
		return Exclusive, true
	}
	return 0, false
}

// queued reports whether lease was granted after its request waited in
// the queue: that, not how long Acquire took, makes the result "waited".
func queued(lease Lease) bool {
	q, ok := lease.(QueuedLease)
	return ok && q.Queued()
}

// Placeholder values of {http.lock.result}.
const (
	resultAcquired = "acquired"
	resultWaited   = "waited"
	resultConflict = "conflict"
	resultFull     = "full"
	resultNone     = "none"
)

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
		return next.ServeHTTP(w, r)
	}
	repl.Set("http.lock.fence", "")
	// Set on every path, also where webdav takes no in-flight lock.
	repl.Set("http.lock.wait", time.Duration(0))
	if h.FenceHeader != "" {
		r.Header.Del(h.FenceHeader) // only the lock sets it
	}
	if !ok && !h.WebDAV {
		repl.Set("http.lock.key", "")
		repl.Set("http.lock.result", resultNone)
		h.metrics.count(resultNone)
		return next.ServeHTTP(w, r)
	}
	z := h.zone
	if z.close != nil {
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
	repl.Set("http.lock.key", key)
	if err != nil {
		return h.refuse(w, r, repl, r.URL.Path, err)
	}
	if strings.IndexByte(key, 0) >= 0 {
		return h.refuse(w, r, repl, key, errNULKey)
	}
	if h.WebDAV {
		return h.serveDAV(w, r, next, repl, z, key, davMethod, kind, ok)
	}

	start := time.Now()
	// A write that queues reads its body meanwhile, so that a client
	// that leaves leaves the queue (see bodyWait).
	abort := abortReads(w, r) // for max_hold; before anything reads the body
	bw := h.newBodyWait(w, r)
	defer bw.end()
	lease, err := bw.acquire(z.locker, Request{Key: key, Kind: kind, Wait: time.Duration(h.Wait)})
	waited := h.recordWait(repl, start)
	if err != nil {
		if errors.Is(err, ErrStoreUnavailable) && h.store != nil && h.store.FailOpen() {
			// With the body it may have begun to read.
			if err := bw.ready(r.Context()); err != nil {
				return bw.abandon(key, err)
			}
			return h.failOpen(w, r, repl, key, err, next)
		}
		bw.end() // before the answer: see bodyWait.stop
		return h.refuse(w, r, repl, key, err)
	}
	h.granted(r, repl, lease)
	// Constant strings: a placeholder set from a variable would allocate.
	result := resultAcquired
	if queued(lease) {
		result = resultWaited
		repl.Set("http.lock.result", resultWaited)
	} else {
		repl.Set("http.lock.result", resultAcquired)
	}

	// The rest of the route runs on a context that a departing client
	// does not cancel, and that max_hold ends (see hold.go); the lock is
	// released when the route has returned.
	hc := h.reaper.hold(r.Context(), start.Add(waited), lease, abort)
	hc.zone, hc.key, hc.kind = z, key, kind
	guard, ctx := h.guardLease(hc, hc, lease, key)
	defer func() {
		guard.stop()
		hc.finish()
	}()
	if kind == Exclusive {
		// It counts the request, by how it ends.
		if refused, err := h.refuseMaintenance(w, r, repl, z, key, lease, result); refused {
			return err
		}
	} else {
		h.metrics.count(result)
	}
	// A write that queued goes on only with its whole body and its
	// client still there.
	if err := bw.ready(ctx); err != nil {
		return guard.settle(w, key, bw.abandon(key, err))
	}
	// require_if_match, verify_etag (precondition.go), under the lock.
	if answered, err := h.checkPreconditions(hc, guard.writer(w), r, repl, z, key, kind == Exclusive); answered {
		return guard.settle(w, key, err)
	}
	return guard.settle(w, key, next.ServeHTTP(guard.writer(w), r.WithContext(ctx)))
}

// recordWait records how long a request waited for its locks since
// start, whether it got them or not: as {http.lock.wait}, and in the wait
// histogram of a zone with wait.
func (h *Handler) recordWait(repl *caddy.Replacer, start time.Time) time.Duration {
	waited := time.Since(start)
	repl.Set("http.lock.wait", waited)
	if h.Wait > 0 {
		h.metrics.wait.Observe(waited.Seconds())
	}
	return waited
}

// heldBefore reports whether r holds, through a lock handler of this
// zone earlier in its route, a lock that this handler has nothing to add
// to: the lock it would take (kind, when locks), or any lock when it takes
// none for the method.
func (h *Handler) heldBefore(r *http.Request, repl *caddy.Replacer, kind Kind, locks bool) bool {
	if h.WebDAV {
		return false
	}
	c, ok := r.Context().Value(heldLockKey{}).(*holdContext)
	if !ok || c.zone != h.zone || c.released.Load() {
		return false
	}
	if !locks {
		return true
	}
	key, err := h.keyOf(r, repl)
	return err == nil && (c.kind == Exclusive || kind == Shared) && c.key == key
}

// enter returns the zone that a request in a handler whose zone has a
// store to close uses, counted as under way until leave. Caddy unloads a
// config while requests may still be on their way to this handler (in a
// forward_auth before it, say), and the zone's store may be closed once
// the requests that were here are done: a request that comes after that
// borrows the zone's tables, opened again with this handler's settings,
// for its own duration.
func (h *Handler) enter() (z *zone, borrowed bool, err error) {
	z = h.zone
	z.active.Add(1)
	// After the count: Destruct marks the zone unloaded before it reads
	// the count, so either it sees this request or this request sees the
	// mark.
	if !z.unloaded.Load() {
		return z, false, nil
	}
	z.active.Add(-1)
	z, loaded, err := loadZone(z.poolKey, z.name, h.Hierarchy, h.store)
	if err != nil {
		return nil, false, fmt.Errorf("lock zone %q: opening the tables of an unloaded config again: %w", h.Zone, err)
	}
	if !loaded {
		// Tables of this request alone: the settings of its handler,
		// not those in force for the zone's name.
		settingsMu.Lock()
		h.settingsOf(z).apply()
		settingsMu.Unlock()
	}
	return z, true, nil
}

// leave ends a request's use of the zone that enter returned.
func (h *Handler) leave(z *zone, borrowed bool) {
	if !borrowed {
		z.active.Add(-1)
		return
	}
	if _, err := zones.Delete(z.poolKey); err != nil {
		h.logger.Warn("letting go of the tables of an unloaded config", zap.String("zone", h.Zone), zap.Error(err))
	}
}

// keyOf computes the lock key of a request, or a *pathError for a path
// that backends may read as different resources. The path key is that of
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
	if strings.HasPrefix(k, "/") {
		var err error
		if k, err = pathKey(k); err != nil {
			return "", err
		}
	}
	if h.CaseInsensitive {
		k = foldCase(k)
	}
	return k, nil
}

// foldCase is the case folding of case_insensitive, for every key: request
// paths, paths in headers and the admin API's. Upper- then lower-casing
// folds the letters that have several lower-case forms (ſ and s, ς and
// σ, ı and i) to one.
func foldCase(k string) string {
	return strings.ToLower(strings.ToUpper(k))
}

// zones holds the lock tables by zone, outside of handler instances, so
// that a reloaded config (which Caddy provisions before it stops the old
// one) sees the locks that requests under the old config still hold.
var zones = caddy.NewUsagePool()

type zone struct {
	poolKey string
	name    string
	locker  Locker
	// explicit holds the zone's WebDAV and admin locks.
	explicit LockStore
	// close lets go of a store's connections; nil in memory.
	close func() error
	// active counts the requests under way in handlers of this zone (when
	// it has a close) and the admin API calls using it: Destruct closes
	// the store only once they are done, since Caddy unloads a config
	// while its requests may still run.
	active atomic.Int64
	// unloaded is set by Destruct, once no loaded config uses the zone;
	// requests that reach its handlers after that do not use it (see
	// enter).
	unloaded atomic.Bool
	// caseInsensitive is that of the settings in force, for paths given
	// to the admin API.
	caseInsensitive atomic.Bool
}

// zoneSettings are what each handler of a zone states but the zone has
// only once: its limits, and case folding for the admin API.
type zoneSettings struct {
	z                    *zone // the handler's table
	maxLocks, maxWaiters int
	maxLockBytes         int64
	maxLocksPerOwner     int
	caseInsensitive      bool
}

var (
	settingsMu sync.Mutex
	// zoneSettingsOf lists, by zone name, the settings of the zone's
	// handlers in the order they were provisioned, each until it is
	// cleaned up; the last one is in force. By name, not by table: the
	// tables of one name share their explicit locks (see memExplicit).
	zoneSettingsOf = map[string][]*zoneSettings{}
)

// settingsOf is this handler's settings for its table z.
func (h *Handler) settingsOf(z *zone) *zoneSettings {
	return &zoneSettings{z: z, maxLocks: h.MaxLocks, maxWaiters: h.MaxWaiters, caseInsensitive: h.CaseInsensitive,
		maxLockBytes: h.MaxLockBytes, maxLocksPerOwner: h.MaxLocksPerOwner}
}

// attach puts s in force; the handler provisioned last sets the zone's
// settings.
func (s *zoneSettings) attach() {
	settingsMu.Lock()
	defer settingsMu.Unlock()
	zoneSettingsOf[s.z.name] = append(zoneSettingsOf[s.z.name], s)
	s.apply()
}

// detach forgets s, of a handler being cleaned up. When s was in force,
// the settings of the handler provisioned before it (still loaded) come
// back: a reload that fails after provisioning some handlers must not
// leave their settings on the config that goes on running.
func (s *zoneSettings) detach() {
	settingsMu.Lock()
	defer settingsMu.Unlock()
	list := zoneSettingsOf[s.z.name]
	i := slices.Index(list, s)
	if i < 0 {
		return
	}
	list = slices.Delete(list, i, i+1)
	if len(list) == 0 {
		delete(zoneSettingsOf, s.z.name)
		return
	}
	zoneSettingsOf[s.z.name] = list
	if i == len(list) {
		list[i-1].apply()
	}
}

// apply sets the zone's tables to s; settingsMu is held.
func (s *zoneSettings) apply() {
	z := s.z
	if ls, ok := z.locker.(limitSetter); ok {
		ls.SetLimits(s.maxLocks, s.maxWaiters)
	}
	z.caseInsensitive.Store(s.caseInsensitive)
	if m, ok := z.explicit.(interface{ SetMax(int) }); ok {
		m.SetMax(s.maxLocks)
	}
	if b, ok := z.explicit.(interface{ SetBudget(int64, int) }); ok {
		b.SetBudget(s.maxLockBytes, s.maxLocksPerOwner)
	}
}

// memExplicit holds the in-memory explicit lock stores by zone name.
// Explicit locks do not depend on what gives a zone's in-flight locks a
// new table (hierarchy), so all in-memory tables of one name share one
// store: a reload that changes hierarchy keeps the zone's WebDAV and
// maintenance locks. (In Redis they are kept by the zone's name anyway.)
var memExplicit = caddy.NewUsagePool()

// memExplicitStore is a MemLockStore in memExplicit.
type memExplicitStore struct{ *MemLockStore }

// Destruct implements caddy.Destructor: it stops the expiry timer.
func (s memExplicitStore) Destruct() error {
	s.Close()
	return nil
}

// Destruct implements caddy.Destructor: it lets go of the explicit store
// in memory, and of the store's connections otherwise.
func (z *zone) Destruct() error {
	if z.close == nil {
		_, err := memExplicit.Delete(z.name)
		return err
	}
	z.unloaded.Store(true)
	if z.active.Load() == 0 {
		return z.close()
	}
	// Each request still under way is bounded by its handler's max_hold
	// and by the store's timeout per call.
	go func() {
		for z.active.Load() > 0 {
			time.Sleep(zoneIdlePoll)
		}
		if err := z.close(); err != nil {
			caddy.Log().Named("http.handlers.lock").Warn("closing a lock zone's store", zap.String("zone", z.name), zap.Error(err))
		}
	}()
	return nil
}

// zoneIdlePoll is how often an unloaded zone looks whether its last
// request is done.
const zoneIdlePoll = 100 * time.Millisecond

// zoneTableKey is the pool key of a zone's table. The hierarchy flag is
// part of the table's structure, so a zone whose hierarchy setting
// changes starts a new table; so does one whose store configuration
// changes.
func zoneTableKey(name string, hierarchy bool, store Store) string {
	poolKey := name
	if hierarchy {
		poolKey += "\x00hierarchy"
	}
	if store != nil {
		poolKey += "\x00" + store.TableKey()
	}
	return poolKey
}

// configZones records, per loaded config (by its context), the table key
// and case folding of each zone name that its handlers use.
var configZones sync.Map // context.Context → *sync.Map of zone name → zoneShape

// checkZoneTable makes two handlers of one config that name one zone but
// would get different tables (one with hierarchy, as webdav implies, one
// without; or different stores), or fold case differently, a config
// error: they would not see each other's locks, and nothing else would
// say so.
func checkZoneTable(ctx caddy.Context, h *Handler, poolKey string) error {
	v, loaded := configZones.LoadOrStore(ctx.Context, new(sync.Map))
	if !loaded {
		// The record goes when the config is unloaded (or fails to
		// load), which cancels its context. Not ctx.OnCancel: Caddy
		// never runs what is added to the copy of the context a module
		// gets, so every load would leave its record behind.
		key := ctx.Context
		context.AfterFunc(key, func() { configZones.Delete(key) })
	}
	this := zoneShape{poolKey, h.CaseInsensitive, h.Hierarchy, h.WebDAV, h.Source}
	prev, ok := v.(*sync.Map).LoadOrStore(h.Zone, this)
	if !ok {
		return nil
	}
	p := prev.(zoneShape)
	switch {
	case p.hierarchy != this.hierarchy:
		return fmt.Errorf("lock zone %q: its handlers differ in hierarchy: %s has %s, %s has %s, "+
			"so they would keep separate lock tables and not see each other's locks; give them the same settings "+
			"or different zone names", h.Zone, p.where("one"), p.hierarchyValue(), this.where("another"), this.hierarchyValue())
	case p.poolKey != this.poolKey:
		return fmt.Errorf("lock zone %q: its handlers differ in store settings (%s and %s), "+
			"so they would keep separate lock tables and not see each other's locks; give them the same settings "+
			"or different zone names", h.Zone, p.where("one"), this.where("another"))
	case p.caseInsensitive != this.caseInsensitive:
		return fmt.Errorf("lock zone %q: its handlers differ in case_insensitive: %s has it %s, %s has it %s, "+
			"so one would lock /Doc and the other /doc for one resource and neither would see the other's lock; "+
			"give them the same setting or different zone names",
			h.Zone, p.where("one"), onOff(p.caseInsensitive), this.where("another"), onOff(this.caseInsensitive))
	}
	return nil
}

// zoneShape is what the handlers of one zone in one config must agree
// on, and which handler set it, to name both when another disagrees.
type zoneShape struct {
	poolKey         string
	caseInsensitive bool
	hierarchy       bool
	webdav          bool
	source          string // Handler.Source
}

// where names the handler: by its place in the Caddyfile when it came
// from one, else (JSON has no lines) as nth lock handler of the zone.
func (s zoneShape) where(nth string) string {
	if s.source != "" {
		return "the lock at " + s.source
	}
	return nth + " lock handler"
}

func (s zoneShape) hierarchyValue() string {
	if s.webdav {
		return "hierarchy on (webdav turns it on)"
	}
	return "hierarchy " + onOff(s.hierarchy)
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// loadZone returns the zone's table under poolKey (from zoneTableKey),
// opening it if nothing uses it yet; loaded tells that something did.
func loadZone(poolKey, name string, hierarchy bool, store Store) (z *zone, loaded bool, err error) {
	v, loaded, err := zones.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		if store == nil {
			x, _, err := memExplicit.LoadOrNew(name, func() (caddy.Destructor, error) {
				return memExplicitStore{NewMemLockStore(0)}, nil
			})
			if err != nil {
				return nil, fmt.Errorf("explicit lock store: %w", err)
			}
			return &zone{poolKey: poolKey, name: name, locker: NewMemLocker(hierarchy, 0, 0), explicit: x.(memExplicitStore).MemLockStore}, nil
		}
		t, err := store.OpenZone(name, hierarchy)
		if err != nil {
			return nil, err
		}
		return &zone{poolKey: poolKey, name: name, locker: t.Locker, explicit: t.Explicit, close: t.Close}, nil
	})
	if err != nil {
		return nil, false, err
	}
	return v.(*zone), loaded, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
