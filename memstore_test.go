package caddylock

import (
	"net/http"
	"testing"
)

// `store memory` is the default store named: a handler with it and one
// without may serve one zone in one config (a different store would be a
// config error there), and its locks refuse conflicting writes.
func TestMemoryStoreNamed(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, `route /named/* {
	lock {
		zone memnamed
		store memory
	}
}
lock {
	zone memnamed
}
reverse_proxy {backend}`, b)
	first := holdWrite(t, b, http.MethodPut, url+"/named/doc", "first")
	mustDo(t, http.MethodPut, url+"/named/doc", nil, http.StatusLocked)
	b.open("first")
	if r := <-first; r.status != http.StatusOK {
		t.Fatalf("the held write: %d %v %s", r.status, r.err, r.body)
	}
	mustDo(t, http.MethodPut, url+"/named/doc", nil, http.StatusOK)
}
