package caddylock

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// deepKey is a path of n one-letter segments, "/a/a/…/a".
func deepKey(n int) string { return strings.Repeat("/a", n) }

// Both lock tables refuse a hierarchical acquire of a key deeper than
// MaxHierarchyDepth with ErrTooDeep, take one just at the bound, and do
// not bound keys in a zone without hierarchy, which walks no ancestors.
func TestHierarchyDepthBound(t *testing.T) {
	stores := map[string]func(t *testing.T, hierarchy bool) Locker{
		"memory": func(t *testing.T, hierarchy bool) Locker { return NewMemLocker(hierarchy, 0, 0) },
		"redis": func(t *testing.T, hierarchy bool) Locker {
			return newRedisLocker(t, startRedis(t), t.Name(), redisOpts{hierarchy: hierarchy})
		},
	}
	for name, newLocker := range stores {
		t.Run(name, func(t *testing.T) {
			l := newLocker(t, true)
			ls, err := l.Acquire(context.Background(), Request{Key: deepKey(MaxHierarchyDepth), Kind: Exclusive})
			if err != nil {
				t.Fatalf("acquire at %d segments: %v", MaxHierarchyDepth, err)
			}
			ls.Release()
			ls, err = l.Acquire(context.Background(), Request{Key: deepKey(MaxHierarchyDepth + 1), Kind: Shared})
			if !errors.Is(err, ErrTooDeep) {
				if ls != nil {
					ls.Release()
				}
				t.Fatalf("acquire at %d segments: %v, want ErrTooDeep", MaxHierarchyDepth+1, err)
			}
			if !strings.Contains(err.Error(), "256 segments") {
				t.Fatalf("error %q does not say how deep the key is", err)
			}
			if m, ok := l.(*MemLocker); ok {
				assertEmpty(t, m)
			}

			flat := newLocker(t, false)
			ls, err = flat.Acquire(context.Background(), Request{Key: deepKey(8000), Kind: Exclusive})
			if err != nil {
				t.Fatalf("acquire without hierarchy at 8000 segments: %v", err)
			}
			ls.Release()
		})
	}
}

// Through Caddy: a write on a path too deep for hierarchy gets 400 with a
// problem document, no Retry-After (retrying cannot help), and never
// reaches the backend; one just at the bound goes through.
func TestHierarchyTooDeepEndToEnd(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, "lock {\n zone deep\n hierarchy\n}\nreverse_proxy {backend}", b)
	r := mustDo(t, http.MethodPut, url+deepKey(300), nil, http.StatusBadRequest)
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q; body %s", ct, r.body)
	}
	if ra := r.header.Get("Retry-After"); ra != "" {
		t.Fatalf("Retry-After = %q on a refusal that retrying cannot help", ra)
	}
	var p problem
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Status != http.StatusBadRequest || p.Type != problemType || p.Title == "" || p.Lock != nil ||
		!strings.Contains(p.Detail, "300 segments") || !strings.Contains(p.Detail, "255") {
		t.Fatalf("problem document: %s", r.body)
	}
	if writes, _, _ := b.counts(); writes != 0 {
		t.Fatalf("backend writes = %d: the refused write reached the backend", writes)
	}
	mustDo(t, http.MethodPut, url+deepKey(MaxHierarchyDepth), nil, http.StatusOK)
	waitEmpty(t, zoneTable(t, "deep"))
}
