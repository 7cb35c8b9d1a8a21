package caddylock

import (
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/caddy-lock/caddy-lock/internal/cfgarg"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("lock", parseCaddyfile)
	// Locks must be taken before the request is proxied, and after
	// authentication and rewrites, which the standard order runs earlier.
	httpcaddyfile.RegisterDirectiveOrder("lock", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var l Handler
	if err := l.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	// The directive's own token: its file and line let a load-time
	// error that spans handlers (zones that disagree) name them.
	h.Reset()
	h.Next()
	l.Source = h.File() + ":" + strconv.Itoa(h.Line())
	return &l, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	lock [<matcher>] {
//		key               <template>
//		exclusive         <methods...>
//		shared            <methods...>
//		hierarchy
//		case_insensitive
//		wait              <duration>
//		max_waiters       <n>
//		retry_after       <duration>
//		max_hold          <duration>
//		max_locks         <n>
//		max_lock_bytes    <size>
//		max_locks_per_owner <n>
//		zone              <name>
//		use_handle_errors
//		webdav
//		max_timeout       <duration>
//		default_timeout   <duration>
//		max_lock_body     <size>
//		max_wait_body     <size>
//		store             <type> { ... }
//		fence_header      <header name>
//		etags
//		etag_max_size     <size>
//		require_if_match
//		verify_etag       [get]
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.Errf("lock: unexpected argument %q; settings go in a block: lock { ... }", d.Val())
	}
	// Only the method lists add up.
	once := cfgarg.GivenOnce(d, "lock", "exclusive", "shared")
	// Where key and fence_header were given, to report there a mistake
	// that only the whole block shows (they may come before or after
	// webdav and store).
	var keyAt, fenceAt caddyfile.Token
	for d.NextBlock(0) {
		sub := d.Val()
		if err := once(sub); err != nil {
			return err
		}
		switch sub {
		case "key":
			keyAt = d.Token()
			key, err := cfgarg.One(d, sub, "a template such as {http.request.uri.path}", "template (quote one with spaces)")
			if err != nil {
				return err
			}
			h.Key = key
		case "exclusive", "shared":
			methods := d.RemainingArgs()
			if len(methods) == 0 {
				return d.Errf("lock: %s: expected at least one HTTP method", sub)
			}
			other, otherName := h.Shared, "shared"
			if sub == "shared" {
				other, otherName = h.Exclusive, "exclusive"
			}
			for i, m := range methods {
				if !validMethod(m) {
					return d.Errf("lock: %s: %q is not an HTTP method", sub, m)
				}
				methods[i] = strings.ToUpper(m)
				if slices.Contains(other, methods[i]) {
					return d.Errf("lock: %s: method %s is already listed as %s; a method takes one kind of lock",
						sub, methods[i], otherName)
				}
			}
			if sub == "exclusive" {
				h.Exclusive = append(h.Exclusive, methods...)
			} else {
				h.Shared = append(h.Shared, methods...)
			}
		case "etags", "require_if_match", "verify_etag", "etag_max_size":
			if err := h.unmarshalETagOption(d, sub); err != nil {
				return err
			}
		case "hierarchy", "case_insensitive", "use_handle_errors", "webdav":
			if d.NextArg() {
				return d.Errf("lock: %s takes no arguments, got %q", sub, d.Val())
			}
			switch sub {
			case "hierarchy":
				h.Hierarchy = true
			case "case_insensitive":
				h.CaseInsensitive = true
			case "webdav":
				h.WebDAV = true
			default:
				h.UseHandleErrors = true
			}
		case "wait", "retry_after":
			dur, err := cfgarg.Duration(d, sub)
			if err != nil {
				return err
			}
			if sub == "wait" {
				h.Wait = dur
			} else {
				h.RetryAfter = dur
			}
		case "max_hold":
			dur, err := cfgarg.PositiveDuration(d, sub)
			if err != nil {
				return err
			}
			h.MaxHold = dur
		case "max_waiters", "max_locks", "max_locks_per_owner":
			n, err := cfgarg.Count(d, sub)
			if err != nil {
				return err
			}
			switch sub {
			case "max_waiters":
				h.MaxWaiters = n
			case "max_locks":
				h.MaxLocks = n
			default:
				h.MaxLocksPerOwner = n
			}
		case "max_timeout", "default_timeout":
			dur, err := cfgarg.PositiveDuration(d, sub)
			if err != nil {
				return err
			}
			if sub == "max_timeout" {
				h.MaxTimeout = dur
			} else {
				h.DefaultTimeout = dur
			}
		case "max_lock_body", "max_lock_bytes", "max_wait_body":
			example := "64KiB"
			switch sub {
			case "max_lock_bytes":
				example = "64MiB"
			case "max_wait_body":
				example = "1MiB"
			}
			val, err := cfgarg.One(d, sub, "a size such as "+example, "size")
			if err != nil {
				return err
			}
			n, err := humanize.ParseBytes(val)
			if err != nil || n == 0 || n > math.MaxInt64 {
				return d.Errf("lock: %s: expected a positive size such as %s or 1MB, got %q", sub, example, val)
			}
			switch sub {
			case "max_lock_body":
				h.MaxLockBody = int64(n)
			case "max_wait_body":
				h.MaxWaitBody = int64(n)
			default:
				h.MaxLockBytes = int64(n)
			}
		case "zone":
			zone, err := cfgarg.One(d, sub, "a zone name", "name")
			if err != nil {
				return err
			}
			if strings.Contains(zone, "/") {
				return d.Errf("lock: zone: %q must not contain '/'; the admin API names zones in its paths (/lock/<zone>/<token>)", zone)
			}
			h.Zone = zone
		case "store":
			raw, err := unmarshalStore(d)
			if err != nil {
				return err
			}
			h.StoreRaw = raw
		case "fence_header":
			fenceAt = d.Token()
			name, err := cfgarg.One(d, sub, "a header name such as X-Lock-Fence", "header name")
			if err != nil {
				return err
			}
			if !validMethod(name) { // header names are RFC 9110 tokens too
				return d.Errf("lock: fence_header: %q is not a valid header name", name)
			}
			h.FenceHeader = name
		default:
			return d.Errf("lock: unknown subdirective %q; expected one of key, exclusive, shared, hierarchy, "+
				"case_insensitive, wait, max_waiters, retry_after, max_hold, max_locks, zone, use_handle_errors, "+
				"max_wait_body, webdav, max_timeout, default_timeout, max_lock_body, max_lock_bytes, max_locks_per_owner, store, fence_header, etags, etag_max_size, require_if_match, verify_etag", sub)
		}
	}
	// What Provision and Validate would refuse later, without a line.
	if h.FenceHeader != "" && h.StoreRaw == nil {
		return errAt(fenceAt, "lock: fence_header %q needs a store that issues fencing numbers, such as store redis; "+
			"the memory store has none", h.FenceHeader)
	}
	if h.WebDAV && h.Key != "" && h.Key != pathKeyTemplate {
		return errAt(keyAt, "lock: webdav locks resources by their path, so key must be left out (or be %s), got %q",
			pathKeyTemplate, h.Key)
	}
	return nil
}

// errAt is d.Errf at tok: the file, line and import chain of a token
// read earlier.
func errAt(tok caddyfile.Token, format string, args ...any) error {
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.Errf(format, args...)
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
