package caddylock

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
)

// sendPut sends a PUT with the query and header lines (name, value pairs,
// a name may repeat) and reads the answer.
func sendPut(t *testing.T, url, query string, header ...string) result {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url+query, strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		// Set the map directly: Add would canonicalise X_Doc_Id.
		req.Header[header[i]] = append(req.Header[header[i]], header[i+1])
	}
	return doRequest(http.DefaultClient, req)
}

// The attack: a header that the lock key reads, sent twice, made the key
// "7,8" while the backend (Go's Header.Get) wrote resource 7 under a lock
// held on 7. It is refused.
func TestRepeatedKeyHeaderRefused(t *testing.T) {
	b := newBackend(t) // reads its resource from X-Resource with Header.Get
	url := startCaddy(t, "header >X-Lock-Result {http.lock.result}\nlock {\n zone keypart_attack\n key {http.request.header.X-Resource}\n}\nreverse_proxy {backend}", b)
	done := holdWrite(t, b, http.MethodPut, url+"/x", "w", "X-Resource", "7")
	twice := sendPut(t, url+"/x", "", "X-Resource", "7", "X-Resource", "8")
	once := sendPut(t, url+"/x", "", "X-Resource", "7")
	b.open("w") // before asserting: a failed test must not leave the write held
	<-done
	assertAmbiguous(t, twice, "Lock key part given more than once")
	assertLocked(t, once, "7")
	if r := sendPut(t, url+"/x", "", "X-Resource", "7"); r.status != http.StatusOK || r.header.Get("X-Lock-Result") != resultAcquired {
		t.Fatalf("a plain PUT: %d, result %q", r.status, r.header.Get("X-Lock-Result"))
	}
}

// Every spelling of a repeated header, query parameter or cookie that a
// framework reads as one is refused, as are single ones that Caddy does
// not read as they do; plain ones pass with the key Caddy reads.
func TestRepeatedKeyPartsRefused(t *testing.T) {
	b := newBackend(t)
	url := startCaddy(t, `header >X-Lock-Result {http.lock.result}
header >X-Lock-Key {http.lock.key}
lock {
	zone keyparts
	key h={http.request.header.X-Doc-Id}:q={http.request.uri.query.id}:c={http.request.cookie.sid}
}
reverse_proxy {backend}`, b)
	const twice, spelled = "Lock key part given more than once", "Lock key part spelled ambiguously"
	for _, tc := range []struct {
		query  string
		header []string
		title  string
	}{
		{"", []string{"X-Doc-Id", "7", "X-Doc-Id", "8"}, twice},
		{"?id=7&id=8", nil, twice},
		{"?id=7&%69d=8", nil, twice},
		{"?id=7&ID=8", nil, twice},
		{"?id=7&id[]=8", nil, twice},
		{"?id=7;id=8", nil, twice},
		{"?id=7&i.d=8&x=1", nil, ""}, // "i.d" is "i_d", not "id": passes
		{"?ID=7", nil, spelled},
		{"?id[]=7", nil, spelled},
		{"?id=7;x=1", nil, spelled},
		{"?id=%zz", nil, spelled},
		{"", []string{"Cookie", "sid=7; sid=8"}, twice},
		{"", []string{"Cookie", "sid=7; SID=8"}, twice},
		{"", []string{"Cookie", "sid=7", "Cookie", "sid=8"}, twice},
		{"", []string{"Cookie", "s%69d=8; sid=7"}, twice},
		{"", []string{"Cookie", "sid=%37"}, spelled},
		{"", []string{"Cookie", `sid="7"`}, spelled},
	} {
		r := sendPut(t, url+"/doc", tc.query, tc.header...)
		if tc.title == "" {
			if r.status != http.StatusOK {
				t.Fatalf("%s %q: status %d; %s", tc.query, tc.header, r.status, r.body)
			}
			continue
		}
		t.Logf("%s %q: %s", tc.query, tc.header, r.body)
		assertAmbiguous(t, r, tc.title)
	}
	// Each given once, as Caddy reads it: the key, and no refusal.
	r := sendPut(t, url+"/doc", "?id=7&%69x=1&i.d=2", "X-Doc-Id", "7", "Cookie", "sid=7; other=1")
	if r.status != http.StatusOK || r.header.Get("X-Lock-Key") != "h=7:q=7:c=7" {
		t.Fatalf("a plain request: %d, key %q; %s", r.status, r.header.Get("X-Lock-Key"), r.body)
	}
	// Absent parts are no ambiguity: the key has them empty.
	if r := sendPut(t, url+"/doc", "", nil...); r.status != http.StatusOK || r.header.Get("X-Lock-Key") != "h=:q=:c=" {
		t.Fatalf("no parts: %d, key %q", r.status, r.header.Get("X-Lock-Key"))
	}
	// Reads take no lock, so their key parts are not looked at.
	req, _ := http.NewRequest(http.MethodGet, url+"/doc?id=1&id=2", nil)
	if r := doRequest(http.DefaultClient, req); r.status != http.StatusOK {
		t.Fatalf("a GET with a repeated key part: %d", r.status)
	}
}

// Caddy drops header names with "_" or "." unless the server lets them
// through; then PHP reads X_Doc_Id and X.Doc.Id as X-Doc-Id, which the
// key does not read: alone it is refused as spelled differently, together
// as given twice.
func TestKeyHeaderAliasesLetThrough(t *testing.T) {
	b := newBackend(t)
	global := "admin off\nservers {\n expected_underscore_headers X_Doc_Id\n expected_dot_headers X.Doc.Id\n}"
	url := loadCaddy(t, freePort(t), global, "header >X-Lock-Result {http.lock.result}\nlock {\n zone keypart_alias\n key {http.request.header.X-Doc-Id}\n}\nreverse_proxy {backend}", b)
	t.Cleanup(func() { _ = caddy.Stop() })
	assertAmbiguous(t, sendPut(t, url+"/doc", "", "X_Doc_Id", "8"), "Lock key part spelled ambiguously")
	assertAmbiguous(t, sendPut(t, url+"/doc", "", "X_Doc_Id", "8", "X.Doc.Id", "7"), "Lock key part given more than once")
	if writes, _, _ := b.counts(); writes != 0 {
		t.Fatalf("%d refused writes reached the backend", writes)
	}
}

func TestParseKeyParts(t *testing.T) {
	got := parseKeyParts(`{http.request.header.x-doc-id}/\{http.request.uri.query.no\}/{http.request.uri.query.a.b}{http.request.cookie.Sid}{http.request.uri.path}{http.request.uri.query}`)
	var names []string
	for _, p := range got {
		names = append(names, p.name+"="+p.folded)
	}
	want := []string{"X-Doc-Id=x-doc-id", "a.b=a_b", "Sid=sid"}
	if !slices.Equal(names, want) {
		t.Fatalf("parts %q, want %q", names, want)
	}
	if parseKeyParts("{http.request.uri.path}") != nil || parseKeyParts("") != nil {
		t.Fatal("a template without repeatable parts has parts to check")
	}
}

func TestFoldParamName(t *testing.T) {
	for raw, want := range map[string]string{
		"id": "id", "ID": "id", "%69d": "id", "id[]": "id", "id[x]": "id", " id": "id",
		"a.b": "a_b", "a+b": "a_b", "a%20b": "a_b", "id%00x": "id", "_method": "_method",
	} {
		if got := foldParamName(raw, false); got != want {
			t.Errorf("foldParamName(%q) = %q, want %q", raw, got, want)
		}
	}
	if got := foldParamName("id[x", true); got != "id_x" {
		t.Errorf("an unclosed bracket: %q", got)
	}
	// "id[" is "id" to qs and "id_" to PHP: it matches both.
	for _, raw := range []string{"id", "ID", "I.d", "%69d", "id[]", "id[", "+id"} {
		if raw == "I.d" {
			if paramNameMatches(raw, "id") {
				t.Errorf("%q matches id", raw)
			}
			continue
		}
		if !paramNameMatches(raw, "id") {
			t.Errorf("%q does not match id", raw)
		}
	}
	if !paramNameMatches("id[", "id_") {
		t.Error(`"id[" does not match "id_"`)
	}
}

// The checks cost a request that has nothing to check no allocation.
func TestOverrideAndKeyPartsAllocFree(t *testing.T) {
	h := &Handler{kinds: map[string]lockstore.Kind{}, defExcl: true}
	h.keyParts = parseKeyParts("{http.request.header.X-Doc-Id}/{http.request.uri.query.id}")
	r := httptest.NewRequest(http.MethodPut, "/doc?id=7&page=2", nil)
	r.Header.Set("X-Doc-Id", "7")
	r.Header.Set("X-Forwarded-For", "10.0.0.1")
	r.Header.Set("Content-Type", "text/plain")
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, _, err := h.requestKind(r); err != nil {
			t.Fatal(err)
		}
		if err := h.keyParts.check(r); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per request", allocs)
	}
}
