package lockstore

import (
	"fmt"
	"strings"
)

// Keys are "/"-rooted paths for the locks that hierarchy and explicit
// locks concern. These helpers are the one definition of "below" and
// "ancestor" that every table uses, so that all agree on which locks
// cover which keys.

// MaxHierarchyDepth is the most segments a key may have in a zone with
// hierarchy. Every operation on a key visits each of its ancestors and
// holds the shards they hash to meanwhile, so without a bound one long
// path of short segments ("/a/a/a/…", thousands deep in a 16 KB URL)
// holds every shard's mutex for as long as it takes to walk them all,
// stalling unrelated writes: a cheap denial of service. No real tree is
// this deep.
const MaxHierarchyDepth = 255

// CheckDepth returns an error wrapping ErrTooDeep when key has more than
// MaxHierarchyDepth segments. Every hierarchical lock table calls it
// before it walks key's ancestors, so that all refuse the same keys.
func CheckDepth(key string) error {
	if len(key) < 2 || key[0] != '/' {
		return nil // no ancestors (see Ancestors)
	}
	// One ancestor per "/", which is also the number of segments.
	if d := strings.Count(key, "/"); d > MaxHierarchyDepth {
		return fmt.Errorf("key of %d segments (at most %d): %w", d, MaxHierarchyDepth, ErrTooDeep)
	}
	return nil
}

// Ancestors calls fn for every proper ancestor of a "/"-rooted key, from
// the nearest up to "/", until fn returns false. Keys that do not start
// with "/" have none.
func Ancestors(key string, fn func(string) bool) {
	if len(key) < 2 || key[0] != '/' {
		return
	}
	for i := strings.LastIndexByte(key, '/'); i >= 0; i = strings.LastIndexByte(key[:i], '/') {
		a := key[:i]
		if i == 0 {
			a = "/"
		}
		if !fn(a) {
			return
		}
		if i == 0 {
			return
		}
	}
}

// Below reports whether key lies strictly below root: whether root is one
// of the keys Ancestors gives for key.
func Below(key, root string) bool {
	if len(root) == 0 || root[0] != '/' || len(key) < 2 || key[0] != '/' {
		return false
	}
	if root == "/" {
		return true
	}
	return len(key) > len(root) && key[len(root)] == '/' && strings.HasPrefix(key, root)
}
