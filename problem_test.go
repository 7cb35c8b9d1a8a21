package caddylock

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

// The problem document is written by hand for speed; encoding/json is
// the reference it must match byte for byte.
func TestProblemJSONMatchesEncodingJSON(t *testing.T) {
	expires := time.Date(2026, 11, 25, 10, 4, 5, 123456789, time.FixedZone("x", 3600))
	for _, p := range []problem{
		{},
		{Type: problemType, Title: "Resource is locked", Status: 423, Detail: "PUT /a conflicts", Instance: "/a?x=1"},
		{Type: problemType, Title: "t", Status: 423, Instance: "/a", Lock: &problemLock{Key: "/a", Kind: "exclusive", HeldSeconds: 1.25}},
		{Status: 503, Lock: &problemLock{Key: "/a/b", Kind: "shared", Below: true, HeldSeconds: 0}},
		{Status: 423, Lock: &problemLock{Key: "/x", Kind: "shared", HeldSeconds: 3e-7, Explicit: true, Expires: &expires}},
		{Status: 423, Lock: &problemLock{HeldSeconds: 1e21}},
		{Status: 423, Lock: &problemLock{HeldSeconds: 123456.000001}},
		{Detail: "quote \" backslash \\ tab \t nl \n cr \r bs \b ff \f nul \x00 esc \x1b del \x7f"},
		{Detail: "<script>&amp;</script>", Instance: "/über/日本/\u2028\u2029/😀"},
		{Detail: "bad utf-8: \xff\xfe \xe2\x82 end", Title: "\xc0"},
		{Status: 412, Title: "Precondition failed", ETag: `"cl-b-5c0bd6f3a17e22d1"`},
		{Status: 428, Lock: &problemLock{Key: "/a"}, ETag: `W/"<&>"`},
	} {
		want, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.appendJSON(nil); string(got) != string(want) {
			t.Errorf("appendJSON:\n got %s\nwant %s", got, want)
		}
	}
}

// A float that JSON cannot hold still gives a valid document.
func TestProblemJSONNonFiniteFloat(t *testing.T) {
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		p := problem{Lock: &problemLock{HeldSeconds: f}}
		var v map[string]any
		if err := json.Unmarshal(p.appendJSON(nil), &v); err != nil {
			t.Errorf("held_seconds %v: invalid JSON: %v", f, err)
		}
	}
}

func FuzzProblemJSON(f *testing.F) {
	f.Add("PUT /a", "/a?b=<c>", "/a", 1.5, true)
	f.Add("\xff\u2028\"\\", "\x00\x1f", "日本", 1e-9, false)
	f.Fuzz(func(t *testing.T, detail, instance, key string, held float64, below bool) {
		if math.IsNaN(held) || math.IsInf(held, 0) {
			return // encoding/json refuses these; TestProblemJSONNonFiniteFloat covers them
		}
		p := problem{Type: problemType, Status: 423, Detail: detail, Instance: instance,
			Lock: &problemLock{Key: key, Kind: "exclusive", Below: below, HeldSeconds: held}}
		want, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.appendJSON(nil); string(got) != string(want) {
			t.Fatalf("appendJSON:\n got %q\nwant %q", got, want)
		}
	})
}
