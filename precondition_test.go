package caddylock

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// docBackend is a document store that ignores preconditions, as the
// legacy apps these options are for do: GET and HEAD serve what was last
// written, PUT and POST replace it, DELETE removes it. With etags it
// sends ETags of its own (a version number), otherwise none. It records
// every write that reached it, and fails the test if two writes to one
// document overlapped.
type docBackend struct {
	*httptest.Server
	etags   bool
	mu      sync.Mutex
	docs    map[string]string
	version map[string]int
	writes  []string // "METHOD path body If-Match=... If-None-Match=..."
	heads   int      // HEAD requests that reached it
	writing overlapRecorder
	// A write with X-Hold: <id> is held, before it changes anything,
	// until the test opens that gate; started says it arrived.
	gateSet
	started chan string
}

func newDocBackend(t testing.TB, etags bool) *docBackend {
	b := &docBackend{etags: etags, docs: map[string]string{}, version: map[string]int{}, started: make(chan string, 16)}
	t.Cleanup(func() { b.writing.assertNone(t, "the document backend "+b.URL) })
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.Close)
	return b
}

func (b *docBackend) serve(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		b.mu.Lock()
		if r.Method == http.MethodHead {
			b.heads++
		}
		doc, ok := b.docs[p]
		v := b.version[p]
		b.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if b.etags {
			w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, v))
		}
		if strings.HasPrefix(p, "/gz") {
			w.Header().Set("Content-Encoding", "gzip") // not really: the proxy must not look
		}
		if strings.HasPrefix(p, "/chunked") {
			// No Content-Length: reverse_proxy flushes every write.
			for i := range doc {
				_, _ = io.WriteString(w, doc[i:i+1])
				w.(http.Flusher).Flush()
			}
			return
		}
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(doc))
	default:
		body, _ := io.ReadAll(r.Body)
		defer b.writing.begin(p)()
		if id := r.Header.Get("X-Hold"); id != "" {
			b.started <- id
			<-b.gate(id)
		}
		b.mu.Lock()
		b.writes = append(b.writes, fmt.Sprintf("%s %s %s If-Match=%s If-None-Match=%s", r.Method, p, body,
			r.Header.Get("If-Match"), r.Header.Get("If-None-Match")))
		_, existed := b.docs[p]
		if r.Method == http.MethodDelete {
			delete(b.docs, p)
		} else {
			b.docs[p] = string(body)
		}
		b.version[p]++
		b.mu.Unlock()
		if !existed && r.Method != http.MethodDelete {
			w.WriteHeader(http.StatusCreated)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func (b *docBackend) set(p, doc string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.docs[p] = doc
	b.version[p]++
}

func (b *docBackend) doc(p string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, ok := b.docs[p]
	return d, ok
}

func (b *docBackend) writesSeen() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.writes...)
}

// asBackend lets the cluster helpers, which take a *backend, proxy to b.
func (b *docBackend) asBackend() *backend { return &backend{Server: b.Server} }

// etagSite is a site with lock options extra, in a zone of its own,
// whose answers say {http.lock.precondition} in X-Precondition.
func etagSite(t *testing.T, extra string, b *docBackend) string {
	zone := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	return startCaddy(t, fmt.Sprintf("header >X-Precondition {http.lock.precondition}\nlock {\n zone %s\n %s\n}\nreverse_proxy %s\n",
		zone, extra, strings.TrimPrefix(b.URL, "http://")), nil)
}

// send sends method url with body and header pairs.
func send(t testing.TB, method, url, body string, header ...string) result {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	r := doRequest(http.DefaultClient, req)
	if r.err != nil {
		t.Fatalf("%s %s: %v", method, url, r.err)
	}
	return r
}

// problemETag reads the etag member of a problem+json body.
func problemETag(t testing.TB, r result) string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json; body %s", ct, r.body)
	}
	var p struct {
		Status int    `json:"status"`
		Detail string `json:"detail"`
		ETag   string `json:"etag"`
	}
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Status != r.status {
		t.Fatalf("problem status %d in a %d answer", p.Status, r.status)
	}
	return p.ETag
}

// inBothModes runs test against a backend that sends ETags and one that
// sends none (the proxy's etags gives them then).
func inBothModes(t *testing.T, test func(t *testing.T, b *docBackend)) {
	t.Run("backend-etags", func(t *testing.T) { test(t, newDocBackend(t, true)) })
	t.Run("no-backend-etags", func(t *testing.T) { test(t, newDocBackend(t, false)) })
}

// raceTwoWriters has two clients read url's ETag and save different
// bodies with If-Match at once, through urlA and urlB (the same site or
// two instances): exactly one save succeeds, the other gets 412 with the
// winner's ETag, the stored document is the winner's, and the stale save
// never reached the backend.
func raceTwoWriters(t *testing.T, b *docBackend, urlA, urlB, path string) {
	t.Helper()
	b.set(path, "version 1")
	e1 := send(t, http.MethodGet, urlA+path, "").header.Get("ETag")
	e2 := send(t, http.MethodGet, urlB+path, "").header.Get("ETag")
	if e1 == "" || e1 != e2 {
		t.Fatalf("the two readers got ETags %q and %q, want one non-empty tag", e1, e2)
	}
	before := len(b.writesSeen())
	bodies := []string{"alice's edit", "bob's edit"}
	results := make([]result, 2)
	var wg sync.WaitGroup
	for i, u := range []string{urlA, urlB} {
		wg.Go(func() { results[i] = send(t, http.MethodPut, u+path, bodies[i], "If-Match", e1) })
	}
	wg.Wait()
	var winner, loser = -1, -1
	for i, r := range results {
		switch {
		case r.status >= 200 && r.status < 300:
			winner = i
		case r.status == http.StatusPreconditionFailed:
			loser = i
		default:
			t.Fatalf("save %d: status %d, want 2xx or 412; body %s", i, r.status, r.body)
		}
	}
	if winner < 0 || loser < 0 {
		t.Fatalf("statuses %d and %d, want one 2xx and one 412", results[0].status, results[1].status)
	}
	if got, _ := b.doc(path); got != bodies[winner] {
		t.Fatalf("stored %q, want the winner's %q", got, bodies[winner])
	}
	writes := b.writesSeen()[before:]
	if len(writes) != 1 || !strings.Contains(writes[0], bodies[winner]) {
		t.Fatalf("backend saw writes %q, want only the winner's", writes)
	}
	current := send(t, http.MethodGet, urlA+path, "").header.Get("ETag")
	if current == e1 {
		t.Fatalf("the ETag did not change with the document: %q", current)
	}
	lr := results[loser]
	if got := lr.header.Get("ETag"); got != current {
		t.Fatalf("412 ETag header %q, want the current %q", got, current)
	}
	if got := problemETag(t, lr); got != current {
		t.Fatalf("412 problem etag %q, want the current %q", got, current)
	}
}

// Two clients that read one version and save at once: one wins, the
// other gets 412 and its stale save never reaches the backend.
func TestVerifyETagLostUpdate(t *testing.T) {
	inBothModes(t, func(t *testing.T, b *docBackend) {
		url := etagSite(t, "etags\n verify_etag\n wait 10s", b)
		for i := range 3 {
			raceTwoWriters(t, b, url, url, "/doc"+strconv.Itoa(i))
		}
		// The client that lost reads again and saves: it passes.
		cur := send(t, http.MethodGet, url+"/doc0", "").header.Get("ETag")
		r := send(t, http.MethodPut, url+"/doc0", "merged", "If-Match", cur)
		if r.status != http.StatusNoContent || r.header.Get("X-Precondition") != "passed" {
			t.Fatalf("save with the current ETag: %d, precondition %q; body %s", r.status, r.header.Get("X-Precondition"), r.body)
		}
		w := b.writesSeen()
		last := w[len(w)-1]
		// A tag the proxy made is not forwarded: the backend never issued it.
		if b.etags != strings.Contains(last, "If-Match="+cur) {
			t.Fatalf("backend saw %q; If-Match forwarded should be %v", last, b.etags)
		}
	})
}

// The check runs under the write's lock, and the lock is held until the
// backend has answered: a save queued behind another save of the same
// version is checked against what the first one wrote, deterministically.
func TestVerifyETagChecksUnderLock(t *testing.T) {
	b := newDocBackend(t, false)
	url := etagSite(t, "etags\n verify_etag\n wait 10s", b)
	b.set("/doc", "v1")
	tag := send(t, http.MethodGet, url+"/doc", "").header.Get("ETag")
	first := make(chan result, 1)
	go func() { first <- send(t, http.MethodPut, url+"/doc", "first", "If-Match", tag, "X-Hold", "w1") }()
	if id := <-b.started; id != "w1" {
		t.Fatalf("backend started %q", id)
	}
	second := make(chan result, 1)
	go func() { second <- send(t, http.MethodPut, url+"/doc", "second", "If-Match", tag) }()
	waitForQueue(t, zoneTable(t, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())), 1)
	b.open("w1")
	if r := <-first; r.status != http.StatusNoContent {
		t.Fatalf("first save: %d %s", r.status, r.body)
	}
	if r := <-second; r.status != http.StatusPreconditionFailed || r.header.Get("X-Precondition") != "failed" {
		t.Fatalf("second save of the same version: %d, precondition %q; body %s", r.status, r.header.Get("X-Precondition"), r.body)
	}
	if w := b.writesSeen(); len(w) != 1 {
		t.Fatalf("backend saw %q, want the first save only", w)
	}
}

// If-Unmodified-Since and weak If-None-Match are evaluated as RFC 9110
// orders them; a malformed If-Match is refused with 400.
func TestVerifyETagEvaluation(t *testing.T) {
	b := newDocBackend(t, true)
	url := etagSite(t, "verify_etag", b)
	b.set("/d", "x")
	cur := func() string { return send(t, http.MethodGet, url+"/d", "").header.Get("ETag") }
	for _, c := range []struct {
		name   string
		header func() []string
		want   int
	}{
		{"weak tag never matches If-Match", func() []string { return []string{"If-Match", "W/" + cur()} }, 412},
		{"If-Match star on an existing resource", func() []string { return []string{"If-Match", "*"} }, 204},
		{"If-None-Match weak comparison", func() []string { return []string{"If-None-Match", "W/" + cur()} }, 412},
		{"If-None-Match another tag", func() []string { return []string{"If-None-Match", `"other"`} }, 204},
		{"If-None-Match star on an existing resource", func() []string { return []string{"If-None-Match", "*"} }, 412},
		{"malformed If-Match", func() []string { return []string{"If-Match", "abc"} }, 400},
		{"If-Match list with the current tag", func() []string { return []string{"If-Match", `"other", ` + cur()} }, 204},
	} {
		if r := send(t, http.MethodPut, url+"/d", "y", c.header()...); r.status != c.want {
			t.Errorf("%s: %d, want %d; body %s", c.name, r.status, c.want, r.body)
		}
	}
	if r := send(t, http.MethodPut, url+"/missing", "y", "If-Match", "*"); r.status != 412 {
		t.Errorf("If-Match: * on a missing resource: %d, want 412", r.status)
	}
	// A browser gets the refusal page, with the status and the tag.
	const browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
	r := send(t, http.MethodPut, url+"/d", "y", "If-Match", `"stale"`, "Accept", browser)
	if r.status != 412 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || r.header.Get("ETag") == "" ||
		!strings.Contains(r.body, "Precondition failed") {
		t.Errorf("412 to a browser: %d %q ETag %q", r.status, r.header.Get("Content-Type"), r.header.Get("ETag"))
	}
}

// require_if_match: a write without a precondition gets 428 naming the
// header and the current ETag, and never reaches the backend; a create
// with If-None-Match: * passes.
func TestRequireIfMatch(t *testing.T) {
	inBothModes(t, func(t *testing.T, b *docBackend) {
		url := etagSite(t, "etags\n verify_etag\n require_if_match", b)
		b.set("/doc", "v1")
		cur := send(t, http.MethodGet, url+"/doc", "").header.Get("ETag")
		r := send(t, http.MethodPut, url+"/doc", "blind")
		if r.status != http.StatusPreconditionRequired || r.header.Get("X-Precondition") != "missing" {
			t.Fatalf("write without precondition: %d, precondition %q, want 428 missing; body %s", r.status, r.header.Get("X-Precondition"), r.body)
		}
		if got := problemETag(t, r); got != cur || !strings.Contains(r.body, "If-Match") {
			t.Fatalf("428 body %s: want If-Match named and etag %q", r.body, cur)
		}
		if w := b.writesSeen(); len(w) != 0 {
			t.Fatalf("backend saw %q", w)
		}
		if r := send(t, http.MethodPut, url+"/new", "fresh", "If-None-Match", "*"); r.status != http.StatusCreated {
			t.Fatalf("create with If-None-Match: *: %d; body %s", r.status, r.body)
		}
		// GETs are not writes.
		if r := send(t, http.MethodGet, url+"/new", ""); r.status != http.StatusOK || r.body != "fresh" || r.header.Get("X-Precondition") != "" {
			t.Fatalf("GET /new: %d %q, precondition %q", r.status, r.body, r.header.Get("X-Precondition"))
		}
	})
	// Alone, it only asks for a precondition; the backend evaluates it.
	b := newDocBackend(t, false)
	url := etagSite(t, "require_if_match", b)
	if r := send(t, http.MethodPut, url+"/x", "blind"); r.status != 428 || problemETag(t, r) != "" {
		t.Fatalf("without verify_etag: %d %s", r.status, r.body)
	}
	if r := send(t, http.MethodPut, url+"/x", "v", "If-Match", `"anything"`); r.status != http.StatusCreated || r.header.Get("X-Precondition") != "skipped" {
		t.Fatalf("require_if_match alone passes a precondition on: %d %q", r.status, r.header.Get("X-Precondition"))
	}
}

// Of five concurrent creates with If-None-Match: *, exactly one reaches
// the backend.
func TestIfNoneMatchCreatesOnce(t *testing.T) {
	inBothModes(t, func(t *testing.T, b *docBackend) {
		url := etagSite(t, "etags\n verify_etag\n wait 10s", b)
		const n = 5
		results := make([]result, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				results[i] = send(t, http.MethodPut, url+"/once", "creator "+strconv.Itoa(i), "If-None-Match", "*")
			})
		}
		wg.Wait()
		created, refused := -1, 0
		for i, r := range results {
			switch r.status {
			case http.StatusCreated:
				if created >= 0 {
					t.Fatalf("two creates succeeded: %d and %d", created, i)
				}
				created = i
			case http.StatusPreconditionFailed:
				refused++
			default:
				t.Fatalf("create %d: %d %s", i, r.status, r.body)
			}
		}
		if created < 0 || refused != n-1 {
			t.Fatalf("created %d, refused %d", created, refused)
		}
		if w := b.writesSeen(); len(w) != 1 {
			t.Fatalf("backend saw %d writes: %q", len(w), w)
		}
		if got, _ := b.doc("/once"); got != "creator "+strconv.Itoa(created) {
			t.Fatalf("stored %q", got)
		}
	})
}

// {http.lock.precondition} and caddy_lock_preconditions_total count each
// outcome.
func TestPreconditionMetric(t *testing.T) {
	b := newDocBackend(t, true)
	b.set("/m", "x")
	zone := fmt.Sprintf("precond%d", meteredRuns.Add(1))
	url, admin := startCaddyAdmin(t, "metrics", fmt.Sprintf("lock /m* {\n zone %s\n verify_etag\n require_if_match\n}\nreverse_proxy %s",
		zone, strings.TrimPrefix(b.URL, "http://")), nil)
	send(t, http.MethodPut, url+"/m", "no precondition")             // missing
	send(t, http.MethodPut, url+"/m", "stale", "If-Match", `"nope"`) // failed
	send(t, http.MethodPut, url+"/m", "ok", "If-Match", "*")         // passed
	send(t, http.MethodPut, url+"/m2", "new", "If-None-Match", "*")  // passed
	m := send(t, http.MethodGet, admin+"/metrics", "").body
	for _, want := range []string{
		`caddy_lock_preconditions_total{result="missing",zone="` + zone + `"} 1`,
		`caddy_lock_preconditions_total{result="failed",zone="` + zone + `"} 1`,
		`caddy_lock_preconditions_total{result="passed",zone="` + zone + `"} 2`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// The same race through two Caddy instances that share one redis-server.
func TestVerifyETagCluster(t *testing.T) {
	srv := startRedis(t)
	inBothModes(t, func(t *testing.T, b *docBackend) {
		lock := clusterLock(srv, "etags\n\t\tverify_etag\n\t\twait 10s", "")
		lock = strings.Replace(lock, "zone cluster", "zone etag-"+strconv.FormatBool(b.etags), 1)
		na := startCaddyProc(t, "a", lock, b.asBackend())
		nb := startCaddyProc(t, "b", lock, b.asBackend())
		for i := range 3 {
			raceTwoWriters(t, b, na.URL, nb.URL, "/c"+strconv.Itoa(i))
		}
		// Five creates spread over both nodes: one wins.
		results := make(chan int, 5)
		for i := range 5 {
			u := []string{na.URL, nb.URL}[i%2]
			go func() { results <- send(t, http.MethodPut, u+"/created", "x", "If-None-Match", "*").status }()
		}
		won := 0
		for range 5 {
			if s := <-results; s == http.StatusCreated {
				won++
			} else if s != http.StatusPreconditionFailed {
				t.Fatalf("create: %d", s)
			}
		}
		if won != 1 {
			t.Fatalf("%d creates won, want 1", won)
		}
	})
}

// In a webdav zone: the race, creates, and LOCK passing require_if_match.
func TestVerifyETagWebDAV(t *testing.T) {
	inEachStore(t, func(t *testing.T, store string) {
		b := newDocBackend(t, false)
		zone := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		url := startCaddy(t, fmt.Sprintf("lock {\n webdav\n zone %s\n etags\n verify_etag\n wait 10s\n %s\n}\nreverse_proxy %s\n",
			zone, store, strings.TrimPrefix(b.URL, "http://")), nil)
		raceTwoWriters(t, b, url, url, "/dav/doc")
		if r := send(t, http.MethodPut, url+"/dav/new", "x", "If-None-Match", "*"); r.status != http.StatusCreated {
			t.Fatalf("create: %d %s", r.status, r.body)
		}
		if r := send(t, http.MethodPut, url+"/dav/new", "x", "If-None-Match", "*"); r.status != http.StatusPreconditionFailed {
			t.Fatalf("second create: %d %s", r.status, r.body)
		}
	})
	// Against x/net/webdav, which sends ETags; LOCK needs no If-Match.
	url, db := davSite(t, "verify_etag\n require_if_match\n wait 10s")
	db.put(t, "/f", "one")
	r := davMust(t, http.StatusPreconditionRequired, "PUT", url+"/f", "blind", nil)
	tag := r.header.Get("ETag")
	if tag == "" {
		t.Fatalf("428 without the current ETag: %v", r.header)
	}
	davLock(t, url+"/g", "exclusive", "me", nil, http.StatusCreated)
	davMust(t, http.StatusPreconditionFailed, "PUT", url+"/f", "stale", map[string]string{"If-Match": `"stale"`})
	davMust(t, http.StatusCreated, "PUT", url+"/f", "two", map[string]string{"If-Match": tag})
}

// verify_etag's sub-request meets the route's auth as the client's own
// read would: where reads need a login, an anonymous write's validators
// cannot be read (401, with the challenge) and nothing is written; with
// the login the write is checked and goes on.
func TestVerifyETagSubRequestMeetsAuth(t *testing.T) {
	b := newDocBackend(t, false)
	hash, err := bcrypt.GenerateFromPassword([]byte("a"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	b.set("/doc", "v1")
	url := startCaddy(t, fmt.Sprintf(`
@read method GET HEAD
basic_auth @read {
	alice %s
}
lock {
	zone %s
	etags
	verify_etag
}
reverse_proxy %s`, hash, strings.NewReplacer("/", "_").Replace(t.Name()), strings.TrimPrefix(b.URL, "http://")), nil)
	login := "Basic " + basicAuth("alice", "a")
	tag := send(t, http.MethodGet, url+"/doc", "", "Authorization", login).header.Get("ETag")
	r := send(t, http.MethodPut, url+"/doc", "anon", "If-Match", tag)
	if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") == "" {
		t.Fatalf("anonymous verified write where reads need a login: %d %v, want 401 with a challenge", r.status, r.header)
	}
	if w := b.writesSeen(); len(w) != 0 {
		t.Fatalf("backend saw %q", w)
	}
	if r := send(t, http.MethodPut, url+"/doc", "alice", "If-Match", tag, "Authorization", login); r.status != http.StatusNoContent {
		t.Fatalf("verified write with the login: %d %s", r.status, r.body)
	}
}

// Behind Caddy's encode, which appends -gzip to a strong tag it
// compresses, the tag a client reads round-trips: the sub-request asks
// with the client's Accept-Encoding and gets the same suffix.
func TestVerifyETagBehindEncode(t *testing.T) {
	b := newDocBackend(t, false)
	url := startCaddy(t, fmt.Sprintf("encode gzip\nlock {\n zone %s\n etags\n verify_etag\n}\nreverse_proxy %s",
		strings.NewReplacer("/", "_").Replace(t.Name()), strings.TrimPrefix(b.URL, "http://")), nil)
	b.set("/doc", strings.Repeat("compressible ", 100))
	r := send(t, http.MethodGet, url+"/doc", "", "Accept-Encoding", "gzip")
	tag := r.header.Get("ETag")
	if r.header.Get("Content-Encoding") != "gzip" || !strings.HasSuffix(tag, `-gzip"`) {
		t.Fatalf("GET through encode: Content-Encoding %q, ETag %q", r.header.Get("Content-Encoding"), tag)
	}
	if r := send(t, http.MethodPut, url+"/doc", "new", "If-Match", tag, "Accept-Encoding", "gzip"); r.status != http.StatusNoContent {
		t.Fatalf("save with the tag read through encode: %d %s", r.status, r.body)
	}
	if r := send(t, http.MethodPut, url+"/doc", "stale", "If-Match", tag, "Accept-Encoding", "gzip"); r.status != http.StatusPreconditionFailed {
		t.Fatalf("stale save through encode: %d %s", r.status, r.body)
	}
}
