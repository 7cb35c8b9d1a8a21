package caddylock

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// Shorthands for expected If header values.
func tok(t string) IfCondition     { return IfCondition{Token: t} }
func notTok(t string) IfCondition  { return IfCondition{Not: true, Token: t} }
func etag(e string) IfCondition    { return IfCondition{ETag: e} }
func notETag(e string) IfCondition { return IfCondition{Not: true, ETag: e} }
func list(tag string, cs ...IfCondition) IfList {
	return IfList{Tag: tag, Conditions: cs}
}

// rfcIfExamples are the If headers of RFC 4918 (sections 7.5, 7.6, 9.9.6,
// 9.10.8 and 10.4.6 to 10.4.11) and RFC 2518 section 9.4.1.1, with line
// folding replaced by spaces as net/http does.
var rfcIfExamples = []struct {
	name string
	in   string
	want IfHeader
}{
	{
		"4918 10.4.6 no-tag",
		`(<urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2> ["I am an ETag"]) (["I am another ETag"])`,
		IfHeader{[]IfList{
			list("", tok("urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2"), etag(`"I am an ETag"`)),
			list("", etag(`"I am another ETag"`)),
		}},
	},
	{
		"4918 10.4.7 not",
		`(Not <urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2> <urn:uuid:58f202ac-22cf-11d1-b12d-002035b29092>)`,
		IfHeader{[]IfList{
			list("", notTok("urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2"), tok("urn:uuid:58f202ac-22cf-11d1-b12d-002035b29092")),
		}},
	},
	{
		"4918 10.4.8 always true",
		`(<urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2>) (Not <DAV:no-lock>)`,
		IfHeader{[]IfList{
			list("", tok("urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2")),
			list("", notTok("DAV:no-lock")),
		}},
	},
	{
		"4918 10.4.9 tagged COPY",
		`</resource1> (<urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2> [W/"A weak ETag"]) (["strong ETag"])`,
		IfHeader{[]IfList{
			list("/resource1", tok("urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2"), etag(`W/"A weak ETag"`)),
			list("/resource1", etag(`"strong ETag"`)),
		}},
	},
	{
		"4918 10.4.10 collection lock",
		`<http://www.example.com/specs/> (<urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2>)`,
		IfHeader{[]IfList{
			list("http://www.example.com/specs/", tok("urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2")),
		}},
	},
	{
		"4918 10.4.11 unmapped URL",
		`</specs/rfc2518.doc> (["4217"])`,
		IfHeader{[]IfList{list("/specs/rfc2518.doc", etag(`"4217"`))}},
	},
	{
		"4918 7.5.1 COPY destination",
		`<http://www.example.com/users/f/fielding/index.html>     (<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>)`,
		IfHeader{[]IfList{
			list("http://www.example.com/users/f/fielding/index.html", tok("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")),
		}},
	},
	{
		"4918 9.10.8 refresh",
		`(<urn:uuid:e71d4fae-5dec-22d6-fea5-00a0c91e6be4>)`,
		IfHeader{[]IfList{list("", tok("urn:uuid:e71d4fae-5dec-22d6-fea5-00a0c91e6be4"))}},
	},
	{
		"4918 9.9.6 MOVE",
		`(<urn:uuid:fe184f2e-6eec-41d0-c765-01adc56e6bb4>)     (<urn:uuid:e454f3f3-acdc-452a-56c7-00a5c91e4b77>)`,
		IfHeader{[]IfList{
			list("", tok("urn:uuid:fe184f2e-6eec-41d0-c765-01adc56e6bb4")),
			list("", tok("urn:uuid:e454f3f3-acdc-452a-56c7-00a5c91e4b77")),
		}},
	},
	{
		"2518 9.4.1.1 two tags",
		`<http://www.foo.bar/resource1> (<locktoken:a-write-lock-token> [W/"A weak ETag"]) (["strong ETag"]) <http://www.bar.bar/random>(["another strong ETag"])`,
		IfHeader{[]IfList{
			list("http://www.foo.bar/resource1", tok("locktoken:a-write-lock-token"), etag(`W/"A weak ETag"`)),
			list("http://www.foo.bar/resource1", etag(`"strong ETag"`)),
			list("http://www.bar.bar/random", etag(`"another strong ETag"`)),
		}},
	},
	{
		"2518 opaquelocktoken",
		`(<opaquelocktoken:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>)`,
		IfHeader{[]IfList{list("", tok("opaquelocktoken:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"))}},
	},
}

func TestParseIfRFCExamples(t *testing.T) {
	for _, tc := range rfcIfExamples {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseIf(tc.in)
			if err != nil {
				t.Fatalf("ParseIf: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseIf:\n got %#v\nwant %#v", got, tc.want)
			}
			again, err := ParseIf(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("round trip of %q: %#v, %v", got.String(), again, err)
			}
		})
	}
}

func TestParseIfValid(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want IfHeader
	}{
		// White space: tabs, none at all, leading and trailing.
		{"\t (<a:b>)\t", IfHeader{[]IfList{list("", tok("a:b"))}}},
		{"(<a:b>[\"x\"])(Not<c:d>)", IfHeader{[]IfList{list("", tok("a:b"), etag(`"x"`)), list("", notTok("c:d"))}}},
		// "Not" is case-insensitive.
		{"(NOT <a:b> not [\"x\"])", IfHeader{[]IfList{list("", notTok("a:b"), notETag(`"x"`))}}},
		// Several lists per tag and several tags.
		{"</a> (<t:1>) (<t:2>) </b?q=1> (<t:3>)", IfHeader{[]IfList{
			list("/a", tok("t:1")), list("/a", tok("t:2")), list("/b?q=1", tok("t:3"))}}},
		// Percent-encoding, IPv6 host, sub-delims.
		{"<http://[::1]:8080/a%20b;x=1> ([W/\"\"])", IfHeader{[]IfList{list("http://[::1]:8080/a%20b;x=1", etag(`W/""`))}}},
		// Entity tag characters including obs-text.
		{"([\"a!#~\xe9\"])", IfHeader{[]IfList{list("", etag("\"a!#~\xe9\""))}}},
		// RFC 2616 quoted-strings: spaces and backslash escapes.
		{`(["a b\"c\\"])`, IfHeader{[]IfList{list("", etag(`"a b\"c\\"`))}}},
	} {
		got, err := ParseIf(tc.in)
		if err != nil {
			t.Errorf("ParseIf(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseIf(%q):\n got %#v\nwant %#v", tc.in, got, tc.want)
		}
	}
}

func TestParseIfInvalid(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr string
		offset  int
	}{
		{"", `expected "(" or "<" to start the header, found end of header`, 0},
		{"   ", "found end of header", 3},
		{"x", `expected "(", found 'x'`, 0},
		{"()", `expected a state token "<…>" or an entity tag "[…]" in list, found ")"`, 1},
		{"(", `expected a condition or ")", found end of header`, 1},
		{"(<a:b>", `expected a condition or ")", found end of header`, 6},
		{"(<a:b", `expected ">" to end the state token, found end of header`, 5},
		{"(<a:b >)", `state token: invalid character ' ' in URI`, 5},
		{"(< a:b>)", `state token: expected an absolute URI (scheme:…), found ' '`, 2},
		{"(<>)", "state token: expected a URI, found nothing", 2},
		{"(<abc>)", "state token: expected an absolute URI (scheme:…), found no scheme", 5},
		{"(<1a:b>)", "state token: expected an absolute URI (scheme:…), found '1'", 2},
		{"(</path>)", "state token: expected an absolute URI (scheme:…), found '/'", 2},
		{"(<a:b#frag>)", "a fragment (#) is not allowed here", 5},
		{"(<a:%2>)", `expected two hex digits after "%"`, 4},
		{"(<a:\xff>)", `invalid character "\xff" in URI`, 4},
		{"(Not)", `expected a state token "<…>" or an entity tag "[…]" after "Not", found ')'`, 4},
		{"(Not Not <a:b>)", `after "Not", found 'N'`, 5},
		{"(Nothing)", `after "Not", found 'h'`, 4},
		{"(x)", `after a condition, found 'x'`, 1},
		{"([x])", `expected an entity tag ("…" or W/"…") after "[", found 'x'`, 2},
		{"([ \"x\"])", `after "[", found ' '`, 2},
		{"([\"x\" ])", `expected "]" right after the entity tag, found ' '`, 5},
		{"([w/\"x\"])", `after "[", found 'w'`, 2},
		{"([\"x)", `expected '"' to end the entity tag, found end of header`, 5},
		{"([\"a\x01b\"])", `invalid character '\x01' in entity tag`, 4},
		{"([\"a\\\"])", `expected '"' to end the entity tag, found end of header`, 8},
		{"([\"a\\\x01\"])", `invalid character '\\' in entity tag`, 4},
		{"([\"x\"", `expected "]" right after the entity tag, found end of header`, 5},
		{"(<a:b>) </x> (<a:b>)", "tagged and untagged lists cannot be mixed", 8},
		{"</x>", `expected "(" after resource tag </x>, found end of header`, 4},
		{"</x> </y> (<a:b>)", `expected "(" after resource tag </x>, found "<"`, 5},
		{"</x> (<a:b>) x", `expected "(" or "<", found 'x'`, 13},
		{"<//host/x> (<a:b>)", `resource tag: expected an absolute URI or an absolute path, found "//"`, 1},
		{"<x> (<a:b>)", "resource tag: expected an absolute URI (scheme:…), found no scheme", 2},
		{"<a b> (<a:b>)", "resource tag: expected an absolute URI (scheme:…) or an absolute path, found ' '", 2},
		{"(<a:b>)\r\n (<c:d>)", `expected "(", found '\r'`, 7},
	} {
		h, err := ParseIf(tc.in)
		if err == nil {
			t.Errorf("ParseIf(%q) = %#v, want error", tc.in, h)
			continue
		}
		var se *IfSyntaxError
		if !errors.As(err, &se) {
			t.Errorf("ParseIf(%q): error %T is not an *IfSyntaxError", tc.in, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantErr) || se.Offset != tc.offset {
			t.Errorf("ParseIf(%q) error = %q (offset %d), want it to contain %q at offset %d", tc.in, err, se.Offset, tc.wantErr, tc.offset)
		}
	}
}

func TestIfString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"(<a:b>)", "(<a:b>)"},
		{" ( not<a:b>  [W/\"x\"] )(\t[\"y\"])", `(Not <a:b> [W/"x"]) (["y"])`},
		{"</a>(<t:1>)</a>(<t:2>)</b>(<t:3>)", "</a> (<t:1>) (<t:2>) </b> (<t:3>)"},
	} {
		h, err := ParseIf(tc.in)
		if err != nil {
			t.Fatalf("ParseIf(%q): %v", tc.in, err)
		}
		if got := h.String(); got != tc.want {
			t.Errorf("ParseIf(%q).String() = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestIfTokens(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"(<a:1>)", []string{"a:1"}},
		{"(Not <a:1>)", nil},
		{`(["x"])`, nil},
		{"(<a:2> <a:1>) (Not <a:3> <a:2>) (<a:1>) (<DAV:no-lock>)", []string{"a:2", "a:1", "DAV:no-lock"}},
		{"</x> (<a:1>) </y> (<a:1> <a:4>)", []string{"a:1", "a:4"}},
	} {
		h, err := ParseIf(tc.in)
		if err != nil {
			t.Fatalf("ParseIf(%q): %v", tc.in, err)
		}
		if got := h.Tokens(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseIf(%q).Tokens() = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestIfEval(t *testing.T) {
	// Resources of a host www.example.com; "/other" exists on no host we
	// know of, and tags of other hosts do not resolve.
	type res struct {
		tokens []string
		etag   string
	}
	resources := map[string]res{
		"/locked":   {[]string{"urn:uuid:1", "urn:uuid:2"}, `"e1"`},
		"/unlocked": {nil, `"e2"`},
		"/weak":     {nil, `W/"e3"`},
		"/noetag":   {[]string{"urn:uuid:3"}, ""},
	}
	resolve := func(req string) func(string) (string, bool) {
		return func(tag string) (string, bool) {
			switch {
			case tag == "":
				return req, true
			case strings.HasPrefix(tag, "/"):
				return tag, true
			case strings.HasPrefix(tag, "http://www.example.com/"):
				return strings.TrimPrefix(tag, "http://www.example.com"), true
			}
			return "", false
		}
	}
	for _, tc := range []struct {
		req, in string
		want    bool
	}{
		// State tokens.
		{"/locked", "(<urn:uuid:1>)", true},
		{"/locked", "(<urn:uuid:2>)", true},
		{"/locked", "(<urn:uuid:3>)", false},
		{"/locked", "(<URN:UUID:1>)", false}, // tokens compare exactly
		{"/unlocked", "(<urn:uuid:1>)", false},
		{"/locked", "(Not <urn:uuid:1>)", false},
		{"/locked", "(Not <urn:uuid:3>)", true},
		// AND within a list, OR between lists.
		{"/locked", "(<urn:uuid:1> <urn:uuid:2>)", true},
		{"/locked", "(<urn:uuid:1> <urn:uuid:3>)", false},
		{"/locked", "(<urn:uuid:3>) (<urn:uuid:2>)", true},
		{"/locked", "(<urn:uuid:3>) (<urn:uuid:4>)", false},
		{"/locked", `(<urn:uuid:1> ["e1"]) (["nope"])`, true},
		{"/locked", `(<urn:uuid:1> ["nope"]) (["e1"])`, true},
		{"/locked", `(<urn:uuid:1> ["nope"]) (["nope2"])`, false},
		// DAV:no-lock never matches, even on unlocked resources.
		{"/unlocked", "(<DAV:no-lock>)", false},
		{"/locked", "(<DAV:no-lock>)", false},
		{"/unlocked", "(Not <DAV:no-lock>)", true},
		{"/locked", "(<urn:uuid:9>) (Not <DAV:no-lock>)", true},
		{"/locked", "(<urn:uuid:9>) (Not <dav:no-lock>)", true},
		// Entity tags: strong condition needs a strong equal tag; a weak
		// condition matches either.
		{"/locked", `(["e1"])`, true},
		{"/locked", `([W/"e1"])`, true},
		{"/locked", `(["E1"])`, false},
		{"/weak", `(["e3"])`, false},
		{"/weak", `([W/"e3"])`, true},
		{"/weak", `(Not ["e3"])`, true},
		{"/noetag", `(["e1"])`, false},
		{"/noetag", `(Not ["e1"])`, true},
		{"/noetag", `([""])`, false},
		// Tagged lists apply to the tagged resource, not the request's.
		{"/unlocked", "</locked> (<urn:uuid:1>)", true},
		{"/unlocked", "<http://www.example.com/locked> (<urn:uuid:1>)", true},
		{"/locked", "</unlocked> (<urn:uuid:1>)", false},
		{"/unlocked", `</locked> (["e2"])`, false},
		{"/unlocked", `</unlocked> (["e2"]) </locked> (<urn:uuid:7>)`, true},
		// Tags that cannot be resolved make their lists false, even ones
		// that would hold on any resource.
		{"/locked", "<http://elsewhere.example/locked> (<urn:uuid:1>)", false},
		{"/locked", "<http://elsewhere.example/x> (Not <DAV:no-lock>)", false},
		{"/locked", "<http://elsewhere.example/x> (Not <DAV:no-lock>) </locked> (<urn:uuid:2>)", true},
		// A resource that does not exist has neither tokens nor ETag.
		{"/missing", "(Not <urn:uuid:1> Not [\"e1\"])", true},
		{"/missing", "(<urn:uuid:1>)", false},
		// RFC 4918 10.4.6 and 10.4.7 on a resource holding token 1.
		{"/locked", `(<urn:uuid:1> ["I am an ETag"]) (["e1"])`, true},
		{"/locked", "(Not <urn:uuid:1> <urn:uuid:2>)", false},
		{"/locked", "(Not <urn:uuid:5> <urn:uuid:2>)", true},
	} {
		h, err := ParseIf(tc.in)
		if err != nil {
			t.Fatalf("ParseIf(%q): %v", tc.in, err)
		}
		calls := map[string]int{}
		state := func(p string) ([]string, string) {
			calls[p]++
			r := resources[p]
			return r.tokens, r.etag
		}
		if got := h.Eval(resolve(tc.req), state); got != tc.want {
			t.Errorf("Eval(%q) on %s = %v, want %v", tc.in, tc.req, got, tc.want)
		}
		for p, n := range calls {
			if n > 1 {
				t.Errorf("Eval(%q): state(%q) called %d times", tc.in, p, n)
			}
		}
	}
	if (IfHeader{}).Eval(resolve("/locked"), func(string) ([]string, string) { return nil, "" }) {
		t.Error("empty header evaluated to true")
	}
}

func TestIfMatch(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{`(["abc"])`, `"abc"`, true},
		{`(<urn:uuid:1> ["abc"])`, `"abc"`, true},
		{`(Not <urn:uuid:1> ["abc"] ["abc"])`, `"abc"`, true},
		{`(<urn:uuid:1>)`, "", false},
		{`([W/"abc"])`, "", false},
		{`(Not ["abc"])`, "", false},
		{`(["abc"] ["def"])`, "", false},
		{`(["abc"]) (["abc"])`, "", false},
		{`(["a b"])`, "", false},
		{`(["a\"b"])`, "", false},
		{`</x> (["abc"])`, "", false},
	} {
		h, err := ParseIf(tc.in)
		if err != nil {
			t.Fatalf("ParseIf(%q): %v", tc.in, err)
		}
		got, ok := h.IfMatch()
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseIf(%q).IfMatch() = %q, %v, want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

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
		if got := FormatTimeout(tc.d, tc.infinite); got != tc.want {
			t.Errorf("FormatTimeout(%v, %v) = %q, want %q", tc.d, tc.infinite, got, tc.want)
		}
	}
	// What FormatTimeout writes, ParseTimeout reads back.
	for _, d := range []time.Duration{0, time.Second, 3600 * time.Second} {
		if got, err := ParseTimeout(FormatTimeout(d, false), 0, 0); err != nil || got != d {
			t.Errorf("ParseTimeout(FormatTimeout(%v)) = %v, %v", d, got, err)
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

const rfcLockInfo = `<?xml version="1.0" encoding="utf-8" ?>
<D:lockinfo xmlns:D='DAV:'>
  <D:lockscope><D:exclusive/></D:lockscope>
  <D:locktype><D:write/></D:locktype>
  <D:owner>
    <D:href>http://example.org/~ejw/contact.html</D:href>
  </D:owner>
</D:lockinfo>`

// xmlNode is a namespace-aware tree of an XML document, for comparing
// documents regardless of prefixes.
type xmlNode struct {
	Name     xml.Name
	Attr     map[xml.Name]string
	Text     string
	Children []*xmlNode
}

// parseXML parses doc (or a fragment wrapped in a root) into a tree,
// dropping namespace declarations and white-space-only text.
func parseXML(t *testing.T, doc []byte) *xmlNode {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	root := &xmlNode{}
	stack := []*xmlNode{root}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("output is not well-formed: %v\n%s", err, doc)
		}
		top := stack[len(stack)-1]
		switch tk := tok.(type) {
		case xml.StartElement:
			n := &xmlNode{Name: tk.Name, Attr: map[xml.Name]string{}}
			for _, a := range tk.Attr {
				if a.Name.Space != "xmlns" && !(a.Name.Space == "" && a.Name.Local == "xmlns") {
					n.Attr[a.Name] = a.Value
				}
			}
			top.Children = append(top.Children, n)
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if strings.TrimSpace(string(tk)) != "" {
				top.Text += string(tk)
			}
		}
	}
	if len(stack) != 1 {
		t.Fatalf("unbalanced document\n%s", doc)
	}
	return root
}

// ownerTree parses owner content the way a client would see it echoed.
func ownerTree(t *testing.T, owner []byte) *xmlNode {
	t.Helper()
	return parseXML(t, append(append([]byte(`<D:owner xmlns:D="DAV:" xmlns:x="urn:unrelated">`), owner...), "</D:owner>"...))
}

func TestParseLockInfo(t *testing.T) {
	for _, tc := range []struct {
		name  string
		body  string
		scope lockstore.Kind
		owner string // expected owner content, compared as XML trees
	}{
		{"rfc 9.10.7", rfcLockInfo, lockstore.Exclusive, `<D:href xmlns:D="DAV:">http://example.org/~ejw/contact.html</D:href>`},
		{"default namespace", `<lockinfo xmlns="DAV:"><lockscope><shared/></lockscope><locktype><write/></locktype><owner>Jane Smith</owner></lockinfo>`, lockstore.Shared, `Jane Smith`},
		{"other prefix", `<a:lockinfo xmlns:a="DAV:"><a:locktype><a:write/></a:locktype><a:lockscope><a:shared/></a:lockscope></a:lockinfo>`, lockstore.Shared, ""},
		{"prefix declared late", `<lockinfo xmlns="DAV:"><lockscope xmlns:q="DAV:"><q:exclusive/></lockscope><locktype><write/></locktype></lockinfo>`, lockstore.Exclusive, ""},
		{"unknown elements ignored", `<D:lockinfo xmlns:D="DAV:" xmlns:Z="urn:z"><Z:extra><D:lockscope><D:shared/></D:lockscope></Z:extra><D:lockscope><Z:x/><D:exclusive/></D:lockscope><D:future/><D:locktype><D:write><Z:y/></D:write></D:locktype></D:lockinfo>`, lockstore.Exclusive, ""},
		{"BOM and comments", "\xef\xbb\xbf<?xml version='1.0'?><!-- c --><D:lockinfo xmlns:D='DAV:'><!-- c --><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo><!-- c -->\n", lockstore.Exclusive, ""},
		{"owner with foreign namespaces", `<D:lockinfo xmlns:D="DAV:" xmlns:E="urn:e"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>` +
			`<D:owner><E:person E:id="7" plain="a&amp;&quot;b" xml:lang="en"><E:name>Ann &lt;ann@example.com&gt;</E:name><nons xmlns="">x</nons><D:href>http://x/</D:href></E:person></D:owner></D:lockinfo>`,
			lockstore.Exclusive,
			`<p:person xmlns:p="urn:e" p:id="7" plain='a&amp;"b' xml:lang="en"><p:name>Ann &lt;ann@example.com></p:name><nons>x</nons><D:href xmlns:D="DAV:">http://x/</D:href></p:person>`},
		{"empty owner", `<D:lockinfo xmlns:D="DAV:"><D:owner/><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>`, lockstore.Exclusive, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			li, err := ParseLockInfo(strings.NewReader(tc.body), 0)
			if err != nil {
				t.Fatalf("ParseLockInfo: %v", err)
			}
			if li.Scope != tc.scope || li.Type != "write" {
				t.Errorf("scope %v type %q, want %v write", li.Scope, li.Type, tc.scope)
			}
			if tc.owner == "" && li.Owner != nil && len(li.Owner) != 0 {
				t.Errorf("owner %q, want none", li.Owner)
			}
			if tc.owner != "" {
				got, want := ownerTree(t, li.Owner), ownerTree(t, []byte(tc.owner))
				if !reflect.DeepEqual(got, want) {
					t.Errorf("owner %s is not equivalent to %s", li.Owner, tc.owner)
				}
				// Parsing the echo again gives the same bytes.
				li2, err := ParseLockInfo(strings.NewReader(`<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>`+string(li.Owner)+`</D:owner></D:lockinfo>`), 0)
				if err != nil || !bytes.Equal(li2.Owner, li.Owner) {
					t.Errorf("re-parse of owner: %q, %v, want %q", li2.Owner, err, li.Owner)
				}
			}
		})
	}
	// nil for no owner, non-nil for an empty one.
	li, _ := ParseLockInfo(strings.NewReader(`<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>`), 0)
	if li.Owner != nil {
		t.Errorf("owner %q without DAV:owner, want nil", li.Owner)
	}
	li, _ = ParseLockInfo(strings.NewReader(`<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner></D:owner></D:lockinfo>`), 0)
	if li.Owner == nil || len(li.Owner) != 0 {
		t.Errorf("owner %q for an empty DAV:owner, want empty non-nil", li.Owner)
	}
}

func TestParseLockInfoOwnerVerbatimText(t *testing.T) {
	// Text, including line breaks and CR, comes back unchanged.
	body := "<D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>\n  a&#xD;b \t&amp; é 🙂\n</D:owner></D:lockinfo>"
	li, err := ParseLockInfo(strings.NewReader(body), 0)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(append(append([]byte("<o>"), li.Owner...), "</o>"...)))
	var v struct {
		Text string `xml:",chardata"`
	}
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if want := "\n  a\rb \t& é 🙂\n"; v.Text != want {
		t.Errorf("owner text %q, want %q", v.Text, want)
	}
}

func TestParseLockInfoErrors(t *testing.T) {
	const (
		scope = `<D:lockscope><D:exclusive/></D:lockscope>`
		typ   = `<D:locktype><D:write/></D:locktype>`
	)
	wrap := func(s string) string { return `<D:lockinfo xmlns:D="DAV:">` + s + `</D:lockinfo>` }
	billionLaughs := `<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<D:lockinfo xmlns:D="DAV:">` + scope + typ + `<D:owner>&lol3;</D:owner></D:lockinfo>`
	for _, tc := range []struct {
		name, body, wantErr string
	}{
		{"doctype", `<!DOCTYPE D:lockinfo SYSTEM "http://example.com/x.dtd">` + wrap(scope+typ), "document type declarations are not allowed"},
		{"doctype lower case", `<!doctype x>` + wrap(scope+typ), "not allowed"},
		{"billion laughs", billionLaughs, "document type declarations are not allowed"},
		{"external entity", `<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>` + wrap(scope+typ+`<D:owner>&e;</D:owner>`), "not allowed"},
		{"other declaration", `<!ELEMENT x ANY>` + wrap(scope+typ), "declarations (<!…>) are not allowed"},
		{"undefined entity", wrap(scope + typ + `<D:owner>&e;</D:owner>`), "invalid lockinfo"},
		{"missing scope", wrap(typ), "missing lockscope"},
		{"missing type", wrap(scope), "missing locktype"},
		{"empty scope", wrap(`<D:lockscope/>` + typ), "lockscope must contain DAV:exclusive or DAV:shared"},
		{"unknown scope", wrap(`<D:lockscope><D:local/></D:lockscope>` + typ), "lockscope must contain"},
		{"scope in other namespace", wrap(`<D:lockscope><exclusive xmlns="urn:x"/></D:lockscope>` + typ), "lockscope must contain"},
		{"two scopes", wrap(`<D:lockscope><D:exclusive/><D:shared/></D:lockscope>` + typ), "more than one scope"},
		{"two lockscopes", wrap(scope + scope + typ), "more than one lockscope"},
		{"unknown type", wrap(scope + `<D:locktype><D:read/></D:locktype>`), "locktype must contain DAV:write"},
		{"two locktypes", wrap(scope + typ + typ), "more than one locktype"},
		{"two owners", wrap(scope + typ + `<D:owner/><D:owner/>`), "more than one owner"},
		{"wrong root", `<D:lock xmlns:D="DAV:">` + scope + typ + `</D:lock>`, "root element is {DAV:}lock, expected DAV:lockinfo"},
		{"no namespace", `<lockinfo><lockscope><exclusive/></lockscope><locktype><write/></locktype></lockinfo>`, "root element is lockinfo"},
		{"unbound prefix", `<D:lockinfo>` + scope + typ + `</D:lockinfo>`, "undeclared namespace prefix"},
		{"unbound prefix in owner", wrap(scope + typ + `<D:owner><x:y/></D:owner>`), "undeclared namespace prefix"},
		{"unbound attribute prefix", wrap(scope + typ + `<D:owner><D:y x:a="1"/></D:owner>`), "undeclared namespace prefix"},
		{"prefix of a closed element", wrap(scope + typ + `<D:owner><a xmlns:x="x"/><x:y/></D:owner>`), "undeclared namespace prefix"},
		{"duplicate attribute", wrap(scope + typ + `<D:owner><y a="1" a="2"/></D:owner>`), "duplicate attribute"},
		{"two roots", wrap(scope+typ) + wrap(scope+typ), "more than one root element"},
		{"text after root", wrap(scope+typ) + "x", "text outside the lockinfo element"},
		{"text before root", "x" + wrap(scope+typ), "text outside"},
		{"truncated", `<D:lockinfo xmlns:D="DAV:">` + scope, "invalid lockinfo"},
		{"truncated owner", `<D:lockinfo xmlns:D="DAV:">` + scope + typ + `<D:owner><a>`, "invalid lockinfo"},
		{"mismatched tags", wrap(scope + typ + `<D:owner><a></b></D:owner>`), "invalid lockinfo"},
		{"no root", `<?xml version="1.0"?><!-- nothing -->`, "no lockinfo element"},
		{"other encoding", `<?xml version="1.0" encoding="ISO-8859-1"?>` + wrap(scope+typ), "invalid lockinfo"},
		{"invalid char", wrap(scope + typ + "<D:owner>\x01</D:owner>"), "invalid lockinfo"},
		{"owner amplification", wrap(scope + typ + `<D:owner xmlns:p="urn:` + strings.Repeat("n", 2000) + `">` + strings.Repeat("<p:a/><b/>", 200) + `</D:owner>`), "owner larger than"},
		{"reserved xmlns", wrap(scope + typ + `<D:owner><a xmlns:p="http://www.w3.org/2000/xmlns/" p:x="1"/></D:owner>`), "reserved xmlns namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			li, err := ParseLockInfo(strings.NewReader(tc.body), 0)
			if err == nil {
				t.Fatalf("ParseLockInfo succeeded: %+v", li)
			}
			if !errors.Is(err, ErrInvalidLockInfo) || errors.Is(err, ErrNoBody) || errors.Is(err, ErrBodyTooLarge) {
				t.Errorf("error %v does not wrap ErrInvalidLockInfo alone", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseLockInfoBodies(t *testing.T) {
	for _, body := range []string{"", " \r\n\t", "\xef\xbb\xbf"} {
		if _, err := ParseLockInfo(strings.NewReader(body), 100); !errors.Is(err, ErrNoBody) {
			t.Errorf("ParseLockInfo(%q) error = %v, want ErrNoBody", body, err)
		}
	}
	n := int64(len(rfcLockInfo))
	if _, err := ParseLockInfo(strings.NewReader(rfcLockInfo), n); err != nil {
		t.Errorf("body of exactly the limit: %v", err)
	}
	if _, err := ParseLockInfo(strings.NewReader(rfcLockInfo), n-1); !errors.Is(err, ErrBodyTooLarge) {
		t.Errorf("body over the limit: error %v, want ErrBodyTooLarge", err)
	}
	if _, err := ParseLockInfo(strings.NewReader(rfcLockInfo), math.MaxInt64); err != nil {
		t.Errorf("limit MaxInt64: %v", err)
	}
	// The default limit applies for maxBytes <= 0, and the reader is not
	// drained beyond it.
	big := io.MultiReader(strings.NewReader(`<D:lockinfo xmlns:D="DAV:"><D:owner>`), neverEnding('x'))
	if _, err := ParseLockInfo(big, 0); !errors.Is(err, ErrBodyTooLarge) {
		t.Errorf("endless body: error %v, want ErrBodyTooLarge", err)
	}
	readErr := errors.New("connection reset")
	_, err := ParseLockInfo(iotest.ErrReader(readErr), 100)
	if !errors.Is(err, readErr) || errors.Is(err, ErrInvalidLockInfo) {
		t.Errorf("read error: %v, want the reader's error", err)
	}
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

func TestMarshalLockDiscovery(t *testing.T) {
	owner := []byte(`<href xmlns="DAV:">http://example.org/~ejw/contact.html</href>`)
	locks := []ActiveLock{
		{Root: "/workspace/web dav/a&b<c>", Token: "urn:uuid:e71d4fae-5dec-22d6-fea5-00a0c91e6be4", Scope: lockstore.Exclusive, Depth: lockstore.DepthInfinity, Owner: owner, Timeout: 604800 * time.Second},
		{Root: "/x", Token: "urn:x&y", Scope: lockstore.Shared, Depth: lockstore.DepthZero, Infinite: true},
		{Root: "//evil.example/x", Scope: lockstore.Shared, Depth: lockstore.DepthZero, Timeout: 1500 * time.Millisecond},
	}
	doc := MarshalLockDiscovery(locks...)
	if !bytes.HasPrefix(doc, []byte(`<?xml version="1.0" encoding="utf-8"?>`)) {
		t.Errorf("missing XML declaration: %s", doc)
	}
	var got struct {
		XMLName       xml.Name `xml:"DAV: prop"`
		LockDiscovery struct {
			ActiveLock []struct {
				LockType struct {
					Write *struct{} `xml:"DAV: write"`
				} `xml:"DAV: locktype"`
				LockScope struct {
					Exclusive *struct{} `xml:"DAV: exclusive"`
					Shared    *struct{} `xml:"DAV: shared"`
				} `xml:"DAV: lockscope"`
				Depth string `xml:"DAV: depth"`
				Owner *struct {
					Href string `xml:"DAV: href"`
				} `xml:"DAV: owner"`
				Timeout   string   `xml:"DAV: timeout"`
				LockToken []string `xml:"DAV: locktoken>href"`
				LockRoot  string   `xml:"DAV: lockroot>href"`
			} `xml:"DAV: activelock"`
		} `xml:"DAV: lockdiscovery"`
	}
	if err := xml.Unmarshal(doc, &got); err != nil {
		t.Fatalf("unmarshal: %v\n%s", err, doc)
	}
	al := got.LockDiscovery.ActiveLock
	if len(al) != 3 {
		t.Fatalf("%d activelocks, want 3\n%s", len(al), doc)
	}
	a := al[0]
	if a.LockType.Write == nil || a.LockScope.Exclusive == nil || a.LockScope.Shared != nil || a.Depth != "infinity" ||
		a.Owner == nil || a.Owner.Href != "http://example.org/~ejw/contact.html" || a.Timeout != "Second-604800" ||
		!reflect.DeepEqual(a.LockToken, []string{"urn:uuid:e71d4fae-5dec-22d6-fea5-00a0c91e6be4"}) ||
		a.LockRoot != "/workspace/web%20dav/a&b%3Cc%3E" {
		t.Errorf("first lock: %+v\n%s", a, doc)
	}
	a = al[1]
	if a.LockScope.Shared == nil || a.LockScope.Exclusive != nil || a.Depth != "0" || a.Owner != nil ||
		a.Timeout != "Infinite" || !reflect.DeepEqual(a.LockToken, []string{"urn:x&y"}) || a.LockRoot != "/x" {
		t.Errorf("second lock: %+v\n%s", a, doc)
	}
	a = al[2]
	if a.LockToken != nil || a.Timeout != "Second-2" || a.LockRoot != "/.//evil.example/x" {
		t.Errorf("third lock: %+v\n%s", a, doc)
	}
	// The exact layout of one lock, as in the RFC's examples.
	want := `<?xml version="1.0" encoding="utf-8"?>` + "\n" + `<D:prop xmlns:D="DAV:"><D:lockdiscovery><D:activelock><D:locktype><D:write/></D:locktype><D:lockscope><D:exclusive/></D:lockscope><D:depth>infinity</D:depth><D:owner>o</D:owner><D:timeout>Second-3600</D:timeout><D:locktoken><D:href>urn:uuid:1</D:href></D:locktoken><D:lockroot><D:href>/x</D:href></D:lockroot></D:activelock></D:lockdiscovery></D:prop>`
	if got := string(MarshalLockDiscovery(ActiveLock{Root: "/x", Token: "urn:uuid:1", Scope: lockstore.Exclusive, Depth: lockstore.DepthInfinity, Owner: []byte("o"), Timeout: time.Hour})); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestLockOwnerRoundTrip(t *testing.T) {
	// A client's owner comes back equivalent in the LOCK response, even
	// though the response binds prefixes differently.
	body := `<x:lockinfo xmlns:x="DAV:" xmlns:D="urn:not-dav"><x:lockscope><x:exclusive/></x:lockscope><x:locktype><x:write/></x:locktype>` +
		`<x:owner><x:href>http://x/</x:href><D:note D:k="v">hi</D:note></x:owner></x:lockinfo>`
	li, err := ParseLockInfo(strings.NewReader(body), 0)
	if err != nil {
		t.Fatal(err)
	}
	doc := MarshalLockDiscovery(ActiveLock{Root: "/", Token: NewLockToken(), Scope: li.Scope, Depth: lockstore.DepthZero, Owner: li.Owner, Timeout: time.Minute})
	tree := parseXML(t, doc)
	var owner *xmlNode
	var find func(n *xmlNode)
	find = func(n *xmlNode) {
		for _, c := range n.Children {
			if c.Name == (xml.Name{Space: "DAV:", Local: "owner"}) {
				owner = c
			}
			find(c)
		}
	}
	find(tree)
	if owner == nil || len(owner.Children) != 2 {
		t.Fatalf("owner not echoed:\n%s", doc)
	}
	href, note := owner.Children[0], owner.Children[1]
	if href.Name != (xml.Name{Space: "DAV:", Local: "href"}) || href.Text != "http://x/" {
		t.Errorf("href echoed as %+v", href)
	}
	if note.Name != (xml.Name{Space: "urn:not-dav", Local: "note"}) || note.Text != "hi" ||
		note.Attr[xml.Name{Space: "urn:not-dav", Local: "k"}] != "v" {
		t.Errorf("note echoed as %+v", note)
	}
}

func TestLockDiscoveryElement(t *testing.T) {
	for _, locks := range [][]ActiveLock{nil, {{Root: "/a", Token: "urn:uuid:1", Scope: lockstore.Shared, Depth: lockstore.DepthZero}}} {
		el := LockDiscoveryElement(locks...)
		if bytes.HasPrefix(el, []byte("<?xml")) {
			t.Errorf("element starts with an XML declaration: %s", el)
		}
		// It must be well-formed inside a document that binds D elsewhere.
		doc := append(append([]byte(`<D:prop xmlns:D="urn:other">`), el...), "</D:prop>"...)
		tree := parseXML(t, doc)
		ld := tree.Children[0].Children[0]
		if ld.Name != (xml.Name{Space: "DAV:", Local: "lockdiscovery"}) || len(ld.Children) != len(locks) {
			t.Errorf("lockdiscovery element: %s", el)
		}
	}
}

func TestSupportedLockElement(t *testing.T) {
	el := SupportedLockElement()
	var got struct {
		XMLName xml.Name `xml:"DAV: supportedlock"`
		Entries []struct {
			Scope struct {
				Exclusive *struct{} `xml:"DAV: exclusive"`
				Shared    *struct{} `xml:"DAV: shared"`
			} `xml:"DAV: lockscope"`
			Type struct {
				Write *struct{} `xml:"DAV: write"`
			} `xml:"DAV: locktype"`
		} `xml:"DAV: lockentry"`
	}
	if err := xml.Unmarshal(el, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != 2 ||
		got.Entries[0].Scope.Exclusive == nil || got.Entries[0].Type.Write == nil ||
		got.Entries[1].Scope.Shared == nil || got.Entries[1].Type.Write == nil {
		t.Errorf("supportedlock: %s", el)
	}
}

func TestWebDAVError(t *testing.T) {
	type davError struct {
		XMLName xml.Name
		Inner   []struct {
			XMLName xml.Name
			Hrefs   []string `xml:"DAV: href"`
		} `xml:",any"`
	}
	for _, tc := range []struct {
		cond  string
		hrefs []string
		want  []string // escaped hrefs
	}{
		{CondLockTokenSubmitted, []string{"/a", "/b c/ü&<"}, []string{"/a", "/b%20c/%C3%BC&%3C"}},
		{CondNoConflictingLock, nil, nil},
		{CondLockTokenMatchesRequestURI, nil, nil},
		{CondCannotModifyProtectedProperty, nil, nil},
		{CondPropfindFiniteDepth, nil, nil},
	} {
		doc := MarshalDAVError(tc.cond, tc.hrefs...)
		var got davError
		if err := xml.Unmarshal(doc, &got); err != nil {
			t.Fatalf("%s: %v\n%s", tc.cond, err, doc)
		}
		if got.XMLName != (xml.Name{Space: "DAV:", Local: "error"}) || len(got.Inner) != 1 ||
			got.Inner[0].XMLName != (xml.Name{Space: "DAV:", Local: tc.cond}) || !reflect.DeepEqual(got.Inner[0].Hrefs, tc.want) {
			t.Errorf("%s: %+v\n%s", tc.cond, got, doc)
		}
	}
	want := `<?xml version="1.0" encoding="utf-8"?>` + "\n" + `<D:error xmlns:D="DAV:"><D:lock-token-submitted><D:href>/a</D:href></D:lock-token-submitted></D:error>`
	if got := string(MarshalDAVError(CondLockTokenSubmitted, "/a")); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	want = `<?xml version="1.0" encoding="utf-8"?>` + "\n" + `<D:error xmlns:D="DAV:"><D:no-conflicting-lock/></D:error>`
	if got := string(MarshalDAVError(CondNoConflictingLock)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	// Names that are not XML names cannot break the document.
	for _, bad := range []string{"", "a b", "x></D:error><y", "1x"} {
		var got davError
		if err := xml.Unmarshal(MarshalDAVError(bad, "/a"), &got); err != nil || len(got.Inner) != 0 {
			t.Errorf("MarshalDAVError(%q): %+v, %v", bad, got, err)
		}
	}
}

// Fuzz targets. Seeds are the examples above; found failures live in
// testdata/fuzz.

func FuzzParseIf(f *testing.F) {
	for _, tc := range rfcIfExamples {
		f.Add(tc.in)
	}
	for _, s := range []string{"", "(", "()", "(Not)", `([W/"x"])`, "</a>(<b:c>)</a>(<d:e>)", "(<a:b>) </x> (<a:b>)", "(<a:%zz>)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseIf(s)
		if err != nil {
			var se *IfSyntaxError
			if !errors.As(err, &se) || se.Offset < 0 || se.Offset > len(s) {
				t.Fatalf("ParseIf(%q): bad error %#v", s, err)
			}
			return
		}
		if len(h.Lists) == 0 {
			t.Fatalf("ParseIf(%q) succeeded without lists", s)
		}
		canon := h.String()
		h2, err := ParseIf(canon)
		if err != nil {
			t.Fatalf("ParseIf(%q).String() = %q does not parse: %v", s, canon, err)
		}
		if !reflect.DeepEqual(h, h2) {
			t.Fatalf("round trip of %q via %q:\n got %#v\nwant %#v", s, canon, h2, h)
		}
		if h2.String() != canon {
			t.Fatalf("String not canonical: %q then %q", canon, h2.String())
		}
		h.Tokens()
		h.IfMatch()
		h.Eval(func(tag string) (string, bool) { return tag, tag != "/nope" },
			func(string) ([]string, string) { return h.Tokens(), `W/"x"` })
	})
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
		if got, err := ParseTimeout(FormatTimeout(d, false), def, limit); err != nil || got != d {
			t.Fatalf("ParseTimeout(FormatTimeout(%v)) = %v, %v", d, got, err)
		}
	})
}

func FuzzParseLockInfo(f *testing.F) {
	f.Add([]byte(rfcLockInfo))
	f.Add([]byte(`<lockinfo xmlns="DAV:"><lockscope><shared/></lockscope><locktype><write/></locktype><owner>Jane Smith</owner></lockinfo>`))
	f.Add([]byte(`<D:lockinfo xmlns:D="DAV:" xmlns:E="urn:e"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner><E:p E:id="7" a="&lt;" xml:lang="en">t&amp;<x xmlns=""/></E:p></D:owner></D:lockinfo>`))
	f.Add([]byte(`<!DOCTYPE x [<!ENTITY a "b">]><D:lockinfo xmlns:D="DAV:"/>`))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, body []byte) {
		li, err := ParseLockInfo(bytes.NewReader(body), 4096)
		if err != nil {
			if !errors.Is(err, ErrInvalidLockInfo) && !errors.Is(err, ErrNoBody) && !errors.Is(err, ErrBodyTooLarge) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if bytes.Contains(bytes.ToLower(body), []byte("<!doctype")) {
			t.Fatalf("accepted a DOCTYPE: %q", body)
		}
		if li.Scope != lockstore.Exclusive && li.Scope != lockstore.Shared || li.Type != "write" {
			t.Fatalf("bad result %+v", li)
		}
		if len(li.Owner) > 2*len(body)+1024 {
			t.Fatalf("owner of %d bytes from a body of %d", len(li.Owner), len(body))
		}
		// The owner must be well-formed on its own and stable when
		// parsed again.
		doc := MarshalLockDiscovery(ActiveLock{Root: "/", Scope: li.Scope, Owner: li.Owner})
		d := xml.NewDecoder(bytes.NewReader(doc))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("lockdiscovery with owner %q is not well-formed: %v", li.Owner, err)
			}
		}
		if li.Owner != nil {
			again := `<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>` + string(li.Owner) + `</D:owner></D:lockinfo>`
			li2, err := ParseLockInfo(strings.NewReader(again), 1<<20)
			if err != nil || !bytes.Equal(li2.Owner, li.Owner) {
				t.Fatalf("owner %q re-parsed as %q, %v", li.Owner, li2.Owner, err)
			}
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

// BenchmarkParseLockInfoDeep parses owners nested 1 000 and 10 000 deep,
// each level declaring a namespace of its own: the time per level must
// stay flat (a check that scanned every open element grew with depth).
func BenchmarkParseLockInfoDeep(b *testing.B) {
	for _, depth := range []int{1000, 10000} {
		var body strings.Builder
		body.WriteString(`<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>`)
		for i := range depth {
			fmt.Fprintf(&body, `<n%d:e xmlns:n%d="urn:n%d">`, i, i, i)
		}
		for i := depth - 1; i >= 0; i-- {
			fmt.Fprintf(&body, `</n%d:e>`, i)
		}
		body.WriteString(`</D:owner></D:lockinfo>`)
		data := body.String()
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			for b.Loop() {
				if _, err := ParseLockInfo(strings.NewReader(data), int64(len(data))); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(depth), "ns/level")
		})
	}
}
