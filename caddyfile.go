package caddylock

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("lock", parseCaddyfile)
	// Locks must be taken before the request is proxied, and after
	// authentication and rewrites, which the standard order runs earlier.
	httpcaddyfile.RegisterDirectiveOrder("lock", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var l Handler
	err := l.UnmarshalCaddyfile(h.Dispenser)
	return &l, err
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
//		zone              <name>
//		use_handle_errors
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.Errf("lock: unexpected argument %q; settings go in a block: lock { ... }", d.Val())
	}
	for d.NextBlock(0) {
		sub := d.Val()
		switch sub {
		case "key":
			if !d.NextArg() {
				return d.Errf("lock: key: expected a template such as {http.request.uri.path}")
			}
			h.Key = d.Val()
			if d.NextArg() {
				return d.Errf("lock: key: expected one template, got also %q (quote a template with spaces)", d.Val())
			}
		case "exclusive", "shared":
			methods := d.RemainingArgs()
			if len(methods) == 0 {
				return d.Errf("lock: %s: expected at least one HTTP method", sub)
			}
			for i, m := range methods {
				if !validMethod(m) {
					return d.Errf("lock: %s: %q is not an HTTP method", sub, m)
				}
				methods[i] = strings.ToUpper(m)
			}
			if sub == "exclusive" {
				h.Exclusive = append(h.Exclusive, methods...)
			} else {
				h.Shared = append(h.Shared, methods...)
			}
		case "hierarchy", "case_insensitive", "use_handle_errors":
			if d.NextArg() {
				return d.Errf("lock: %s takes no arguments, got %q", sub, d.Val())
			}
			switch sub {
			case "hierarchy":
				h.Hierarchy = true
			case "case_insensitive":
				h.CaseInsensitive = true
			default:
				h.UseHandleErrors = true
			}
		case "wait", "retry_after", "max_hold":
			dur, err := durationArg(d, sub)
			if err != nil {
				return err
			}
			switch sub {
			case "wait":
				h.Wait = dur
			case "retry_after":
				h.RetryAfter = dur
			default:
				if dur == 0 {
					return d.Errf("lock: max_hold: expected a positive duration, got 0")
				}
				h.MaxHold = dur
			}
		case "max_waiters", "max_locks":
			n, err := countArg(d, sub)
			if err != nil {
				return err
			}
			if sub == "max_waiters" {
				h.MaxWaiters = n
			} else {
				h.MaxLocks = n
			}
		case "zone":
			if !d.NextArg() {
				return d.Errf("lock: zone: expected a zone name")
			}
			h.Zone = d.Val()
			if d.NextArg() {
				return d.Errf("lock: zone: expected one name, got also %q", d.Val())
			}
		default:
			return d.Errf("lock: unknown subdirective %q; expected one of key, exclusive, shared, hierarchy, "+
				"case_insensitive, wait, max_waiters, retry_after, max_hold, max_locks, zone, use_handle_errors", sub)
		}
	}
	return nil
}

func durationArg(d *caddyfile.Dispenser, sub string) (caddy.Duration, error) {
	if !d.NextArg() {
		return 0, d.Errf("lock: %s: expected a duration such as 500ms or 30s", sub)
	}
	val := d.Val()
	dur, err := caddy.ParseDuration(val)
	if err != nil {
		return 0, d.Errf("lock: %s: expected a duration such as 500ms or 30s, got %q: %v", sub, val, err)
	}
	if dur < 0 {
		return 0, d.Errf("lock: %s: expected a duration that is not negative, got %q", sub, val)
	}
	if d.NextArg() {
		return 0, d.Errf("lock: %s: expected one duration, got also %q", sub, d.Val())
	}
	return caddy.Duration(dur), nil
}

func countArg(d *caddyfile.Dispenser, sub string) (int, error) {
	if !d.NextArg() {
		return 0, d.Errf("lock: %s: expected a positive whole number", sub)
	}
	val := d.Val()
	n, err := strconv.Atoi(val)
	if err != nil || n < 1 {
		return 0, d.Errf("lock: %s: expected a positive whole number, got %q", sub, val)
	}
	if d.NextArg() {
		return 0, d.Errf("lock: %s: expected one number, got also %q", sub, d.Val())
	}
	return n, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
