package caddylock

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-lock/caddy-lock/internal/mapstore"
	"github.com/caddy-lock/caddy-lock/lockstore"
)

// mapTestStore is `store maptest`: a store module whose tables are
// internal/mapstore's, written against lockstore alone. Registered from a
// test, it shows that the handler needs nothing of a store beyond the
// seam.
type mapTestStore struct{}

func init() { caddy.RegisterModule(mapTestStore{}) }

// mapTestOpened holds the tables mapTestStore opened, by zone.
var mapTestOpened sync.Map

func (mapTestStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.lock.stores.maptest",
		New: func() caddy.Module { return new(mapTestStore) },
	}
}

func (*mapTestStore) TableKey() string { return "maptest" }
func (*mapTestStore) FailOpen() bool   { return false }

func (*mapTestStore) OpenZone(zone string, hierarchy bool) (lockstore.ZoneTables, error) {
	z := lockstore.ZoneTables{
		Locker:   mapstore.NewLocker(hierarchy, 0, 0),
		Explicit: mapstore.NewLockStore(),
		Close:    func() error { return nil },
	}
	mapTestOpened.Store(zone, z)
	return z, nil
}

func (*mapTestStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store's name
	return nil
}

// A write through a handler whose zone lives in the map store is locked
// there: a second write to the same path is refused with 423 while the
// first is at the backend, another path goes through, and once the first
// is done the path is free again.
func TestForeignStoreThroughHandler(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone maptest\n store maptest\n}\nreverse_proxy {backend}", b)
	v, ok := mapTestOpened.Load("maptest")
	if !ok {
		t.Fatal("the handler did not open its zone in the maptest store")
	}
	tables := v.(lockstore.ZoneTables)
	first := holdWrite(t, b, http.MethodPut, url+"/doc", "first")
	held, err := tables.Locker.HeldLocks(context.Background())
	if err != nil || len(held) != 1 || held[0].Key != "/doc" || held[0].Kind != lockstore.Exclusive {
		t.Fatalf("the map store holds %+v, %v; want the exclusive lock on /doc", held, err)
	}
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusLocked)
	mustDo(t, http.MethodPut, url+"/other", nil, http.StatusOK)
	b.open("first")
	if r := <-first; r.status != http.StatusOK {
		t.Fatalf("the held write: %d %v %s", r.status, r.err, r.body)
	}
	mustDo(t, http.MethodPut, url+"/doc", nil, http.StatusOK)
	if held, err := tables.Locker.HeldLocks(context.Background()); err != nil || len(held) != 0 {
		t.Fatalf("the map store holds %+v, %v after every write; want nothing", held, err)
	}
	if writes, _, overlaps := b.counts(); writes != 3 || overlaps != 0 {
		t.Fatalf("backend saw %d writes, %d overlapping; want 3, none", writes, overlaps)
	}
}

// Interface guards
var (
	_ lockstore.Store       = (*mapTestStore)(nil)
	_ caddyfile.Unmarshaler = (*mapTestStore)(nil)
)
