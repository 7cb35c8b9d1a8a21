package caddylock

// The admin API (module admin.api.lock, on Caddy's admin endpoint): list
// every lock, take a maintenance lock, force-unlock. It reaches the zones
// through the package-level pool, since admin modules never see handler
// instances.

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI serves /lock/ on Caddy's admin endpoint, and is protected as
// that endpoint is (localhost by default, or remote admin's access
// control):
//
//	GET    /lock/                  every lock of every zone, as JSON
//	POST   /lock/<zone>            take an explicit lock (a maintenance window)
//	DELETE /lock/<zone>/<token>    force-unlock; a unique token prefix will do
type AdminAPI struct {
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.lock",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Provision sets up the logger. Caddy provisions admin routers outside
// any module, so the module is named: otherwise the logger is Caddy's
// default one, without this module's name, which logs' include and
// exclude lists cannot select.
func (a *AdminAPI) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger(a)
	return nil
}

// Routes implements caddy.AdminRouter.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/lock/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// minTokenPrefix is the shortest token prefix DELETE accepts: the scheme
// and 8 hex digits, as GET lists them.
const minTokenPrefix = len("urn:uuid:") + 8

func (a *AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, "/lock/")
	zoneName, token, hasToken := strings.Cut(rest, "/")
	switch {
	case r.Method == http.MethodGet && rest == "":
		return a.list(w, r)
	case r.Method == http.MethodPost && zoneName != "" && !hasToken:
		return a.create(w, r, zoneName)
	case r.Method == http.MethodDelete && zoneName != "" && token != "":
		return a.remove(w, r, zoneName, token)
	}
	return caddy.APIError{
		HTTPStatus: http.StatusNotFound,
		Err:        fmt.Errorf("%s %s: expected GET /lock/, POST /lock/<zone> or DELETE /lock/<zone>/<token>", r.Method, r.URL.Path),
	}
}

// adminLock is one lock in the listing.
type adminLock struct {
	Zone  string `json:"zone"`
	Root  string `json:"root"`
	Href  string `json:"href,omitempty"`
	Scope string `json:"scope"`
	Depth string `json:"depth"`
	// Owner is the DAV:owner content (XML) of a WebDAV lock, or the
	// owner given to the admin API.
	Owner   string `json:"owner,omitempty"`
	Creator string `json:"creator,omitempty"`
	// TokenPrefix identifies the lock for DELETE without revealing the
	// token.
	TokenPrefix string     `json:"token_prefix,omitempty"`
	Created     time.Time  `json:"created"`
	Expires     *time.Time `json:"expires,omitempty"`
	// InFlight marks a lock held by a request being proxied; Holders
	// counts the requests holding it and Waiting those queued for it.
	InFlight bool `json:"in_flight,omitempty"`
	Holders  int  `json:"holders,omitempty"`
	Waiting  int  `json:"waiting,omitempty"`
}

func explicitEntry(zone string, l lockstore.ExplicitLock) adminLock {
	e := adminLock{
		Zone: zone, Root: l.Root, Href: l.Href, Scope: l.Scope.String(), Depth: l.Depth.String(),
		Owner: string(l.Owner), Creator: l.Creator, TokenPrefix: tokenPrefix(l.Token), Created: l.Created,
	}
	if l.Creator == lockstore.AdminCreator {
		e.Creator = "admin"
		e.Owner = xmlText(l.Owner)
	}
	exp := l.Expires
	e.Expires = &exp
	return e
}

// zonesNamed returns the live zones with this name (two while a reload
// changes the zone's hierarchy or store settings), every zone for "", and
// holds them in use until done is called: a reload may unload a zone
// while an admin call (a drain, for one) still reads it, and its store
// must stay open until then.
func zonesNamed(name string) (zs []*zone, done func()) {
	zones.Range(func(_, v any) bool {
		if z := v.(*zone); name == "" || z.name == name {
			// Under the pool's lock: a zone seen here is not unloaded
			// yet, and its Destruct will see it in use.
			z.active.Add(1)
			zs = append(zs, z)
		}
		return true
	})
	return zs, func() {
		for _, z := range zs {
			z.active.Add(-1)
		}
	}
}

func (a *AdminAPI) list(w http.ResponseWriter, r *http.Request) error {
	out := []adminLock{}
	// Two tables of one zone (while a reload changes its hierarchy) hold
	// the same explicit locks.
	listed := map[string]bool{}
	zs, done := zonesNamed("")
	defer done()
	for _, z := range zs {
		ls, err := z.explicit.List(r.Context())
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("listing the locks of zone %q: %w", z.name, err)}
		}
		for _, l := range ls {
			if !listed[l.Token] {
				listed[l.Token] = true
				out = append(out, explicitEntry(z.name, l))
			}
		}
		{
			hl := z.locker
			held, err := hl.HeldLocks(r.Context())
			if err != nil {
				return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("listing the in-flight locks of zone %q: %w", z.name, err)}
			}
			for _, h := range held {
				out = append(out, adminLock{
					Zone: z.name, Root: h.Key, Scope: h.Kind.String(), Depth: depthOf(hl.Hierarchy()),
					Created: h.Since, InFlight: true, Holders: h.Holders, Waiting: h.Waiting,
				})
			}
		}
	}
	slices.SortStableFunc(out, func(x, y adminLock) int {
		if c := strings.Compare(x.Zone, y.Zone); c != 0 {
			return c
		}
		return strings.Compare(x.Root, y.Root)
	})
	return writeJSON(w, http.StatusOK, out)
}

func depthOf(hierarchy bool) string {
	if hierarchy {
		return lockstore.DepthInfinity.String()
	}
	return lockstore.DepthZero.String()
}

// adminLockRequest is the body of POST /lock/<zone>.
type adminLockRequest struct {
	// Path is the root of the lock, as a request path.
	Path string `json:"path"`
	// Depth is "infinity" (the default) or "0".
	Depth string `json:"depth"`
	// Timeout is how long the lock lasts, as a Go duration ("30m").
	Timeout string `json:"timeout"`
	// Owner says who took the lock, shown in listings and in WebDAV
	// lock discovery.
	Owner string `json:"owner"`
	// Scope is "exclusive" (the default) or "shared".
	Scope string `json:"scope"`
	// Drain is how long the answer waits, at most, for writes that were
	// already in flight under the lock when it was taken, as a Go
	// duration; "0" answers at once. Default 30s.
	Drain string `json:"drain"`
}

// defaultDrain bounds how long POST /lock/<zone> waits for writes in
// flight under the new lock.
const defaultDrain = 30 * time.Second

// drainPoll is how often a drain looks at the in-flight locks again.
const drainPoll = 20 * time.Millisecond

func (a *AdminAPI) create(w http.ResponseWriter, r *http.Request, zoneName string) error {
	zs, done := zonesNamed(zoneName)
	defer done()
	if len(zs) == 0 {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no lock zone %q in the running config", zoneName)}
	}
	z := zs[len(zs)-1]
	var req adminLockRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return badAdminRequest("decoding the lock request: %v", err)
	}
	// Decode stops after the first value: anything after it is a
	// malformed request, not something to ignore.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badAdminRequest("decoding the lock request: expected one JSON object and nothing after it")
	}
	if !strings.HasPrefix(req.Path, "/") {
		return badAdminRequest(`path: expected an absolute path such as "/billing", got %q`, req.Path)
	}
	depth := lockstore.DepthInfinity
	if req.Depth != "" {
		d, err := dav.ParseLockDepth(req.Depth)
		if err != nil {
			return badAdminRequest(`depth: expected "0" or "infinity", got %q`, req.Depth)
		}
		depth = d
	}
	scope := lockstore.Exclusive
	switch req.Scope {
	case "", "exclusive":
	case "shared":
		scope = lockstore.Shared
	default:
		return badAdminRequest(`scope: expected "exclusive" or "shared", got %q`, req.Scope)
	}
	timeout, err := caddy.ParseDuration(req.Timeout)
	// At least 1ms: Redis keeps timeouts in milliseconds and refuses
	// less, which would be a 503 for what is the caller's mistake.
	if err != nil || timeout < time.Millisecond {
		return badAdminRequest(`timeout: expected a duration of at least 1ms such as "30m", got %q`, req.Timeout)
	}
	drain := defaultDrain
	if req.Drain != "" {
		d, err := caddy.ParseDuration(req.Drain)
		if err != nil || d < 0 {
			return badAdminRequest(`drain: expected a duration such as "30s" or "0", got %q`, req.Drain)
		}
		drain = d
	}
	// The key a request to this path would have: its readings must agree.
	// A key with a NUL byte: requests with such a key are refused before
	// any lock is looked up, so a lock there would protect nothing.
	key, err := lockKey(req.Path, z.caseInsensitive.Load())
	if err != nil {
		return badAdminRequest("path: %q: %v", req.Path, err)
	}
	l, err := z.explicit.Create(r.Context(), lockstore.ExplicitLock{
		Token:   dav.NewLockToken(),
		Root:    key,
		Href:    req.Path,
		Scope:   scope,
		Depth:   depth,
		Owner:   dav.OwnerText(req.Owner),
		Creator: lockstore.AdminCreator,
		Timeout: timeout,
	})
	var conflict *lockstore.LockConflictError
	switch {
	case errors.As(err, &conflict):
		roots := make([]string, len(conflict.Conflicts))
		for i, c := range conflict.Conflicts {
			roots[i] = c.Root
		}
		return caddy.APIError{HTTPStatus: http.StatusConflict, Err: fmt.Errorf("%s conflicts with the locks on %s", key, strings.Join(roots, ", "))}
	case errors.Is(err, lockstore.ErrFull):
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
	case err != nil:
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("creating the lock: %w", err)}
	}
	a.logger.Info("maintenance lock taken", zap.String("zone", z.name), zap.String("root", l.Root),
		zap.String("depth", l.Depth.String()), zap.Duration("timeout", timeout), zap.String("token", tokenPrefix(l.Token)))
	// From here on every new write under the lock is refused, but writes
	// that were granted before it may still be running: a maintenance
	// window has begun when they are done.
	running, err := drainWrites(r.Context(), zs, l, drain)
	if err != nil {
		a.logger.Warn("maintenance lock: cannot see the writes in flight", zap.String("zone", z.name), zap.Error(err))
	}
	if running > 0 {
		a.logger.Warn("maintenance lock taken while writes are still in flight under it", zap.String("zone", z.name),
			zap.String("root", l.Root), zap.Int("in_flight", running), zap.Duration("drain", drain))
	}
	resp := struct {
		Token string `json:"token"`
		adminLock
		// Running counts the writes under the lock still in flight when
		// the answer was written (-1: they could not be listed).
		Running int `json:"writes_in_flight"`
	}{l.Token, explicitEntry(z.name, l), running}
	if err != nil {
		resp.Running = -1
	}
	return writeJSON(w, http.StatusCreated, resp)
}

// drainWrites waits, up to bound, until no write (in-flight exclusive
// lock) under the explicit lock l is held in the tables of zs (the
// handlers of one zone name), and returns how many still are. A write
// is under l when its key is l's root, below it for depth infinity, or
// a member of it for depth 0 (members are what a depth-0 lock protects),
// and, in a table with hierarchy, above the root.
func drainWrites(ctx context.Context, zs []*zone, l lockstore.ExplicitLock, bound time.Duration) (int, error) {
	deadline := time.Now().Add(bound)
	for {
		running := 0
		for _, z := range zs {
			hl := z.locker
			held, err := hl.HeldLocks(ctx)
			if err != nil {
				return 0, fmt.Errorf("listing the in-flight locks of zone %q: %w", z.name, err)
			}
			for _, h := range held {
				// With hierarchy, a write above the root covers it too.
				if h.Kind == lockstore.Exclusive && (writesUnder(l, h.Key) || hl.Hierarchy() && lockstore.Below(l.Root, h.Key)) {
					running++
				}
			}
		}
		if running == 0 || !time.Now().Before(deadline) {
			return running, nil
		}
		t := time.NewTimer(min(drainPoll, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return running, nil
		case <-t.C:
		}
	}
}

// writesUnder reports whether a write to key falls under explicit lock l.
func writesUnder(l lockstore.ExplicitLock, key string) bool {
	if key == l.Root {
		return true
	}
	prefix := strings.TrimSuffix(l.Root, "/") + "/"
	if !strings.HasPrefix(key, prefix) {
		return false
	}
	return l.Depth == lockstore.DepthInfinity || !strings.Contains(key[len(prefix):], "/")
}

func (a *AdminAPI) remove(w http.ResponseWriter, r *http.Request, zoneName, token string) error {
	if len(token) < minTokenPrefix {
		return badAdminRequest("token: expected the token or its prefix of at least %d characters as GET /lock/ lists it", minTokenPrefix)
	}
	zs, done := zonesNamed(zoneName)
	defer done()
	if len(zs) == 0 {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no lock zone %q in the running config", zoneName)}
	}
	for _, z := range zs {
		ls, err := z.explicit.List(r.Context())
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("listing the locks of zone %q: %w", z.name, err)}
		}
		ls = slices.DeleteFunc(ls, func(l lockstore.ExplicitLock) bool {
			return len(l.Token) < len(token) || !sameToken(token, l.Token[:len(token)])
		})
		if len(ls) > 1 {
			return caddy.APIError{HTTPStatus: http.StatusConflict, Err: fmt.Errorf("%d locks have tokens starting with %s; give more of the token", len(ls), tokenPrefix(token))}
		}
		if len(ls) == 0 {
			continue
		}
		l, err := z.explicit.Remove(r.Context(), ls[0].Token)
		if errors.Is(err, lockstore.ErrNoSuchLock) {
			continue
		}
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("removing the lock: %w", err)}
		}
		a.logger.Info("lock removed through the admin API", zap.String("zone", z.name), zap.String("root", l.Root),
			zap.String("token", tokenPrefix(l.Token)))
		return writeJSON(w, http.StatusOK, explicitEntry(z.name, l))
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("zone %q holds no lock with token %s", zoneName, tokenPrefix(token))}
}

func badAdminRequest(format string, args ...any) error {
	return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("encoding the answer: %w", err)}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

// xmlText undoes the escaping of an admin lock's owner for the listing.
func xmlText(b []byte) string {
	var v struct {
		Text string `xml:",chardata"`
	}
	if err := xml.Unmarshal(append(append([]byte("<o>"), b...), "</o>"...), &v); err != nil {
		return string(b)
	}
	return v.Text
}

// Held lists the locks held in the table, for the admin API. It takes
// each shard's mutex in turn, so the list is consistent per shard only.
func (l *memLocker) Held() []lockstore.HeldLock {
	var out []lockstore.HeldLock
	now, wall := monotonicNow(), time.Now()
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for _, e := range s.inline {
			if e.num != 0 {
				h := lockstore.HeldLock{Key: e.key, Kind: lockstore.Exclusive, Holders: 1, Since: wall.Add(-time.Duration(now - e.since))}
				if e.num&inlineShared != 0 {
					h.Kind = lockstore.Shared
				}
				out = append(out, h)
			}
		}
		s.nodes.each(func(n *node) {
			if !n.held() {
				return
			}
			since := wall.Add(-time.Duration(now - n.since))
			h := lockstore.HeldLock{Key: n.key, Kind: lockstore.Shared, Holders: int(n.shared), Since: since, Waiting: len(n.queue())}
			if n.excl {
				h.Kind, h.Holders = lockstore.Exclusive, 1
			}
			out = append(out, h)
		})
		s.mu.Unlock()
	}
	return out
}

// HeldLocks is Held for the admin API; the in-memory table never fails.
func (l *memLocker) HeldLocks(context.Context) ([]lockstore.HeldLock, error) { return l.Held(), nil }

// Interface guards
var (
	_ caddy.AdminRouter = (*AdminAPI)(nil)
	_ caddy.Provisioner = (*AdminAPI)(nil)
)
