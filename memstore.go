package caddylock

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

func init() {
	caddy.RegisterModule(memoryStore{})
}

// memoryStore keeps a zone's tables in this process's memory: the
// default store, and `store memory` in the Caddyfile. Its tables outlive
// a reload that keeps the zone's name and hierarchy; its leases carry no
// fencing numbers.
type memoryStore struct{}

// CaddyModule returns the Caddy module information.
func (memoryStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.lock.stores.memory",
		New: func() caddy.Module { return new(memoryStore) },
	}
}

// TableKey implements lockstore.Store: all memory tables of a zone name
// are one.
func (*memoryStore) TableKey() string { return "" }

// FailOpen implements lockstore.Store: memory is always reachable.
func (*memoryStore) FailOpen() bool { return false }

// OpenZone implements lockstore.Store.
func (*memoryStore) OpenZone(zone string, hierarchy bool) (lockstore.ZoneTables, error) {
	x, _, err := memExplicit.LoadOrNew(zone, func() (caddy.Destructor, error) {
		return memExplicitStore{newMemLockStore(0)}, nil
	})
	if err != nil {
		return lockstore.ZoneTables{}, fmt.Errorf("explicit lock store: %w", err)
	}
	return lockstore.ZoneTables{
		Locker:   newMemLocker(hierarchy, 0, 0),
		Explicit: x.(memExplicitStore).memLockStore,
		Close: func() error {
			_, err := memExplicit.Delete(zone)
			return err
		},
	}, nil
}

// UnmarshalCaddyfile reads `store memory`, which takes no options.
func (*memoryStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store's name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("lock: store memory: unexpected %q: the memory store takes no options", d.Val())
	}
	return nil
}

// memExplicit holds the in-memory explicit lock stores by zone name.
// Explicit locks do not depend on what gives a zone's in-flight locks a
// new table (hierarchy), so all in-memory tables of one name share one
// store: a reload that changes hierarchy keeps the zone's WebDAV and
// maintenance locks. (In Redis they are kept by the zone's name anyway.)
var memExplicit = caddy.NewUsagePool()

// memExplicitStore is a memLockStore in memExplicit.
type memExplicitStore struct{ *memLockStore }

// Destruct implements caddy.Destructor: it stops the expiry timer.
func (s memExplicitStore) Destruct() error {
	s.Close()
	return nil
}

// Interface guards
var (
	_ lockstore.Store       = (*memoryStore)(nil)
	_ caddyfile.Unmarshaler = (*memoryStore)(nil)
)
