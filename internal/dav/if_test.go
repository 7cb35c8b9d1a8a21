package dav

import (
	"errors"
	"reflect"
	"strings"
	"testing"
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
		var se *ifSyntaxError
		if !errors.As(err, &se) {
			t.Errorf("ParseIf(%q): error %T is not an *ifSyntaxError", tc.in, err)
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

// The fuzz targets of this package are seeded with the examples of its
// tests; failures found live in testdata/fuzz.
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
			var se *ifSyntaxError
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
