package caddylock

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Refusals for people: a form posted from a browser into a held lock
// would otherwise show raw JSON. A request that prefers text/html gets a
// small page instead (writeRefusal); API clients keep problem+json and
// WebDAV clients DAV:error. See docs/browser-refusals.md.

// prefersHTML reports whether the Accept header ranks text/html above
// both application/json and application/problem+json, each type getting
// the quality of the most specific range that matches it (RFC 9110
// 12.5.1). A browser's "text/html,...,*/*;q=0.8" does; curl's "*/*", an
// absent Accept and an API client's "application/json" do not. It reads
// the header in place: no allocation, since every refusal asks it.
//
// Not github.com/munnerz/goautoneg: checked against TestPrefersHTML it
// answers 6 of its cases otherwise (it matches types case-sensitively,
// takes q=2, q=0.1234 and q=abc as qualities, lets the first of two
// equal ranges win, and ranks a less specific range above an exact one
// with a lower quality), and it allocates 6 to 10 times per header where
// this allocates nothing, on every refusal.
func prefersHTML(h http.Header) bool {
	vals := h["Accept"]
	if len(vals) == 0 {
		return false
	}
	// Quality and specificity (0 none, 1 */*, 2 type/*, 3 exact) of the
	// best-matching range seen so far, per type of interest.
	var html, json, problemJSON acceptMatch
	for _, v := range vals {
		for len(v) > 0 {
			var rng string
			rng, v, _ = strings.Cut(v, ",")
			mt, params, _ := strings.Cut(rng, ";")
			typ, sub, ok := strings.Cut(strings.TrimSpace(mt), "/")
			if !ok {
				continue
			}
			q := acceptQuality(params)
			html.consider(typ, sub, "text", "html", q)
			json.consider(typ, sub, "application", "json", q)
			problemJSON.consider(typ, sub, "application", "problem+json", q)
		}
	}
	return html.q > json.q && html.q > problemJSON.q
}

// acceptMatch is the quality, in thousandths, that an Accept header
// gives one media type, and how specific the range that gave it was.
type acceptMatch struct {
	q, spec int
}

// consider takes range typ/sub with quality q into account for the
// media type wantTyp/wantSub: a more specific matching range overrides
// a less specific one, and among equally specific ones the highest
// quality counts.
func (m *acceptMatch) consider(typ, sub, wantTyp, wantSub string, q int) {
	spec := 0
	switch {
	case strings.EqualFold(typ, wantTyp) && strings.EqualFold(sub, wantSub):
		spec = 3
	case strings.EqualFold(typ, wantTyp) && sub == "*":
		spec = 2
	case typ == "*" && sub == "*":
		spec = 1
	default:
		return
	}
	if spec > m.spec || (spec == m.spec && q > m.q) {
		m.q, m.spec = q, spec
	}
}

// acceptQuality returns the q parameter among a media range's params
// in thousandths: 1000 when absent, 0 when it is not a valid qvalue
// ("0" to "1" with at most three decimals), so that a garbled range
// never wins.
func acceptQuality(params string) int {
	for len(params) > 0 {
		var p string
		p, params, _ = strings.Cut(params, ";")
		name, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if !strings.EqualFold(strings.TrimSpace(name), "q") {
			continue
		}
		v = strings.TrimSpace(v)
		if v == "" || (v[0] != '0' && v[0] != '1') {
			return 0
		}
		q := int(v[0]-'0') * 1000
		if len(v) > 1 {
			if v[1] != '.' || len(v) > 5 {
				return 0
			}
			scale := 100
			for _, c := range []byte(v[2:]) {
				if c < '0' || c > '9' {
					return 0
				}
				q += int(c-'0') * scale
				scale /= 10
			}
		}
		if q > 1000 {
			return 0
		}
		return q
	}
	return 1000
}

// wantsRefusalPage reports whether r's refusal should be the HTML page:
// it prefers text/html and is not a WebDAV client, whose tools read
// DAV:error. The DAV check allocates, so it runs only for browsers.
func wantsRefusalPage(r *http.Request) bool {
	return r != nil && prefersHTML(r.Header) && !isDAVClient(r)
}

// refusalScript makes the page's button go back in the browser's
// history rather than resubmit the form. Its hash is in the page's
// Content-Security-Policy, which allows no other script.
const refusalScript = `document.getElementById("back").addEventListener("click",function(e){if(history.length>1){e.preventDefault();history.back();}});`

// refusalCSP allows the page its inline style and the one script above,
// and nothing else: no external resource, no other script, no form.
var refusalCSP = func() string {
	sum := sha256.Sum256([]byte(refusalScript))
	return "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-" +
		base64.StdEncoding.EncodeToString(sum[:]) + "'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// refusalPageTmpl is the page: self-contained (inline CSS, no external
// resource), in plain semantic markup, with text and button colours of
// at least 7:1 contrast in light and dark schemes.
var refusalPageTmpl = template.Must(template.New("refusal").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{.Status}} {{.Title}}</title>
<style>
:root{color-scheme:light dark;--fg:#1a1a1a;--bg:#fff;--muted:#3d3d3d;--accent:#0a3d91;--on-accent:#fff;--box:#f3f4f6}
@media (prefers-color-scheme:dark){:root{--fg:#f2f2f2;--bg:#161616;--muted:#d0d0d0;--accent:#9ec5ff;--on-accent:#0b0b0b;--box:#262626}}
body{margin:0;font:1.0625rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:36rem;margin:3rem auto;padding:0 1.25rem}
h1{font-size:1.6rem;margin:0 0 .75rem}
.status{color:var(--muted);margin:0}
dl{background:var(--box);border-radius:.5rem;padding:1rem 1.25rem;margin:1.25rem 0}
dt{font-weight:600}
dd{margin:0 0 .75rem}
dd:last-child{margin-bottom:0}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
.back{display:inline-block;font:inherit;font-weight:600;color:var(--on-accent);background:var(--accent);border:0;border-radius:.375rem;padding:.6rem 1.2rem;text-decoration:none}
.back:focus-visible{outline:3px solid var(--fg);outline-offset:3px}
</style>
</head>
<body>
<main>
<p class="status">Error {{.Status}}</p>
<h1>{{.Title}}</h1>
<p>{{.Explain}}</p>
{{- if or .Key .HasSince .HasUntil .Retry}}
<dl>
{{- if .Key}}
<dt>Locked</dt>
<dd><code id="key">{{.Key}}</code>{{if .Kind}} ({{.Kind}} lock){{end}}</dd>
{{- end}}
{{- if .HasSince}}
<dt>Since</dt>
<dd id="since"><time datetime="{{.SinceISO}}">{{.SinceClock}}</time>, held for <span id="held">{{.Held}}</span> seconds</dd>
{{- end}}
{{- if .HasUntil}}
<dt>Until</dt>
<dd id="until"><time datetime="{{.UntilISO}}">{{.UntilClock}}</time> at the latest, unless it is renewed</dd>
{{- end}}
{{- if .Retry}}
<dt>Try again</dt>
<dd id="retry">in <span id="retry-seconds">{{.Retry}}</span> {{if eq .Retry 1}}second{{else}}seconds{{end}}</dd>
{{- end}}
</dl>
{{- end}}
<p id="advice">{{.Advice}}</p>
<p><a class="back" id="back" href="{{.Back}}">Go back</a></p>
</main>
<script>` + refusalScript + `</script>
</body>
</html>
`))

// refusalPage is what the page shows.
type refusalPage struct {
	Status     int
	Title      string
	Explain    string
	Key, Kind  string
	HasSince   bool
	SinceISO   string
	SinceClock string
	Held       string
	HasUntil   bool
	UntilISO   string
	UntilClock string
	Retry      int64
	Back       string
	// Advice says what to do next: wait and submit again for a lock,
	// reload first for a failed or missing precondition.
	Advice string
}

// The pages' advice: a locked resource is free again soon, so the same
// submission can simply be sent again; a 412 or 428 says the form holds
// an old version (or none), which only reloading it can fix.
const (
	adviceRetry = "Nothing was changed. Reloading this page may send the same request again; go back, wait, then submit again."
	// 412 (verify_etag).
	explainChanged = "Someone else changed this since you loaded it, so your change was not saved: saving it would have overwritten theirs."
	adviceReload   = "Nothing was changed. Go back, reload the page to get the current version, apply your change again, then save."
	// 428 (require_if_match).
	explainReload = "This page must be reloaded before saving: your save did not say which version it was based on, so it was not carried out."
)

// appendRefusalPage appends the HTML page for problem p, refused with
// Retry-After secs (0 for none), to b. now and r give the time the lock
// was taken and the address to go back to without script.
func appendRefusalPage(b []byte, r *http.Request, p *problem, secs int64, now time.Time) ([]byte, error) {
	// Copies: a string of p that flowed into the template's data would
	// make the compiler put it on the heap for every refusal, the API
	// clients' too (BenchmarkRefusal), not just this rare path.
	page := refusalPage{Status: p.Status, Title: strings.Clone(p.Title), Explain: p.detail(), Retry: secs, Back: backLink(r), Advice: adviceRetry}
	switch p.Status {
	case http.StatusPreconditionFailed:
		page.Explain, page.Advice = explainChanged, adviceReload
	case http.StatusPreconditionRequired:
		page.Explain, page.Advice = explainReload, adviceReload
	}
	if l := p.Lock; l != nil {
		page.Key, page.Kind = strings.Clone(l.Key), strings.Clone(l.Kind)
		page.Explain = "Another request is changing this resource right now, so yours was not carried out."
		if l.Below {
			page.Explain = "Another request is changing something inside this resource right now, so yours was not carried out."
		}
		if l.Explicit {
			page.Explain = "Someone has locked this resource for editing (a WebDAV client or an administrator), so your request was not carried out."
			if l.Expires != nil {
				page.HasUntil = true
				page.UntilISO = l.Expires.UTC().Format(time.RFC3339)
				page.UntilClock = l.Expires.UTC().Format("15:04:05 UTC")
			}
		}
		held := time.Duration(l.HeldSeconds * float64(time.Second))
		since := now.Add(-held).UTC()
		page.HasSince = true
		page.SinceISO = since.Format(time.RFC3339)
		page.SinceClock = since.Format("15:04:05 UTC")
		page.Held = strconv.FormatFloat(l.HeldSeconds, 'f', 1, 64)
	}
	buf := bytes.NewBuffer(b)
	if err := refusalPageTmpl.Execute(buf, &page); err != nil {
		return b, err
	}
	return buf.Bytes(), nil
}

// backLink is where the page's button leads without script: the
// referring page when it is on this site (the form that was posted),
// else the site's root. A foreign Referer is never linked to.
func backLink(r *http.Request) string {
	if ref := r.Referer(); ref != "" {
		if u, err := url.Parse(ref); err == nil && (u.Scheme == "http" || u.Scheme == "https") && strings.EqualFold(u.Host, r.Host) {
			return u.RequestURI()
		}
	}
	return "/"
}
