package caddylock

import (
	"net/http"
	"testing"
)

// A lock handler of a zone that an earlier handler of the route holds
// the request's lock in lets it pass, also when a handler of another zone
// took a lock in between: the hold it finds first is the other zone's,
// and the one of its own zone is behind it. It answered 423, conflicting
// with the request's own lock. The lock is held meanwhile: a second write
// to the key is refused.
func TestLockHandlerOfAZoneHeldBeforeAnotherZone(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, `route {
	lock {
		zone abaA
	}
	lock {
		zone abaB
	}
	lock {
		zone abaA
	}
	reverse_proxy {backend}
}`, b)
	done := holdWrite(t, b, http.MethodPut, url+"/x", "w")
	assertLocked(t, do(http.DefaultClient, http.MethodPut, url+"/x", nil), "/x")
	b.open("w")
	if r := <-done; r.err != nil || r.status != http.StatusOK {
		t.Fatalf("a write through zones A, B and A again: %d %v %s, want 200", r.status, r.err, r.body)
	}
	if writes, _, _ := b.counts(); writes != 1 {
		t.Fatalf("backend writes = %d, want 1", writes)
	}
	mustDo(t, http.MethodPut, url+"/x", nil, http.StatusOK)
}
