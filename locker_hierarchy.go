package caddylock

// Hierarchy in the memory lock table: a key's lineage (its ancestors), the
// shards it spans, and the node that blocks a lock on it from above or
// below.

import (
	"hash/maphash"
	"strings"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// anc is an ancestor of a key, with its hash.
type anc struct {
	key  string
	hash uint64 // hashOf(key)
}

// lineageInline is how many ancestors the lineage of an operation holds
// without allocating: keys that deep or less, nearly all of them.
const lineageInline = 8

// lineage appends to buf the proper ancestors of a "/"-rooted key with
// their hashes, root first, so that the ancestors of lin[i] are lin[:i].
// These are the keys ancestors() visits (but "/" once, for a key starting
// with "//"). An operation computes its lineage once and hands it to
// mask, blocker, grant and release, which used to hash every ancestor
// again each: the prefixes are hashed in one pass over the key, by one
// maphash.Hash that is written segment by segment and whose Sum64 after
// each is that of maphash.String on the prefix (TestLineageHashes), so
// the cost is linear in the key's length rather than in depth times
// length.
func (l *memLocker) lineage(key string, buf []anc) []anc {
	if len(key) < 2 || key[0] != '/' {
		return buf
	}
	var h maphash.Hash
	h.SetSeed(l.seed)
	_, _ = h.WriteString(key[:1]) // never fails
	lin := append(buf, anc{key: key[:1], hash: h.Sum64()})
	done := 1
	for {
		i := strings.IndexByte(key[done+1:], '/')
		if i < 0 {
			return lin
		}
		i += done + 1
		_, _ = h.WriteString(key[done:i])
		lin = append(lin, anc{key: key[:i], hash: h.Sum64()})
		done = i
	}
}

// mask is the set of shards an operation on a key with hash h and
// lineage lin must hold.
func (l *memLocker) mask(h uint64, lin []anc) uint64 {
	m := uint64(1) << shardIndex(h)
	for _, a := range lin {
		m |= 1 << shardIndex(a.hash)
	}
	return m
}

// blocker returns the node whose locks conflict with taking kind on n, of
// lineage lin, or nil when the lock can be granted.
func (l *memLocker) blocker(n *node, kind lockstore.Kind, lin []anc) *node {
	if n.heldConflicts(kind) {
		return n
	}
	if !l.hierarchy {
		return nil
	}
	if n.belowExcl > 0 || (kind == lockstore.Exclusive && n.belowShared > 0) {
		return n
	}
	// Nearest first: the conflict reported is the closest one.
	for i := len(lin) - 1; i >= 0; i-- {
		if an := l.lookup(lin[i]); an != nil && an.heldConflicts(kind) {
			return an
		}
	}
	return nil
}
