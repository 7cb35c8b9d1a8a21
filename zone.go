package caddylock

// The zone registry: a zone's lock tables live in a package-level pool,
// outside of handler instances, so that they outlast a reload; the
// settings each handler states for its zone; the config check that the
// handlers of one zone agree; and the borrowing of an unloaded zone's
// tables by requests still on their way (enter, leave).

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// zones holds the lock tables by zone, outside of handler instances, so
// that a reloaded config (which Caddy provisions before it stops the old
// one) sees the locks that requests under the old config still hold.
var zones = caddy.NewUsagePool()

type zone struct {
	poolKey string
	name    string
	locker  lockstore.Locker
	// explicit holds the zone's WebDAV and admin locks.
	explicit lockstore.LockStore
	// close lets go of the tables (see lockstore.ZoneTables).
	close func() error
	// drain: close waits for the requests under way (see enter).
	drain bool
	// active counts the requests under way in handlers of this zone (when
	// it drains) and the admin API calls using it: Destruct closes
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
	z.locker.SetLimits(s.maxLocks, s.maxWaiters)
	z.caseInsensitive.Store(s.caseInsensitive)
	z.explicit.SetLimits(s.maxLocks, s.maxLockBytes, s.maxLocksPerOwner)
}

// Destruct implements caddy.Destructor: it lets go of the zone's tables,
// once the requests under way are done when the tables drain.
func (z *zone) Destruct() error {
	if z.close == nil {
		return nil
	}
	if !z.drain {
		return z.close()
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
func zoneTableKey(name string, hierarchy bool, store lockstore.Store) string {
	poolKey := name
	if hierarchy {
		poolKey += "\x00hierarchy"
	}
	if k := store.TableKey(); k != "" {
		poolKey += "\x00" + k
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
func loadZone(poolKey, name string, hierarchy bool, store lockstore.Store) (z *zone, loaded bool, err error) {
	v, loaded, err := zones.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		t, err := store.OpenZone(name, hierarchy)
		if err != nil {
			return nil, err
		}
		return &zone{poolKey: poolKey, name: name, locker: t.Locker, explicit: t.Explicit, close: t.Close, drain: t.Drain}, nil
	})
	if err != nil {
		return nil, false, err
	}
	return v.(*zone), loaded, nil
}

// zoneAgreer is implemented by lockers shared between Caddy instances,
// which refuse an instance whose settings differ from another's.
type zoneAgreer interface {
	Agree(ctx context.Context, caseInsensitive bool) error
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
