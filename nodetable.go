package caddylock

// nodeTable is the set of nodes of one shard: an open-addressing hash table
// with linear probing, keyed by the hash of each node's key. The hash is
// computed once per operation and kept in the node, so neither lookups nor
// removals hash the key again. Removal shifts later entries back instead of
// leaving tombstones, and the table shrinks as it empties, so the memory of
// a burst of locks is returned once they are released.
//
// Invariants:
//   - len(slots) is a power of two, at least minTableSlots.
//   - count is the number of non-nil slots; count <= 3/4 len(slots).
//   - No empty slot lies between a node's home slot, hash &
//     (len(slots)-1), and the slot it sits in (cyclically), so a probe
//     from the home slot finds it before an empty slot.
//   - A node is in at most one slot; keys are unique.
type nodeTable struct {
	slots []tableSlot
	count int
}

type tableSlot struct {
	hash uint64
	n    *node // nil for an empty slot
}

// minTableSlots keeps a few cache lines per shard, so that keys used from
// different CPUs rarely share a line even when the table is nearly empty.
const minTableSlots = 16

func newNodeTable() nodeTable {
	return nodeTable{slots: make([]tableSlot, minTableSlots)}
}

// get returns the node with key and hash h, or nil.
func (t *nodeTable) get(h uint64, key string) *node {
	mask := uint64(len(t.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.n == nil {
			return nil
		}
		if s.hash == h && s.n.key == key {
			return s.n
		}
	}
}

// find returns the node with key and hash h, or nil and the empty slot
// where a probe for it ended, which is where insertAt puts it: a lookup
// that misses and the insert that follows probe the table once.
func (t *nodeTable) find(h uint64, key string) (*node, uint64) {
	mask := uint64(len(t.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.n == nil {
			return nil, i
		}
		if s.hash == h && s.n.key == key {
			return s.n, i
		}
	}
}

// insert adds n, whose key must not be in the table yet.
func (t *nodeTable) insert(h uint64, n *node) {
	if (t.count+1)*4 > len(t.slots)*3 {
		t.resize(len(t.slots) * 2)
	}
	t.place(h, n)
	t.count++
}

// insertAt adds n, whose key find has just not found, ending its probe
// at slot i; the table has not changed since.
func (t *nodeTable) insertAt(i, h uint64, n *node) {
	if (t.count+1)*4 > len(t.slots)*3 {
		t.insert(h, n) // the slot moves with the resize
		return
	}
	t.slots[i] = tableSlot{hash: h, n: n}
	t.count++
}

func (t *nodeTable) place(h uint64, n *node) {
	mask := uint64(len(t.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		if t.slots[i].n == nil {
			t.slots[i] = tableSlot{hash: h, n: n}
			return
		}
	}
}

// remove takes n, with hash h, out of the table and reports whether it was
// there.
func (t *nodeTable) remove(h uint64, n *node) bool {
	mask := uint64(len(t.slots) - 1)
	i := h & mask
	for t.slots[i].n != n {
		if t.slots[i].n == nil {
			return false
		}
		i = (i + 1) & mask
	}
	t.removeAt(i)
	return true
}

// The same table holds a shard's live leases (see shard.live), keyed by
// sequence number instead of by hash: a number is never used twice in a
// shard, so the number alone tells the entries apart, with no key to
// compare, and consecutive numbers fill consecutive slots.

// findNum returns the slot of the entry numbered h and its node, or nil.
func (t *nodeTable) findNum(h uint64) (uint64, *node) {
	mask := uint64(len(t.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.n == nil || s.hash == h {
			return i, s.n
		}
	}
}

// removeAt empties slot i, which holds an entry.
func (t *nodeTable) removeAt(i uint64) {
	mask := uint64(len(t.slots) - 1)
	// Close the hole at i: a later entry of the same run moves into it
	// when its home is not after i (cyclically), that is when the
	// distance from its home to its slot is at least the distance from
	// i to its slot.
	for j := (i + 1) & mask; t.slots[j].n != nil; j = (j + 1) & mask {
		home := t.slots[j].hash & mask
		if (j-home)&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = tableSlot{}
	t.count--
	if t.count*8 < len(t.slots) && len(t.slots) > minTableSlots {
		t.resize(len(t.slots) / 2)
	}
}

func (t *nodeTable) resize(size int) {
	old := t.slots
	t.slots = make([]tableSlot, size)
	for _, s := range old {
		if s.n != nil {
			t.place(s.hash, s.n)
		}
	}
}

// each calls fn for every node in the table.
func (t *nodeTable) each(fn func(*node)) {
	for _, s := range t.slots {
		if s.n != nil {
			fn(s.n)
		}
	}
}
