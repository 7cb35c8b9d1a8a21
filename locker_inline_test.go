package caddylock

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// An uncontended lock lives in its shard's inline entries, not in a node,
// so that taking and giving it back writes no line outside the shard's
// own 128 bytes; a key beyond the inline entries takes a node. Either way
// the table reports and lists the lock, and a request on it conflicts.
func TestUncontendedLockStaysInline(t *testing.T) {
	l := newMemLocker(false, 0, 0)
	keys := keysInShard(l, 7, shardInline+1)
	s := &l.shards[7]
	// Given back, an inline lock leaves nothing behind, its budget
	// included.
	mustAcquire(t, l, keys[0], lockstore.Exclusive).Release()
	assertEmpty(t, l)
	a := mustAcquire(t, l, keys[0], lockstore.Exclusive)
	b := mustAcquire(t, l, keys[1], lockstore.Shared)
	if s.nodes.count != 0 || s.live.count != 0 {
		t.Fatalf("two uncontended locks made %d nodes and %d live leases, want none", s.nodes.count, s.live.count)
	}
	c := mustAcquire(t, l, keys[2], lockstore.Exclusive)
	if s.nodes.count != 1 || s.live.count != 1 {
		t.Fatalf("a lock beyond the inline entries made %d nodes and %d live leases, want 1", s.nodes.count, s.live.count)
	}
	if h, w, n := l.Stats(); h != 3 || w != 0 || n != 3 {
		t.Fatalf("Stats = %d held, %d waiting, %d nodes; want 3, 0, 3", h, w, n)
	}
	kinds := map[string]lockstore.Kind{}
	for _, h := range l.Held() {
		if h.Holders != 1 || h.Since.IsZero() {
			t.Fatalf("held lock %+v, want one holder and a time", h)
		}
		kinds[h.Key] = h.Kind
	}
	if want := (map[string]lockstore.Kind{keys[0]: lockstore.Exclusive, keys[1]: lockstore.Shared, keys[2]: lockstore.Exclusive}); len(kinds) != 3 ||
		kinds[keys[0]] != want[keys[0]] || kinds[keys[1]] != want[keys[1]] || kinds[keys[2]] != want[keys[2]] {
		t.Fatalf("held = %v, want %v", kinds, want)
	}
	if e := mustConflict(t, l, keys[0], lockstore.Shared); e.Kind != lockstore.Exclusive || e.Key != keys[0] {
		t.Fatalf("conflict on an exclusive inline lock = %+v", e)
	}
	if e := mustConflict(t, l, keys[1], lockstore.Exclusive); e.Kind != lockstore.Shared || e.Key != keys[1] {
		t.Fatalf("conflict on a shared inline lock = %+v", e)
	}
	a.Release()
	b.Release()
	c.Release()
	assertEmpty(t, l)
}

// A second request on a key held inline moves the hold into a node, under
// the same lease: a second shared holder joins it, a waiter queues behind
// it and is granted when it goes, and the moved lease released twice
// releases nothing the second time.
func TestInlineHoldMovesToANode(t *testing.T) {
	l := newMemLocker(false, 0, 0)
	const key = "/a"
	s1 := mustAcquire(t, l, key, lockstore.Shared)
	s2 := mustAcquire(t, l, key, lockstore.Shared)
	if held := l.Held(); len(held) != 1 || held[0].Holders != 2 {
		t.Fatalf("held = %+v, want one key with two holders", held)
	}
	s1.Release()
	s1.Release()
	mustConflict(t, l, key, lockstore.Exclusive) // s2 still holds it
	s2.Release()
	assertEmpty(t, l)

	x := mustAcquire(t, l, key, lockstore.Exclusive)
	got := make(chan lockstore.Lease, 1)
	go func() {
		ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: lockstore.Exclusive, Wait: time.Minute})
		if err != nil {
			t.Error(err)
		}
		got <- ls
	}()
	waitForQueue(t, l, 1)
	// No overtaking: the queue stands in the way of a newcomer too.
	mustConflict(t, l, key, lockstore.Shared)
	x.Release()
	w := <-got
	if w == nil {
		t.FailNow()
	}
	if !w.Queued() {
		t.Fatal("the waiter's lease is not marked queued")
	}
	x.Release()
	mustConflict(t, l, key, lockstore.Shared) // w still holds it
	w.Release()
	assertEmpty(t, l)
}
