package dav

import (
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

func TestParseTimeout(t *testing.T) {
	const (
		def = 10 * time.Minute
		max = time.Hour
	)
	for _, tc := range []struct {
		in       string
		def, max time.Duration
		want     time.Duration
		wantErr  string
	}{
		{in: "", want: def},
		{in: " \t", want: def},
		{in: "Second-60", want: time.Minute},
		{in: "second-60", want: time.Minute},
		{in: "SECOND-0", want: 0},
		{in: "Second-0007", want: 7 * time.Second},
		{in: "Second-3600", want: max},
		{in: "Second-3601", want: max},
		{in: "Second-99999999999999999999", want: max},
		{in: "Second-99999999999999999999", max: -1, want: math.MaxInt64},
		{in: "Second-9223372036", max: -1, want: 9223372036 * time.Second},
		{in: "Second-9223372037", max: -1, want: math.MaxInt64},
		{in: "Infinite", want: max},
		{in: "infinite", want: max},
		{in: "Infinite", max: -1, want: math.MaxInt64},
		// RFC 4918 section 9.10.7: the first element is used.
		{in: "Infinite, Second-4100000000", want: max},
		{in: "Second-30,Infinite", want: 30 * time.Second},
		{in: " Second-30 ,\tInfinite ", want: 30 * time.Second},
		{in: ", Second-30,,", want: 30 * time.Second},
		// def is clamped too.
		{in: "", def: 2 * time.Hour, want: max},
		{in: "", def: -time.Second, want: 0},
		{in: ",", wantErr: `expected "Second-N" or "Infinite"`},
		{in: "Second-", wantErr: `expected digits after "Second-"`},
		{in: "Second--1", wantErr: `expected digits after "Second-", found '-'`},
		{in: "Second-+1", wantErr: `found '+'`},
		{in: "Second-1.5", wantErr: `found '.'`},
		{in: "Second- 1", wantErr: `found ' '`},
		{in: "Second-1 2", wantErr: `found ' '`},
		{in: "Second-１", wantErr: `found '１'`},
		{in: "Seconds-1", wantErr: `expected "Second-N" or "Infinite", found "Seconds-1"`},
		{in: "Infinity", wantErr: `found "Infinity"`},
		{in: "Second-10, garbage", wantErr: `found "garbage"`},
		{in: "60", wantErr: `found "60"`},
	} {
		d, m := tc.def, tc.max
		if d == 0 {
			d = def
		}
		if m == 0 {
			m = max
		}
		got, err := ParseTimeout(tc.in, d, m)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseTimeout(%q) = %v, %v, want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseTimeout(%q, %v, %v) = %v, %v, want %v", tc.in, d, m, got, err, tc.want)
		}
	}
}

func TestFormatTimeout(t *testing.T) {
	for _, tc := range []struct {
		d        time.Duration
		infinite bool
		want     string
	}{
		{time.Hour, false, "Second-3600"},
		{time.Hour, true, "Infinite"},
		{0, false, "Second-0"},
		{-time.Hour, false, "Second-0"},
		{time.Nanosecond, false, "Second-1"},
		{time.Second, false, "Second-1"},
		{time.Second + 1, false, "Second-2"},
		{math.MaxInt64, false, "Second-9223372037"},
	} {
		if got := formatTimeout(tc.d, tc.infinite); got != tc.want {
			t.Errorf("formatTimeout(%v, %v) = %q, want %q", tc.d, tc.infinite, got, tc.want)
		}
	}
	// What formatTimeout writes, ParseTimeout reads back.
	for _, d := range []time.Duration{0, time.Second, 3600 * time.Second} {
		if got, err := ParseTimeout(formatTimeout(d, false), 0, 0); err != nil || got != d {
			t.Errorf("ParseTimeout(formatTimeout(%v)) = %v, %v", d, got, err)
		}
	}
}

func TestParseDepth(t *testing.T) {
	for _, tc := range []struct {
		in      string
		def     lockstore.Depth
		want    lockstore.Depth
		wantErr bool
	}{
		{"", lockstore.DepthInfinity, lockstore.DepthInfinity, false},
		{"", lockstore.DepthZero, lockstore.DepthZero, false},
		{"0", lockstore.DepthInfinity, lockstore.DepthZero, false},
		{"1", lockstore.DepthInfinity, lockstore.DepthOne, false},
		{"infinity", lockstore.DepthZero, lockstore.DepthInfinity, false},
		{"Infinity", lockstore.DepthZero, lockstore.DepthInfinity, false},
		{" INFINITY ", lockstore.DepthZero, lockstore.DepthInfinity, false},
		{"2", lockstore.DepthZero, 0, true},
		{"-1", lockstore.DepthZero, 0, true},
		{"00", lockstore.DepthZero, 0, true},
		{"infinite", lockstore.DepthZero, 0, true},
		{"0,1", lockstore.DepthZero, 0, true},
	} {
		got, err := ParseDepth(tc.in, tc.def)
		if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
			t.Errorf("ParseDepth(%q, %v) = %v, %v, want %v (error %v)", tc.in, tc.def, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), `expected "0", "1" or "infinity"`) {
			t.Errorf("ParseDepth(%q) error %q does not say what is expected", tc.in, err)
		}
	}
	for d, s := range map[lockstore.Depth]string{lockstore.DepthZero: "0", lockstore.DepthOne: "1", lockstore.DepthInfinity: "infinity", 7: "Depth(7)"} {
		if d.String() != s {
			t.Errorf("Depth(%d).String() = %q, want %q", int(d), d.String(), s)
		}
	}
}

func TestParseLockDepth(t *testing.T) {
	for in, want := range map[string]lockstore.Depth{"": lockstore.DepthInfinity, "0": lockstore.DepthZero, "infinity": lockstore.DepthInfinity} {
		if got, err := ParseLockDepth(in); err != nil || got != want {
			t.Errorf("ParseLockDepth(%q) = %v, %v, want %v", in, got, err, want)
		}
	}
	if _, err := ParseLockDepth("1"); err == nil || !strings.Contains(err.Error(), `"1" is not allowed, use "0" or "infinity"`) {
		t.Errorf("ParseLockDepth(1) error = %v", err)
	}
	if _, err := ParseLockDepth("x"); err == nil {
		t.Error("ParseLockDepth(x) succeeded")
	}
}

func TestParseLockToken(t *testing.T) {
	for _, tc := range []struct{ in, want, wantErr string }{
		{in: "<urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2>", want: "urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2"},
		{in: " <opaquelocktoken:x> ", want: "opaquelocktoken:x"},
		{in: "<http://example.com/a?b>", want: "http://example.com/a?b"},
		{in: "", wantErr: "missing Lock-Token header"},
		{in: "urn:uuid:1", wantErr: `expected "<" absolute-URI ">"`},
		{in: "<urn:uuid:1", wantErr: `expected "<" absolute-URI ">"`},
		{in: "<>", wantErr: "expected a URI, found nothing"},
		{in: "<uuid>", wantErr: "found no scheme"},
		{in: "</a/b>", wantErr: "expected an absolute URI (scheme:…), found '/'"},
		{in: "<urn:uuid:1> <urn:uuid:2>", wantErr: "invalid character '>' in URI"},
		{in: "<urn:a#b>", wantErr: "fragment"},
		{in: "<<urn:a>>", wantErr: "found '<'"},
	} {
		got, err := ParseLockToken(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseLockToken(%q) = %q, %v, want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseLockToken(%q) = %q, %v, want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestNewLockToken(t *testing.T) {
	re := regexp.MustCompile(`^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := make(map[string]bool)
	var ones, zeros [128]int
	const n = 2000
	for range n {
		tk := NewLockToken()
		if !re.MatchString(tk) {
			t.Fatalf("token %q is not a lower-case version 4 UUID URN", tk)
		}
		if seen[tk] {
			t.Fatalf("duplicate token %q", tk)
		}
		seen[tk] = true
		// Tokens must be usable in If and Lock-Token headers.
		if got, err := ParseLockToken("<" + tk + ">"); err != nil || got != tk {
			t.Fatalf("ParseLockToken(<%s>) = %q, %v", tk, got, err)
		}
		hexDigits := strings.ReplaceAll(strings.TrimPrefix(tk, "urn:uuid:"), "-", "")
		for i := range 32 {
			v := strings.IndexByte("0123456789abcdef", hexDigits[i])
			for j := range 4 {
				if v&(8>>j) != 0 {
					ones[i*4+j]++
				} else {
					zeros[i*4+j]++
				}
			}
		}
	}
	// Apart from the 4 version and 2 variant bits, every bit must vary.
	fixed := 0
	for i := range 128 {
		if ones[i] == 0 || zeros[i] == 0 {
			fixed++
		}
	}
	if fixed != 6 {
		t.Errorf("%d fixed bits, want 6 (version and variant)", fixed)
	}
}

func FuzzParseTimeout(f *testing.F) {
	for _, s := range []string{"", "Infinite", "Second-0", "Second-3600", "Infinite, Second-4100000000", "second-99999999999999999999", "Second-", ",", "Second-1,x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		const def, limit = time.Minute, time.Hour
		d, err := ParseTimeout(s, def, limit)
		if err != nil {
			return
		}
		if d < 0 || d > limit {
			t.Fatalf("ParseTimeout(%q) = %v, outside [0, %v]", s, d, limit)
		}
		if d%time.Second != 0 && d != limit {
			t.Fatalf("ParseTimeout(%q) = %v, not whole seconds", s, d)
		}
		if got, err := ParseTimeout(formatTimeout(d, false), def, limit); err != nil || got != d {
			t.Fatalf("ParseTimeout(formatTimeout(%v)) = %v, %v", d, got, err)
		}
	})
}

func FuzzParseDepth(f *testing.F) {
	// RFC 4918 section 10.2 values, and what clients get wrong.
	for _, s := range []string{"0", "1", "infinity", "Infinity", "", " 0 ", "2", "-1", "infinite", "0, 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDepth(s, lockstore.DepthInfinity)
		if err != nil {
			if _, lerr := ParseLockDepth(s); lerr == nil {
				t.Fatalf("ParseLockDepth(%q) accepts what ParseDepth refuses", s)
			}
			return
		}
		if d != lockstore.DepthZero && d != lockstore.DepthOne && d != lockstore.DepthInfinity {
			t.Fatalf("ParseDepth(%q) = %d", s, d)
		}
		if back, err := ParseDepth(d.String(), lockstore.DepthZero); err != nil || back != d {
			t.Fatalf("ParseDepth(%q) = %v; its String %q parses to %v, %v", s, d, d.String(), back, err)
		}
		ld, err := ParseLockDepth(s)
		if (d == lockstore.DepthOne) != (err != nil) || (err == nil && ld != d) {
			t.Fatalf("ParseLockDepth(%q) = %v, %v; ParseDepth gave %v", s, ld, err, d)
		}
	})
}
