package caddylock

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestNodeTableAgainstMap inserts (by insert, or by find and insertAt) and
// removes nodes at random and checks
// the table against a map after every step. Hashes come from a small
// range, so that runs of slots collide, wrap around the end of the table
// and are closed again by removals.
func TestNodeTableAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tbl := newNodeTable()
	model := map[string]*node{}
	check := func(step int) {
		t.Helper()
		if tbl.count*4 > len(tbl.slots)*3 {
			t.Fatalf("step %d: %d nodes in %d slots", step, tbl.count, len(tbl.slots))
		}
		if tbl.count != len(model) {
			t.Fatalf("step %d: count %d, want %d", step, tbl.count, len(model))
		}
		for k, n := range model {
			if got := tbl.get(n.hash, k); got != n {
				t.Fatalf("step %d: get %q = %p, want %p", step, k, got, n)
			}
		}
		seen := 0
		tbl.each(func(n *node) {
			if model[n.key] != n {
				t.Fatalf("step %d: table holds %q, which was removed", step, n.key)
			}
			seen++
		})
		if seen != len(model) {
			t.Fatalf("step %d: each saw %d nodes, want %d", step, seen, len(model))
		}
	}
	for step := range 20000 {
		k := fmt.Sprintf("/k%d", rng.IntN(300))
		h := uint64(rng.IntN(40)) // many keys per hash and per slot
		if n, ok := model[k]; ok {
			if !tbl.remove(n.hash, n) {
				t.Fatalf("step %d: remove %q: not found", step, k)
			}
			delete(model, k)
			if tbl.remove(n.hash, n) {
				t.Fatalf("step %d: %q removed twice", step, k)
			}
			if tbl.get(n.hash, k) != nil {
				t.Fatalf("step %d: %q still found after removal", step, k)
			}
		} else {
			if tbl.get(h, k) != nil {
				t.Fatalf("step %d: %q found before insertion", step, k)
			}
			n := &node{key: k, hash: h}
			if step%2 == 0 {
				tbl.insert(h, n)
			} else {
				// The lock table's way: one probe finds the key
				// missing and the slot where it goes.
				got, slot := tbl.find(h, k)
				if got != nil {
					t.Fatalf("step %d: find %q before insertion = %p", step, k, got)
				}
				tbl.insertAt(slot, h, n)
			}
			model[k] = n
		}
		if step%97 == 0 {
			check(step)
		}
	}
	check(-1)
	if len(tbl.slots) <= minTableSlots {
		t.Fatalf("%d slots for %d keys: the table never grew", len(tbl.slots), len(model))
	}
	for k, n := range model {
		tbl.remove(n.hash, n)
		delete(model, k)
	}
	check(-2)
	if len(tbl.slots) != minTableSlots {
		t.Fatalf("%d slots left in an empty table, want %d", len(tbl.slots), minTableSlots)
	}
}

// TestNodeTableInsertAtGrows fills a table the lock table's way only (find,
// then insertAt where the probe ended): the table must still grow before
// it is more than 3/4 full, and keep every key findable.
func TestNodeTableInsertAtGrows(t *testing.T) {
	tbl := newNodeTable()
	var nodes []*node
	for i := range 1000 {
		k := fmt.Sprintf("/k%d", i)
		h := uint64(i * 7)
		got, slot := tbl.find(h, k)
		if got != nil {
			t.Fatalf("find %q before insertion = %p", k, got)
		}
		n := &node{key: k, hash: h}
		tbl.insertAt(slot, h, n)
		nodes = append(nodes, n)
		if tbl.count*4 > len(tbl.slots)*3 {
			t.Fatalf("after %d inserts: %d nodes in %d slots", i+1, tbl.count, len(tbl.slots))
		}
	}
	for _, n := range nodes {
		if got, _ := tbl.find(n.hash, n.key); got != n {
			t.Fatalf("find %q = %p, want %p", n.key, got, n)
		}
	}
}
