package caddylock

// Sub-requests that the WebDAV side sends through the rest of the route
// (HEAD, PROPFIND, PUT), their context and response, and the DAV header
// merged into the server's answers.

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// sub sends a request without a body for p (a path as the client names
// it, with raw its escaped form or "") on the client's behalf: HEAD for
// an ETag or an existence check, PROPFIND for the latter, PUT to create a
// resource. It returns the status and headers of the answer.
//
// It goes through the whole server (the *caddyhttp.Server that serves
// the request), not only the rest of this route: a request made for a
// client meets every route, matcher and auth that the client's own
// request to p would, and a path that the config hides or refuses this
// client answers as it would answer the client. The client's credentials
// and cookies go along; conditional and WebDAV headers do not. The server
// logs it as any request (access log, errors). The lock handlers of this
// zone let it through untouched (see subRequestMark); the request's
// in-flight lock covers the only write it makes, the PUT of its own path.
func (d *davRequest) sub(method, p, raw string, header http.Header) (int, http.Header, error) {
	srv, ok := d.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok || srv == nil {
		return 0, nil, errors.New("no server in the request context to send the request through")
	}
	ctx := &subContext{Context: d.r.Context(), mark: &subRequestMark{poolKey: d.z.poolKey}}
	sr := d.r.Clone(ctx)
	sr.Method = method
	sr.URL.Path, sr.URL.RawPath, sr.URL.RawQuery, sr.URL.Fragment, sr.URL.RawFragment = p, raw, "", "", ""
	sr.RequestURI = sr.URL.RequestURI()
	sr.Body, sr.ContentLength, sr.TransferEncoding = http.NoBody, 0, nil
	for _, name := range []string{"If", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
		"If-Range", "Range", "Depth", "Destination", "Overwrite", "Lock-Token", "Timeout", "Content-Type",
		"Content-Length", "Content-Encoding", "Content-Range", "Expect", "Transfer-Encoding"} {
		sr.Header.Del(name)
	}
	for name, vals := range header {
		sr.Header[name] = vals
	}
	rec := &subResponse{header: http.Header{}}
	// The server answers errors itself (error routes included), as it
	// does for the client.
	srv.ServeHTTP(rec, sr)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.status, rec.header, nil
}

// subRequestMark marks a sub-request (see sub) in its context, where no
// client can set it: the lock handlers of the zone it names let it
// through without taking locks or checking If headers again. The request
// that made it holds what it needs in that zone.
type subRequestMark struct {
	poolKey string // the zone's table (zone.poolKey)
}

type subRequestKey struct{}

// subContext is the context of a sub-request: the request's own, with
// the mark. The lock that a handler without webdav earlier in the route
// holds for the request is found behind the WebDAV request's own
// in-flight hold (heldIn walks past it), so that such a handler lets the
// sub-request pass as it lets the request pass (see Handler.heldBefore),
// rather than wait for itself.
type subContext struct {
	context.Context
	mark *subRequestMark
}

func (c *subContext) Value(key any) any {
	if key == (subRequestKey{}) {
		return c.mark
	}
	return c.Context.Value(key)
}

// passesSub reports whether r is a sub-request of this handler's zone,
// which the handler lets through untouched.
func (h *Handler) passesSub(r *http.Request) bool {
	m, ok := r.Context().Value(subRequestKey{}).(*subRequestMark)
	return ok && h.zone != nil && m.poolKey == h.zone.poolKey
}

// subResponse records the status and headers of a sub-request and drops
// its body.
type subResponse struct {
	header http.Header
	status int
}

func (s *subResponse) Header() http.Header { return s.header }

func (s *subResponse) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
}

func (s *subResponse) Write(p []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(p), nil
}

// headerHook passes a response through, recording its status and
// calling hook (when set) just before the headers go out.
type headerHook struct {
	http.ResponseWriter
	hook   func(status int, h http.Header)
	status int
}

func (w *headerHook) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
		if w.hook != nil {
			w.hook(code, w.Header())
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *headerHook) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *headerHook) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *headerHook) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// mergeDAVHeader makes an OPTIONS answer announce class 1 and 2
// compliance, keeping what the backend announced, and LOCK and UNLOCK in
// Allow when the backend sent one.
func mergeDAVHeader(h http.Header) {
	classes := []string{"1", "2"}
	for _, v := range h.Values("DAV") {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !slices.Contains(classes, c) {
				classes = append(classes, c)
			}
		}
	}
	h.Set("DAV", strings.Join(classes, ", "))
	if allow := h.Values("Allow"); len(allow) > 0 {
		methods := strings.Join(allow, ",")
		for _, m := range []string{"LOCK", "UNLOCK"} {
			if !slices.ContainsFunc(strings.Split(methods, ","), func(s string) bool { return strings.EqualFold(strings.TrimSpace(s), m) }) {
				methods += ", " + m
			}
		}
		h.Set("Allow", methods)
	}
}

// Interface guards
var (
	_ http.ResponseWriter = (*subResponse)(nil)
	_ http.ResponseWriter = (*headerHook)(nil)
	_ http.Flusher        = (*headerHook)(nil)
	_ http.ResponseWriter = (*multiStatusBuffer)(nil)
	_ http.Flusher        = (*multiStatusBuffer)(nil)
)
