package caddylock

// Lock stores: where a zone's lock tables live. Without a store a zone's
// tables are in this process's memory; a store module (namespace
// http.handlers.lock.stores, such as redis) puts them where several Caddy
// instances share them. This file holds the seam and the handler's side
// of it: the store module's Caddyfile and the log of an unreachable store.

import (
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

// unmarshalStore reads `store <name> { ... }` at the dispenser's "store"
// token and returns the module's JSON with its type set.
func unmarshalStore(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.Errf("lock: store: expected a store type, such as redis")
	}
	name := d.Val()
	if _, err := caddy.GetModule("http.handlers.lock.stores." + name); err != nil {
		return nil, d.Errf("lock: store: unknown store type %q; expected memory or redis", name)
	}
	unm, err := caddyfile.UnmarshalModule(d, "http.handlers.lock.stores."+name)
	if err != nil {
		return nil, err
	}
	var warnings []caddyconfig.Warning
	raw := caddyconfig.JSONModuleObject(unm, "type", name, &warnings)
	if len(warnings) > 0 {
		return nil, d.Errf("lock: store %s: %s", name, warnings[0].Message)
	}
	return raw, nil
}

// warnEvery spaces out the log entries about an unreachable store: when
// it is down, every request would otherwise log one.
const warnEvery = 10 * time.Second

// troubleLog counts requests affected by an unreachable store between
// log entries.
type troubleLog struct {
	count  atomic.Int64 // requests since the last entry
	logged atomic.Int64 // time of the last entry, Unix ns
}

// storeTrouble logs that the store could not be reached, at most once per
// warnEvery per handler, with the number of requests affected since the
// last entry.
func (h *Handler) storeTrouble(key string, err error) {
	n := h.trouble.count.Add(1)
	now := time.Now().UnixNano()
	last := h.trouble.logged.Load()
	if now-last < int64(warnEvery) || !h.trouble.logged.CompareAndSwap(last, now) {
		return
	}
	h.trouble.count.Add(-n)
	msg, policy := "lock store unavailable: refusing requests with 503", "fail_closed"
	if errors.Is(err, lockstore.ErrStoreFailed) {
		msg = "lock store answered with an error: refusing requests with 503, whatever on_error says"
	} else if h.store.FailOpen() {
		msg, policy = "lock store unavailable: passing requests WITHOUT locks", "fail_open"
	}
	h.logger.Warn(msg, zap.String("zone", h.Zone), zap.String("on_error", policy),
		zap.Int64("requests", n), zap.String("key", key), zap.Error(err))
}
