package caddylock

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Refusals: the 423 and 503 answers that the handler gives instead of
// passing a request on. A client hammering a locked resource gets one of
// these per request, so they are built without reflection and with as few
// allocations as the answer needs (BenchmarkRefusal).

// Values of {http.lock.result}, each also a label of the requests metric
// (metrics.go lists them all).
const (
	resultAcquired = "acquired" // the lock was free
	resultWaited   = "waited"   // granted after queueing (wait)
	resultConflict = "conflict" // 423, or a client that left while queued
	resultFull     = "full"     // 503: max_locks, or an explicit lock limit
	resultNone     = "none"     // the method takes no lock
	// resultUnavailable: refused with 503 (fail_closed).
	resultUnavailable = "unavailable"
	// resultFailOpen: passed to the next handler without a lock (fail_open).
	resultFailOpen = "fail_open"
	// resultStoreError: refused with 503 because the store answered with
	// an error (ErrStoreFailed), whatever on_error says.
	resultStoreError = "store_error"
	// resultTooDeep: a key refused with 400 for having more than
	// MaxHierarchyDepth segments.
	resultTooDeep = "too_deep"
	// resultBadKey: a key refused with 400 for containing a NUL byte, or
	// a path that cannot be read.
	resultBadKey = "bad_key"
	// resultAmbiguous: a request refused with 400 because backends can
	// read it in more than one way: its path, a header that overrides its
	// method, or a key part it gives twice.
	resultAmbiguous = "ambiguous"
)

// problemType identifies caddy-lock's problem documents (RFC 9457).
const problemType = "https://github.com/caddy-lock/caddy-lock#refusals"

// problem is an RFC 9457 problem document. Its JSON form is written by
// appendJSON, byte for byte what encoding/json would write (tested).
type problem struct {
	Type     string       `json:"type"`
	Title    string       `json:"title"`
	Status   int          `json:"status"`
	Detail   string       `json:"detail"`
	Instance string       `json:"instance"`
	Lock     *problemLock `json:"lock,omitempty"`
	// ETag is the resource's current ETag in a 412 or 428 (precondition.go).
	ETag string `json:"etag,omitempty"`

	// A 423's detail is written from its conflict straight into the
	// answer (appendConflictText), not into a string of its own: set
	// conflict, and Detail stays empty. detail() has the text.
	conflict       *lockstore.ConflictError
	method, keyFor string
}

// detail is p's detail: Detail, or the text of its conflict. A copy: a
// string of p that flowed on would put it on the heap for every refusal.
func (p *problem) detail() string {
	if p.conflict != nil {
		return conflictDetail(p.method, p.keyFor, p.conflict)
	}
	return strings.Clone(p.Detail)
}

type problemLock struct {
	Key         string  `json:"key"`
	Kind        string  `json:"kind"`
	Below       bool    `json:"below,omitempty"`
	HeldSeconds float64 `json:"held_seconds"`
	// Explicit marks a lock taken with LOCK or the admin API, which
	// ends at Expires unless refreshed.
	Explicit bool       `json:"explicit,omitempty"`
	Expires  *time.Time `json:"expires,omitempty"`
}

// errNULKey refuses a key with a NUL byte (a path with %00): a backend
// written in C may cut the path off there and write to a resource whose
// lock the request never asked for.
var errNULKey = errors.New("a NUL byte (%00) in the lock key")

// refuse answers a request whose lock was not granted: 423 for a
// conflict, 503 for a full table, both with Retry-After, and 400 without
// it for a key too deep for hierarchy or with a NUL byte, which retrying
// cannot help.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string, err error) error {
	// Not errors.As: its target would escape, an allocation on every
	// conflict.
	return h.refuseWith(w, r, repl, key, err, asConflict(err)) // refusalcost.go
}

// refuseWith is refuse for err, whose conflict, if it is one, is
// conflict. A conflict the caller keeps (on its stack: see
// acquisition.conflict) comes with a nil err, and is copied to the heap
// only for handle_errors, which keeps it.
func (h *Handler) refuseWith(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string, err error, conflict *lockstore.ConflictError) error {
	// keyOf and destination return a *pathError unwrapped.
	badPath, _ := err.(*pathError)
	status, retry, result := http.StatusServiceUnavailable, time.Second, resultFull
	p := problem{Type: problemType, Instance: r.URL.RequestURI()}
	switch {
	case conflict != nil:
		status, retry, result = http.StatusLocked, conflict.RetryAfter, resultConflict
		p.Title = "Resource is locked"
		p.conflict, p.method, p.keyFor = conflict, r.Method, key
		p.Lock = &problemLock{
			Key:         conflict.Key,
			Kind:        conflict.Kind.String(),
			Below:       conflict.Below,
			HeldSeconds: conflict.HeldFor.Seconds(),
		}
		// Check first: a client hammering a locked path must not pay for
		// log fields that nobody writes.
		if ce := h.logger.Check(zapcore.DebugLevel, "lock conflict"); ce != nil {
			ce.Write(zap.String("key", key), zap.String("method", r.Method),
				zap.String("held_key", conflict.Key), zap.Duration("held_for", conflict.HeldFor))
		}
		if err == nil && h.UseHandleErrors {
			kept := *conflict
			err = &kept
		}
	case errors.Is(err, lockstore.ErrTooDeep):
		status, retry, result = http.StatusBadRequest, 0, resultTooDeep
		p.Title = "Path too deep to lock"
		p.Detail = fmt.Sprintf("zone %q locks a path with all its ancestors (hierarchy), which takes at most %d segments; %v", h.Zone, lockstore.MaxHierarchyDepth, err)
		h.logger.Debug("lock key too deep", zap.String("method", r.Method), zap.String("zone", h.Zone), zap.Error(err))
	case errors.Is(err, errNULKey):
		status, retry, result = http.StatusBadRequest, 0, resultBadKey
		p.Title = "Path cannot be locked"
		p.Detail = "the request has " + errNULKey.Error() + " (its path, unless the zone's key says otherwise), which a backend may read as the end of it"
		h.logger.Debug("lock key with a NUL byte", zap.String("method", r.Method), zap.String("zone", h.Zone))
	case badPath != nil:
		status, retry, result = http.StatusBadRequest, 0, badPath.result
		p.Title = "Path cannot be locked"
		p.Detail = badPath.Error() + "; see docs/path-readings.md"
		h.logger.Debug("lock key refused", zap.String("method", r.Method), zap.String("zone", h.Zone), zap.Error(err))
	case errors.Is(err, lockstore.ErrFull):
		p.Title = "Lock table is full"
		p.Detail = fmt.Sprintf("zone %q holds its maximum of locks and waiters; try again later", h.Zone)
		h.logger.Debug("lock table full", zap.String("key", key), zap.String("method", r.Method), zap.String("zone", h.Zone))
	case errors.Is(err, lockstore.ErrStoreFailed):
		// Never fail_open: the store is there and refuses (see ErrStoreFailed).
		result = resultStoreError
		p.Title = "Lock store failed"
		p.Detail = fmt.Sprintf("the lock store of zone %q answered with an error; try again later", h.Zone)
		h.storeTrouble(key, err)
	case errors.Is(err, lockstore.ErrStoreUnavailable): // before the context cases: it may wrap a timeout
		result = resultUnavailable
		p.Title = "Lock store unavailable"
		p.Detail = fmt.Sprintf("the lock store of zone %q could not be reached; try again later", h.Zone)
		h.storeTrouble(key, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The client left while queued; nobody reads the answer.
		repl.Set("http.lock.result", resultConflict)
		h.metrics.count(resultConflict)
		return caddyhttp.Error(499, fmt.Errorf("lock %s: client went away while waiting: %w", key, err))
	default:
		p.Title = "Lock unavailable"
		p.Detail = "the lock store could not be reached"
		h.logger.Error("acquiring lock", zap.String("key", key), zap.String("method", r.Method), zap.Error(err))
	}
	p.Status = status
	repl.Set("http.lock.result", resultValue(result))
	h.metrics.count(result)
	if h.RetryAfter > 0 && retry > 0 {
		retry = time.Duration(h.RetryAfter)
	}
	return h.writeRefusalTo(w, r, p, retry, key, err)
}

// writeRefusal writes a refusal with Retry-After (whole seconds, at
// least 1; none when retry is 0) and problem p as its body, or, with
// use_handle_errors, hands "lock <key>: <err>" to handle_errors. The error is formatted only
// then: a plain refusal does not format an error nobody reads.
func (h *Handler) writeRefusal(w http.ResponseWriter, p problem, retry time.Duration, key string, err error) error {
	return h.writeRefusalTo(w, nil, p, retry, key, err)
}

// writeRefusalTo is writeRefusal for request r: a 423 or 503 to a
// request that prefers text/html (a browser, not a WebDAV client) is the
// HTML page of refusalpage.go, with the same status and Retry-After, so
// that a person who posted a form can read it. Either answer then says
// Vary: Accept. A nil r always gets the problem document.
func (h *Handler) writeRefusalTo(w http.ResponseWriter, r *http.Request, p problem, retry time.Duration, key string, err error) error {
	status := p.Status
	secs := max(1, int64((retry+time.Second-1)/time.Second))
	hdr := w.Header()
	if h.UseHandleErrors {
		if retry > 0 {
			hdr.Set("Retry-After", strconv.FormatInt(secs, 10))
		}
		return caddyhttp.Error(status, fmt.Errorf("lock %s: %w", key, err))
	}
	negotiated := r != nil && (status == http.StatusLocked || status == http.StatusServiceUnavailable ||
		status == http.StatusPreconditionFailed || status == http.StatusPreconditionRequired)
	if negotiated && wantsRefusalPage(r) {
		shown := int64(0)
		if retry > 0 {
			shown = secs
		}
		body, perr := appendRefusalPage(make([]byte, 0, 4096), r, &p, shown, time.Now())
		if perr == nil {
			if retry > 0 {
				hdr.Set("Retry-After", strconv.FormatInt(secs, 10))
			}
			hdr.Set("Content-Type", "text/html; charset=utf-8")
			hdr.Set("Content-Length", strconv.Itoa(len(body)))
			hdr.Add("Vary", "Accept")
			hdr.Set("Content-Security-Policy", refusalCSP)
			hdr.Set("X-Content-Type-Options", "nosniff")
			hdr.Set("Cache-Control", "no-store")
			w.WriteHeader(status)
			_, _ = w.Write(body)
			return nil
		}
		// Cannot happen with the fixed template; the problem document
		// still says what happened.
		h.logger.Error("writing the refusal page", zap.Error(perr))
	}
	bp := refusalBufs.Get().(*[]byte)
	body := p.appendJSON((*bp)[:0])
	// The header values share one backing array (one allocation, not
	// one each); each has a capacity of one, so an append by a later
	// handler copies it rather than writing into its neighbour.
	vals := [...]string{decimal(int(secs)), "application/problem+json", decimal(len(body)), "Accept"}
	if retry > 0 {
		hdr["Retry-After"] = vals[0:1:1]
	}
	hdr["Content-Type"] = vals[1:2:2]
	hdr["Content-Length"] = vals[2:3:3]
	if negotiated {
		// A browser would have had the page: caches must tell them apart.
		if _, ok := hdr["Vary"]; ok {
			hdr.Add("Vary", "Accept")
		} else {
			hdr["Vary"] = vals[3:4:4]
		}
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
	if cap(body) <= maxPooledRefusal {
		*bp = body[:0]
		refusalBufs.Put(bp)
	}
	return nil
}

// appendJSON appends p's JSON form to b, as encoding/json would write
// it (HTML-safe escapes, invalid UTF-8 as U+FFFD, fields in order).
func (p *problem) appendJSON(b []byte) []byte {
	b = append(b, `{"type":`...)
	b = appendJSONString(b, p.Type)
	b = append(b, `,"title":`...)
	b = appendJSONString(b, p.Title)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(p.Status), 10)
	b = append(b, `,"detail":`...)
	if p.conflict != nil {
		b = append(b, '"')
		b = appendConflictText(b, p.method, p.keyFor, p.conflict, true)
		b = append(b, '"')
	} else {
		b = appendJSONString(b, p.Detail)
	}
	b = append(b, `,"instance":`...)
	b = appendJSONString(b, p.Instance)
	if l := p.Lock; l != nil {
		b = append(b, `,"lock":{"key":`...)
		b = appendJSONString(b, l.Key)
		b = append(b, `,"kind":`...)
		b = appendJSONString(b, l.Kind)
		if l.Below {
			b = append(b, `,"below":true`...)
		}
		b = append(b, `,"held_seconds":`...)
		b = appendJSONFloat(b, l.HeldSeconds)
		if l.Explicit {
			b = append(b, `,"explicit":true`...)
		}
		if l.Expires != nil {
			b = append(b, `,"expires":"`...)
			b = l.Expires.AppendFormat(b, time.RFC3339Nano)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	if p.ETag != "" {
		b = append(b, `,"etag":`...)
		b = appendJSONString(b, p.ETag)
	}
	return append(b, '}')
}

// appendJSONFloat formats f as encoding/json does; a value JSON cannot
// hold (NaN, an infinity) is written as 0, never as invalid JSON.
func appendJSONFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, '0')
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// 1e-07 as 1e-7, as encoding/json writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a quoted JSON string, with encoding/json's
// escapes: control characters, quote and backslash, the HTML-sensitive
// < > &, and U+2028/U+2029; bytes that are not UTF-8 become U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendJSONChars(b, s)
	return append(b, '"')
}

// appendJSONChars appends the characters of s as appendJSONString
// writes them, without the quotes. Strings appended one after another
// come out as their concatenation would when each but the first begins
// with ASCII: a byte that is not UTF-8 at the end of one cannot be taken
// for the start of a character with the next.
func appendJSONChars(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(b, s[start:]...)
}

// refuseAmbiguous answers 400 with a problem body saying why the request
// is ambiguous; retrying it as it is cannot help, so no Retry-After.
func (h *Handler) refuseAmbiguous(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, err *ambiguousError) error {
	repl.Set("http.lock.key", "")
	repl.Set("http.lock.fence", "")
	repl.Set("http.lock.wait", time.Duration(0))
	repl.Set("http.lock.result", resultAmbiguous)
	h.metrics.count(resultAmbiguous)
	h.logger.Debug("ambiguous request refused", zap.String("method", r.Method), zap.String("zone", h.Zone), zap.String("why", err.Error()))
	return h.writeRefusal(w, problem{
		Type:     problemType,
		Title:    err.title,
		Status:   http.StatusBadRequest,
		Detail:   err.detail,
		Instance: r.URL.RequestURI(),
	}, 0, "", err)
}

// setRetryAfter sets Retry-After to retry in whole seconds, at least one.
func setRetryAfter(w http.ResponseWriter, retry time.Duration) {
	w.Header().Set("Retry-After", strconv.FormatInt(max(1, int64((retry+time.Second-1)/time.Second)), 10))
}

// writeXML answers with an XML body.
func writeXML(w http.ResponseWriter, status int, body []byte) error {
	w.Header().Set("Content-Type", "application/xml; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

// refuseExplicit answers 423 for explicit locks in the way of a request
// to key: DAV:error naming their roots for WebDAV clients (xml), a
// problem document otherwise; Retry-After says when the last of them
// ends unless refreshed. No locks means they ended as the store read
// them: there is nothing to name, and a retry in a second will likely
// pass. The caller sets and counts the result (conflict).
func (h *Handler) refuseExplicit(w http.ResponseWriter, r *http.Request, key string, xml bool, locks []lockstore.ExplicitLock, condition string) error {
	if len(locks) == 0 {
		h.logger.Debug("explicit lock conflict with locks that ended meanwhile", zap.String("key", key), zap.String("method", r.Method))
		if xml {
			setRetryAfter(w, time.Second)
			return writeXML(w, http.StatusLocked, dav.MarshalDAVError(condition))
		}
		return h.writeRefusalTo(w, r, problem{
			Type:     problemType,
			Title:    "Resource is locked",
			Status:   http.StatusLocked,
			Detail:   fmt.Sprintf("%s %s met locks that ended as they were read; try again", r.Method, key),
			Instance: r.URL.RequestURI(),
		}, time.Second, key, errors.New("held by explicit locks that ended meanwhile"))
	}
	hrefs, retry := lockRoots(locks)
	first := locks[0]
	h.logger.Debug("explicit lock conflict", zap.String("key", key), zap.String("method", r.Method),
		zap.String("lock_root", first.Root), zap.String("token", tokenPrefix(first.Token)))
	if xml {
		setRetryAfter(w, retry)
		return writeXML(w, http.StatusLocked, dav.MarshalDAVError(condition, hrefs...))
	}
	expires := first.Expires
	return h.writeRefusalTo(w, r, problem{
		Type:     problemType,
		Title:    "Resource is locked",
		Status:   http.StatusLocked,
		Detail:   fmt.Sprintf("%s %s needs the token of the %s lock on %s", r.Method, key, first.Scope, first.Href),
		Instance: r.URL.RequestURI(),
		Lock: &problemLock{
			Key:         first.Root,
			Kind:        first.Scope.String(),
			HeldSeconds: time.Since(first.Created).Seconds(),
			Explicit:    true,
			Expires:     &expires,
		},
	}, retry, key, fmt.Errorf("held by an explicit lock on %s", first.Root))
}

// refuseExplicitStore answers a request whose explicit locks the store
// could not read or make. It returns the result for the caller to set
// and count: resultFull for a full table (503 with Retry-After and a
// problem document; {http.lock.result} is set already); "" when the store could not be reached or failed
// (fail_closed: refuse answers as for an in-flight lock the store could
// not grant, and counts it); resultUnavailable for any other error
// (a bare 503 from Caddy).
func (h *Handler) refuseExplicitStore(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string, err error) (string, error) {
	if errors.Is(err, lockstore.ErrFull) {
		title, detail := "Lock table is full", fmt.Sprintf("zone %q holds its maximum of explicit locks; try again later", h.Zone)
		if lim := (*lockstore.ExplicitLimitError)(nil); errors.As(err, &lim) {
			title, detail = limitTitle(lim.Limit), fmt.Sprintf("zone %q: %s; try again later", h.Zone, lim)
		}
		// Before the answer: a header written with it may show it.
		repl.Set("http.lock.result", resultFull)
		return resultFull, h.writeRefusal(w, problem{
			Type: problemType, Title: title, Status: http.StatusServiceUnavailable,
			Detail: detail, Instance: r.URL.RequestURI(),
		}, time.Second, key, err)
	}
	if errors.Is(err, lockstore.ErrStoreUnavailable) || errors.Is(err, lockstore.ErrStoreFailed) {
		return "", h.refuse(w, r, repl, key, err)
	}
	h.logger.Error("explicit lock store", zap.String("key", key), zap.String("method", r.Method), zap.Error(err))
	return resultUnavailable, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("lock store: %w", err))
}

// refuseMaintenance refuses a plain write (a zone without webdav, where
// no client can hold a token) that an explicit lock covers: such locks
// are the admin API's maintenance windows. It reports whether it
// answered. It counts the request in the metrics: as result (acquired
// or waited, which ServeHTTP has set as {http.lock.result}) when it
// passes, by its refusal otherwise, so that a refused write is not
// counted as acquired.
func (h *Handler) refuseMaintenance(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, z *zone, key string, lease lockstore.Lease, result string) (bool, error) {
	if !lease.ExplicitLocksInZone() {
		// The grant saw no explicit lock in the zone; one made since
		// then is no different from one made while this write was
		// already in flight. result "" is counted by the caller (countNow).
		h.countPass(result)
		return false, nil
	}
	// With hierarchy a write covers the keys below its own, as the
	// in-flight table has it: locks rooted there are in its way too.
	ls, err := z.explicit.Affecting(r.Context(), key, h.Hierarchy)
	if err != nil {
		if h.failsOpen(err) {
			h.storeTrouble(key, err)
			repl.Set("http.lock.result", resultFailOpen)
			h.countPass(countNow(resultFailOpen, result == ""))
			return false, nil
		}
		result, err := h.refuseExplicitStore(w, r, repl, key, err)
		if result != "" {
			repl.Set("http.lock.result", resultValue(result))
			h.metrics.count(result)
		}
		return true, err
	}
	if len(ls) == 0 {
		h.countPass(result)
		return false, nil
	}
	repl.Set("http.lock.result", resultConflict)
	h.metrics.count(resultConflict)
	return true, h.refuseExplicit(w, r, key, isDAVClient(r), ls, dav.CondLockTokenSubmitted)
}
