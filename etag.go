package caddylock

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cespare/xxhash/v2"
)

// Generated ETags (the etags option): a 200 answer to GET or HEAD that
// carries no ETag gets a strong one computed from its body, so that a
// client of a backend that sends none can make conditional writes, which
// verify_etag then checks (precondition.go). See docs/etags.md.
//
// The hash is xxhash64 (github.com/cespare/xxhash/v2, already a dependency
// of Caddy's). Measured on this project's CI-class machine
// (BenchmarkETagHash, 2 cores): xxhash64 17-20 GB/s, FNV-1a 64 3.0 GB/s,
// SHA-256 1.9 GB/s, FNV-1a 128 0.7 GB/s; a 1 MiB body costs 61 µs with
// xxhash and 340-1470 µs with the others. An ETag needs no resistance to a
// deliberate collision: a client that forged one could only make its own
// stale write win over a version it wrote itself, which it can do anyway
// by sending no precondition. The body's length and the Content-Type go
// into the tag as well, so that two versions must agree on both to be
// confused by chance.

// DefaultETagMaxSize is the largest body the etags option buffers to
// hash: 1 MiB.
const DefaultETagMaxSize = 1 << 20

// etagPrefix starts every generated tag, so that one can tell it from a
// backend's in logs.
const etagPrefix = "cl-"

// generatedETag is the strong ETag of a body with Content-Type ctype.
func generatedETag(ctype string, body []byte) string {
	d := xxhash.New()
	_, _ = d.WriteString(ctype)
	_, _ = d.Write([]byte{0})
	_, _ = d.Write(body)
	b := make([]byte, 0, 40)
	b = append(b, '"')
	b = append(b, etagPrefix...)
	b = strconv.AppendInt(b, int64(len(body)), 36)
	b = append(b, '-')
	b = strconv.AppendUint(b, d.Sum64(), 16)
	b = append(b, '"')
	return string(b)
}

func (h *Handler) etagMaxSize() int64 {
	if h.ETagMaxSize > 0 {
		return h.ETagMaxSize
	}
	return DefaultETagMaxSize
}

// withETags returns the handler that the rest of the route runs as for
// r: next itself, unless etags is on and r is a GET or HEAD, whose 200
// answer then gets an ETag when it has none. It wraps next rather than
// the response, so that every way ServeHTTP reaches the rest of the route
// (no lock, a held lock, a sub-request, WebDAV) is covered by one hook.
// In a zone that checks preconditions it also sets
// {http.lock.precondition} empty, for requests that are not checked.
func (h *Handler) withETags(r *http.Request, next caddyhttp.Handler) caddyhttp.Handler {
	if h.VerifyETag || h.RequireIfMatch {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set("http.lock.precondition", "")
		}
	}
	if !h.ETags || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return next
	}
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		ew := &etagWriter{ResponseWriter: w, max: h.etagMaxSize(), head: r.Method == http.MethodHead, ctx: r.Context(),
			noneMatch: r.Header.Values("If-None-Match")}
		if ew.head {
			// The tag a HEAD gets is its GET's: ask with GET and drop the
			// body, for a backend cannot hash what it does not send.
			r = r.Clone(r.Context())
			r.Method = http.MethodGet
		}
		err := next.ServeHTTP(ew, r)
		ew.finish(err)
		return err
	})
}

// etagProbe learns, for a sub-request of verify_etag, whether the ETag
// of the answer was generated here: the backend never saw such a tag.
// It travels in the sub-request's context, where no client can put it.
type etagProbe struct{ generated bool }

type etagProbeKey struct{}

// etagWriter buffers a 200 answer up to max bytes; at the end it adds the
// body's ETag and sends it. An answer that is not a 200, has an ETag, is
// content-encoded or a range, is a stream (Server-Sent Events,
// incremental), or grows past max passes through as it comes.
type etagWriter struct {
	http.ResponseWriter
	max  int64
	head bool // the client asked HEAD: the body (of a GET) is dropped
	ctx  context.Context
	// noneMatch is the request's If-None-Match: the backend cannot
	// answer 304 for a tag it never issued, so a match with the
	// generated tag is answered 304 here (RFC 9110 section 13.1.2).
	noneMatch []string

	status    int  // buffered status; 0 until the headers come
	buffering bool // holding the answer to hash it
	passing   bool // the headers went out; the body flows through
	buf       []byte
}

func (w *etagWriter) WriteHeader(code int) {
	if w.status != 0 || w.passing {
		return
	}
	if code < 200 {
		// Informational answers (103 Early Hints) go out as they come.
		w.ResponseWriter.WriteHeader(code)
		return
	}
	hdr := w.Header()
	if code == http.StatusOK && hdr.Get("ETag") == "" && !encoded(hdr) && hdr.Get("Content-Range") == "" &&
		!streamed(hdr) && !tooLong(hdr, w.max) {
		w.status, w.buffering = code, true
		return
	}
	w.pass(code)
}

// pass sends the headers and lets the body through from now on.
func (w *etagWriter) pass(code int) {
	w.status, w.buffering, w.passing = code, false, true
	w.ResponseWriter.WriteHeader(code)
}

func (w *etagWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.buffering {
		if int64(len(w.buf)+len(p)) <= w.max {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		// Too large to hash: what is held goes out without a tag.
		buf := w.buf
		w.buf = nil
		w.pass(w.status)
		if !w.head {
			if _, err := w.ResponseWriter.Write(buf); err != nil {
				return 0, err
			}
		}
	}
	if w.head {
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

// Flush is held back while buffering: reverse_proxy flushes every write
// of an answer without Content-Length, which would otherwise never get a
// tag. The buffer is bounded by max; streams pass (see streamed).
func (w *etagWriter) Flush() {
	if w.buffering || w.status == 0 {
		return
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *etagWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish sends a buffered answer, with its tag unless the route failed
// half-way (then the body may be cut short: it goes as it is, untagged).
func (w *etagWriter) finish(err error) {
	if !w.buffering {
		return
	}
	w.buffering = false
	hdr := w.Header()
	if err == nil {
		tag := generatedETag(hdr.Get("Content-Type"), w.buf)
		hdr.Set("ETag", tag)
		hdr.Set("Content-Length", strconv.Itoa(len(w.buf)))
		if p, ok := w.ctx.Value(etagProbeKey{}).(*etagProbe); ok {
			p.generated = true
		}
		if len(w.noneMatch) > 0 {
			if star, tags, perr := parseETagList(w.noneMatch); perr == nil && (star || slices.ContainsFunc(tags, func(t string) bool { return weakMatch(t, tag) })) {
				hdr.Del("Content-Length")
				w.passing = true
				w.ResponseWriter.WriteHeader(http.StatusNotModified)
				return
			}
		}
	}
	w.passing = true
	w.ResponseWriter.WriteHeader(w.status)
	if !w.head {
		_, _ = w.ResponseWriter.Write(w.buf)
	}
}

// encoded reports a Content-Encoding other than identity: the tag of the
// encoded bytes would not be the representation's (and Caddy's encode
// handler, which compresses after us, keeps a tag apart by itself).
func encoded(hdr http.Header) bool {
	for _, v := range hdr.Values("Content-Encoding") {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return true
			}
		}
	}
	return false
}

// streamed reports an answer meant to arrive as it is written.
func streamed(hdr http.Header) bool {
	ct, _, _ := strings.Cut(hdr.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(ct), "text/event-stream") || caddyhttp.IsIncremental(hdr)
}

// tooLong reports a Content-Length past max.
func tooLong(hdr http.Header, max int64) bool {
	n, err := strconv.ParseInt(hdr.Get("Content-Length"), 10, 64)
	return err == nil && n > max
}

// Interface guards
var (
	_ http.ResponseWriter = (*etagWriter)(nil)
	_ http.Flusher        = (*etagWriter)(nil)
)
