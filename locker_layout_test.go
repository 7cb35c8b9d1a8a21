package caddylock

import (
	"testing"
	"unsafe"
)

// Every shard of a lock table sits in a 128-byte pair of cache lines of
// its own: a shard that straddles pairs shares a line with its neighbour,
// and two CPUs working on neighbouring shards then move that line between
// them on every operation.
func TestShardsOwnTheirCacheLines(t *testing.T) {
	if s := unsafe.Sizeof(shard{}); s != 128 {
		t.Fatalf("a shard is %d bytes, want 128", s)
	}
	for range 16 { // allocations of the size class at several addresses
		l := newMemLocker(false, 0, 0)
		for i := range l.shards {
			if a := uintptr(unsafe.Pointer(&l.shards[i])); a%128 != 0 {
				t.Fatalf("shard %d at %#x, not on a 128-byte boundary (memLocker is %d bytes)", i, a, unsafe.Sizeof(*l))
			}
		}
	}
}
