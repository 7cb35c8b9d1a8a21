package caddylock

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/cfgarg"
	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"
)

// Conditional writes at the proxy (require_if_match, verify_etag): the
// in-flight lock keeps two writes from overlapping, not the second of
// two users who read one version from overwriting the first's save. A
// backend that ignores If-Match cannot help; the handler can, because it
// checks the precondition and forwards the write under one exclusive
// lock, released only once the backend has answered, so nothing slips in
// between. See docs/etags.md.

// Values of {http.lock.precondition}.
const (
	preconditionPassed  = "passed"  // evaluated here and true: the write went on
	preconditionFailed  = "failed"  // 412, or the current validators could not be read
	preconditionMissing = "missing" // 428: require_if_match and none sent
	preconditionSkipped = "skipped" // a write not evaluated here (see checkPreconditions)
)

// Values of {http.lock.result} for a write that the precondition check
// refused, each also a label of the requests metric (metrics.go), so that
// a refused write is never counted as acquired.
const (
	// resultBadPrecondition: 400, a malformed If-Match or If-None-Match.
	resultBadPrecondition = "bad_precondition"
	// resultPreconditionFailed: 412, or refused because the resource's
	// current version could not be read (502, or the 401 or 403 the
	// sub-request got).
	resultPreconditionFailed = "precondition_failed"
	// resultPreconditionRequired: 428 (require_if_match).
	resultPreconditionRequired = "precondition_required"
)

// checksPreconditions reports whether checkPreconditions may refuse an
// exclusive write of this handler: ServeHTTP then counts the write in
// the requests metric only after the check (countChecked).
func (h *Handler) checksPreconditions(kind lockstore.Kind) bool {
	return kind == lockstore.Exclusive && (h.VerifyETag || h.RequireIfMatch)
}

// countNow is the result that refuseMaintenance counts a passing write
// as: "" for a write that the precondition check may still refuse,
// which countChecked counts afterwards.
func countNow(result string, checked bool) string {
	if checked {
		return ""
	}
	return result
}

// countPass counts a write that refuseMaintenance lets pass, unless
// its count is held back for the precondition check ("", countNow).
func (h *Handler) countPass(result string) {
	if result != "" {
		h.metrics.count(result)
	}
}

// countChecked counts a write held back by countNow, once it has passed
// the precondition check (or ended before it), by its
// {http.lock.result}: acquired, waited, or fail_open.
// Small enough to inline: plain writes pay no call for it.
func (h *Handler) countChecked(repl *caddy.Replacer, checked bool) {
	if checked {
		h.countByResult(repl)
	}
}

// countByResult counts a request by its {http.lock.result}.
func (h *Handler) countByResult(repl *caddy.Replacer) {
	result, _ := repl.GetString("http.lock.result")
	if c := h.metrics.requests[result]; c != nil {
		c.Inc()
	}
}

// refusedPrecondition sets {http.lock.result} for a write the check
// refused and counts it (ServeHTTP held its count back: countNow; a
// WebDAV request's settle leaves it counted, see refuseInflight). One
// checked by a nested handler (checkHeldPreconditions) is counted by the
// handler that holds its lock, once.
func (h *Handler) refusedPrecondition(ctx context.Context, repl *caddy.Replacer, result string) {
	repl.Set("http.lock.result", result)
	if ctx.Value(nestedCheckKey{}) == nil {
		h.metrics.count(result)
	}
}

// nestedCheckKey marks the context of a check made by a handler nested in
// one of its zone that holds the request's lock.
type nestedCheckKey struct{}

// checkHeldPreconditions is checkPreconditions for a write whose lock an
// earlier handler of the zone holds (ServeHTTP's heldBefore): this
// handler's require_if_match and verify_etag apply under that lock, which
// is exclusive whenever this handler's is. A write the earlier handler
// evaluated already (passed) is not asked for again: its If-Match may
// have been dropped on the way (a generated tag), and the lock has not
// been let go since.
func (h *Handler) checkHeldPreconditions(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, kind lockstore.Kind, locks bool) (bool, error) {
	if !locks || !h.checksPreconditions(kind) {
		return false, nil
	}
	if done, _ := repl.GetString("http.lock.precondition"); done == preconditionPassed {
		return false, nil
	}
	c := heldIn(r.Context(), h.zone)
	if c == nil {
		return false, nil
	}
	ctx := context.WithValue(c, nestedCheckKey{}, true)
	return h.checkPreconditions(ctx, w, r, repl, h.zone, string(c.key), true)
}

// validateETags checks the settings of this file and etag.go.
func (h *Handler) validateETags() error {
	if h.VerifyETagGET && !h.VerifyETag {
		return fmt.Errorf("lock: verify_etag_get needs verify_etag")
	}
	if h.ETagMaxSize < 0 {
		return fmt.Errorf("lock: etag_max_size must not be negative, got %d", h.ETagMaxSize)
	}
	return nil
}

// conditions are a write's preconditions (RFC 9110 section 13.1).
type conditions struct {
	match, noneMatch       []string // entity-tags as sent, W/ included
	matchAny, noneMatchAny bool     // "*"
	hasMatch, hasNoneMatch bool
	unmodified             time.Time
	hasUnmodified          bool
}

// any reports whether the request makes a precondition that
// require_if_match accepts: If-Match, If-Unmodified-Since, or
// If-None-Match: * (a create). If-None-Match with tags alone does not
// keep a write from overwriting a version its client never saw.
func (c *conditions) any() bool { return c.hasMatch || c.hasUnmodified || c.noneMatchAny }

// readConditions parses a write's precondition headers. A malformed
// entity-tag list is an error (the request gets 400): guessing could let
// a write through that its client meant to be conditional. An
// If-Unmodified-Since that is not an HTTP-date is ignored, as RFC 9110
// section 13.1.4 says.
func readConditions(hdr http.Header) (conditions, error) {
	var c conditions
	var err error
	if vals := hdr.Values("If-Match"); len(vals) > 0 {
		c.hasMatch = true
		if c.matchAny, c.match, err = parseETagList(vals); err != nil {
			return c, fmt.Errorf("If-Match: %w", err)
		}
	}
	if vals := hdr.Values("If-None-Match"); len(vals) > 0 {
		c.hasNoneMatch = true
		if c.noneMatchAny, c.noneMatch, err = parseETagList(vals); err != nil {
			return c, fmt.Errorf("If-None-Match: %w", err)
		}
	}
	if v := hdr.Get("If-Unmodified-Since"); v != "" {
		if t, err := http.ParseTime(v); err == nil {
			c.unmodified, c.hasUnmodified = t, true
		}
	}
	return c, nil
}

// parseETagList reads `"*"` or a comma-separated list of entity-tags
// (RFC 9110 section 8.8.3) from the values of one header.
func parseETagList(vals []string) (star bool, tags []string, err error) {
	s := strings.Join(vals, ",")
	if strings.TrimSpace(s) == "*" {
		return true, nil, nil
	}
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			break
		}
		start := s
		if strings.HasPrefix(s, "W/") {
			s = s[2:]
		}
		if s == "" || s[0] != '"' {
			return false, nil, fmt.Errorf("expected * or a list of quoted entity-tags such as \"abc\" or W/\"abc\", got %q", strings.Join(vals, ", "))
		}
		end := strings.IndexByte(s[1:], '"')
		if end < 0 {
			return false, nil, fmt.Errorf("an entity-tag without its closing quote in %q", strings.Join(vals, ", "))
		}
		for _, c := range []byte(s[1 : 1+end]) {
			if c < 0x21 || c == 0x7f {
				return false, nil, fmt.Errorf("a control character or space in an entity-tag in %q", strings.Join(vals, ", "))
			}
		}
		tags = append(tags, start[:len(start)-len(s)+end+2])
		s = strings.TrimLeft(s[end+2:], " \t")
		if s != "" && s[0] != ',' {
			return false, nil, fmt.Errorf("entity-tags must be separated by commas in %q", strings.Join(vals, ", "))
		}
	}
	if len(tags) == 0 {
		return false, nil, errors.New("an empty list; send * or quoted entity-tags")
	}
	return false, tags, nil
}

// strongMatch compares two entity-tags strongly: both strong, same
// opaque tag (RFC 9110 section 8.8.3.2).
func strongMatch(a, b string) bool {
	return !strings.HasPrefix(a, "W/") && !strings.HasPrefix(b, "W/") && a == b
}

// weakMatch compares two entity-tags weakly: same opaque tag.
func weakMatch(a, b string) bool {
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}

// validators are what the backend says of the resource now.
type validators struct {
	exists       bool
	etag         string // "" when it has none
	lastModified time.Time
	generated    bool // etag was made by the etags option, not the backend
}

// evaluate applies c to v in the order of RFC 9110 section 13.2.2 (steps
// 1 to 3; 4 and 5 concern GET and HEAD, which are not writes), and names
// the header that failed.
func (c *conditions) evaluate(v validators) (ok bool, failed string) {
	if c.hasMatch {
		// Step 1: strong comparison; "*" asks only that it exist.
		hit := v.exists && (c.matchAny || (v.etag != "" && slices.ContainsFunc(c.match, func(t string) bool { return strongMatch(t, v.etag) })))
		if !hit {
			return false, "If-Match"
		}
	} else if c.hasUnmodified && v.exists && !v.lastModified.IsZero() && v.lastModified.After(c.unmodified) {
		// Step 2, only without If-Match; ignored for a resource without
		// a modification date (section 13.1.4).
		return false, "If-Unmodified-Since"
	}
	if c.hasNoneMatch {
		// Step 3: weak comparison; "*" asks that it not exist (a create).
		hit := v.exists && (c.noneMatchAny || (v.etag != "" && slices.ContainsFunc(c.noneMatch, func(t string) bool { return weakMatch(t, v.etag) })))
		if hit {
			return false, "If-None-Match"
		}
	}
	return true, ""
}

// preconditionAnswered is what davRequest.hold returns when
// checkPreconditions has answered the request; refuseInflight returns
// err as it is.
type preconditionAnswered struct{ err error }

func (e *preconditionAnswered) Error() string {
	if e.err == nil {
		return "answered by the precondition check"
	}
	return "answered by the precondition check: " + e.err.Error()
}

func (e *preconditionAnswered) Unwrap() error { return e.err }

// exclusiveOn reports whether reqs (coalesced by hold) hold key
// exclusively: its own lock or that of an ancestor that covers it.
func exclusiveOn(reqs []lockstore.Request, key string) bool {
	return slices.ContainsFunc(reqs, func(q lockstore.Request) bool {
		return q.Kind == lockstore.Exclusive && (q.Key == key || lockstore.Below(key, q.Key))
	})
}

// checkPreconditions runs once the exclusive in-flight lock of key is
// held (ServeHTTP, davRequest.hold), before the write goes on: with
// require_if_match it refuses a write without a precondition (428); with
// verify_etag it reads the resource's current validators through the
// whole server (davRequest.sub) and evaluates the write's preconditions
// (412 when one fails). It reports whether it answered the request.
//
// {http.lock.precondition} is skipped for a write it let through without
// evaluating: one without preconditions under verify_etag alone, or one
// with preconditions where verify_etag is off (the backend evaluates
// them). WebDAV's LOCK and UNLOCK are not checked: a WebDAV client makes
// its writes conditional with the If header and lock tokens.
func (h *Handler) checkPreconditions(ctx context.Context, w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, z *zone, key string, exclusive bool) (bool, error) {
	if (!h.VerifyETag && !h.RequireIfMatch) || !exclusive || (h.WebDAV && (r.Method == "LOCK" || r.Method == "UNLOCK")) {
		return false, nil
	}
	// Not the context that a store's lease guard watches: the
	// sub-request is not the write being sent upstream. r's header is
	// shared: what is removed below is not forwarded.
	r = r.WithContext(ctx)
	d := &davRequest{h: h, z: z, w: w, r: r, repl: repl, key: key, xml: isDAVClient(r)}
	c, err := readConditions(r.Header)
	if err != nil {
		h.settlePrecondition(repl, preconditionFailed)
		h.refusedPrecondition(ctx, repl, resultBadPrecondition)
		h.logger.Debug("malformed precondition refused", zap.String("key", key), zap.String("method", r.Method),
			zap.String("precondition", preconditionFailed), zap.Error(err))
		return true, h.writeRefusalTo(w, r, problem{
			Type: problemType, Title: "Malformed precondition", Status: http.StatusBadRequest,
			Detail: err.Error(), Instance: r.URL.RequestURI(),
		}, 0, key, err)
	}
	if h.RequireIfMatch && !c.any() {
		return true, d.refusePreconditionRequired()
	}
	if !h.VerifyETag || (!c.any() && !c.hasNoneMatch) {
		h.settlePrecondition(repl, preconditionSkipped)
		return false, nil
	}
	v, status, hdr, err := d.currentValidators()
	if err != nil || (status != 0 && !v.exists && existenceOf(status) == resourceUnknown) {
		h.settlePrecondition(repl, preconditionFailed)
		h.refusedPrecondition(ctx, repl, resultPreconditionFailed)
		msg := fmt.Sprintf("cannot check the request's preconditions: reading the current version of %s gave %d", d.href(), status)
		if err != nil {
			msg = "cannot check the request's preconditions: reading the current version of " + d.href() + ": " + err.Error()
		}
		h.logger.Debug("precondition not evaluated", zap.String("key", key), zap.String("method", r.Method),
			zap.String("precondition", preconditionFailed), zap.Int("status", status), zap.Error(err))
		return true, d.subFailed(status, hdr, msg)
	}
	if ok, failed := c.evaluate(v); !ok {
		return true, d.refusePreconditionFailed(failed, v)
	}
	if v.generated {
		// The tags are this proxy's: the backend never issued them, and
		// one that checks If-Match would refuse every verified write.
		// They were checked here, under the lock that the write holds
		// until the backend answers, so nothing is lost by dropping
		// them; "*" means the same to the backend and stays.
		// If-Unmodified-Since stays too: its dates are the backend's.
		for _, name := range []string{"If-Match", "If-None-Match"} {
			if vals := r.Header.Values(name); len(vals) > 0 && strings.TrimSpace(strings.Join(vals, ",")) != "*" {
				r.Header.Del(name)
			}
		}
	}
	h.settlePrecondition(repl, preconditionPassed)
	return false, nil
}

// passUnchecked marks a write of a zone with require_if_match or
// verify_etag that goes on without its lock (the store's on_error
// fail_open) as skipped: a check without the lock could not keep another
// write from slipping in between, and a refusal would put back the
// unavailability that fail_open trades safety for. See docs/etags.md.
func (h *Handler) passUnchecked(repl *caddy.Replacer, kind lockstore.Kind) {
	if h.checksPreconditions(kind) {
		h.settlePrecondition(repl, preconditionSkipped)
	}
}

// settlePrecondition sets {http.lock.precondition} and counts it.
func (h *Handler) settlePrecondition(repl *caddy.Replacer, outcome string) {
	repl.Set("http.lock.precondition", outcome)
	if c := h.metrics.preconditions[outcome]; c != nil {
		c.Inc()
	}
}

// currentValidators asks the server for the resource's ETag and
// Last-Modified, as the client would get them: HEAD through the route,
// GET where etags computes the tag (its HEAD would ask with GET anyway)
// or where verify_etag get says the backend's HEAD is unreliable. In a
// WebDAV zone a collection that answers HEAD with no clear status is
// asked with PROPFIND, which tells whether it exists (it has no tag).
// status is that of the last answer; 0 when none came.
func (d *davRequest) currentValidators() (v validators, status int, hdr http.Header, err error) {
	probe := new(etagProbe)
	d.r = d.r.WithContext(context.WithValue(d.r.Context(), etagProbeKey{}, probe))
	method := http.MethodHead
	if d.h.ETags || d.h.VerifyETagGET {
		method = http.MethodGet
	}
	p, raw := d.ownPath()
	status, hdr, err = d.sub(method, p, raw, nil)
	if err != nil {
		return v, 0, nil, fmt.Errorf("%s %s: %w", method, p, err)
	}
	e := existenceOf(status)
	if e == resourceUnknown && d.h.WebDAV {
		status, hdr, err = d.sub("PROPFIND", p, raw, http.Header{"Depth": {"0"}})
		if err != nil {
			return v, 0, nil, fmt.Errorf("PROPFIND %s: %w", p, err)
		}
		if e = existenceOf(status); e == resourceExists {
			return validators{exists: true}, status, hdr, nil
		}
	}
	if e != resourceExists {
		return v, status, hdr, nil
	}
	v = validators{exists: true, etag: strings.TrimSpace(hdr.Get("ETag")), generated: probe.generated}
	if t, err := http.ParseTime(hdr.Get("Last-Modified")); err == nil {
		v.lastModified = t
	}
	return v, status, hdr, nil
}

// refusePreconditionFailed answers 412: the header that failed, and the
// current ETag (in the ETag header and the problem body) so that the
// client can read the resource again, merge, and retry.
func (d *davRequest) refusePreconditionFailed(failed string, v validators) error {
	h, r := d.h, d.r
	h.settlePrecondition(d.repl, preconditionFailed)
	h.refusedPrecondition(d.r.Context(), d.repl, resultPreconditionFailed)
	var detail string
	switch {
	case failed == "If-None-Match" && v.etag == "":
		detail = fmt.Sprintf("%s %s: If-None-Match: %s does not hold: the resource exists already", r.Method, d.href(), r.Header.Get("If-None-Match"))
	case failed == "If-None-Match":
		detail = fmt.Sprintf("%s %s: If-None-Match does not hold: the resource exists and its current ETag is %s", r.Method, d.href(), v.etag)
	case !v.exists:
		detail = fmt.Sprintf("%s %s: %s does not hold: the resource does not exist (any more)", r.Method, d.href(), failed)
	case v.etag == "" && failed == "If-Match":
		detail = fmt.Sprintf("%s %s: If-Match does not hold: the resource has no ETag to compare with", r.Method, d.href())
	case failed == "If-Match":
		detail = fmt.Sprintf("%s %s: If-Match does not hold: it was changed since you read it; its current ETag is %s. "+
			"Read it again, apply your change, and send it with If-Match: %s", r.Method, d.href(), v.etag, v.etag)
	default:
		detail = fmt.Sprintf("%s %s: If-Unmodified-Since does not hold: it was modified at %s", r.Method, d.href(), v.lastModified.UTC().Format(http.TimeFormat))
	}
	if v.etag != "" {
		d.w.Header().Set("ETag", v.etag)
	}
	h.logger.Debug("precondition failed", zap.String("key", d.key), zap.String("method", r.Method),
		zap.String("precondition", preconditionFailed), zap.String("header", failed), zap.String("etag", v.etag))
	err := fmt.Errorf("precondition %s failed", failed)
	return h.writeRefusalTo(d.w, r, problem{
		Type: problemType, Title: "Precondition failed", Status: http.StatusPreconditionFailed,
		Detail: detail, Instance: r.URL.RequestURI(), ETag: v.etag,
	}, 0, d.key, err)
}

// refusePreconditionRequired answers 428 (RFC 6585) to a write without a
// precondition under require_if_match, naming the header to send, with
// the current ETag where verify_etag reads validators anyway (elsewhere
// asking for it would cost every refused write a backend round trip).
func (d *davRequest) refusePreconditionRequired() error {
	h, r := d.h, d.r
	h.settlePrecondition(d.repl, preconditionMissing)
	h.refusedPrecondition(d.r.Context(), d.repl, resultPreconditionRequired)
	var v validators
	if h.VerifyETag {
		v, _, _, _ = d.currentValidators() // best effort: the refusal stands either way
	}
	detail := fmt.Sprintf("%s %s must be conditional: send If-Match with the ETag you read (or If-Unmodified-Since), "+
		"or If-None-Match: * to create it", r.Method, d.href())
	if v.etag != "" {
		detail = fmt.Sprintf("%s %s must be conditional: send If-Match: %s (its current ETag) if your change is based on that version, "+
			"or If-None-Match: * to create it", r.Method, d.href(), v.etag)
		d.w.Header().Set("ETag", v.etag)
	}
	h.logger.Debug("precondition required", zap.String("key", d.key), zap.String("method", r.Method),
		zap.String("precondition", preconditionMissing))
	return h.writeRefusalTo(d.w, r, problem{
		Type: problemType, Title: "Precondition required", Status: http.StatusPreconditionRequired,
		Detail: detail, Instance: r.URL.RequestURI(), ETag: v.etag,
	}, 0, d.key, errors.New("precondition required"))
}

// unmarshalETagOption reads the Caddyfile options of this file and
// etag.go: etags, require_if_match, verify_etag [get], etag_max_size <size>.
func (h *Handler) unmarshalETagOption(d *caddyfile.Dispenser, sub string) error {
	switch sub {
	case "etag_max_size":
		val, err := cfgarg.One(d, sub, "a size such as 1MiB", "size")
		if err != nil {
			return err
		}
		n, err := humanize.ParseBytes(val)
		if err != nil || n == 0 || n > math.MaxInt32 {
			return d.Errf("lock: etag_max_size: expected a positive size such as 1MiB or 256KB (at most 2GiB), got %q", val)
		}
		h.ETagMaxSize = int64(n)
		return nil
	case "verify_etag":
		h.VerifyETag = true
		if d.NextArg() {
			if d.Val() != "get" {
				return d.Errf("lock: verify_etag: the only argument is get (ask the backend with GET, not HEAD), got %q", d.Val())
			}
			h.VerifyETagGET = true
		}
	case "etags":
		h.ETags = true
	case "require_if_match":
		h.RequireIfMatch = true
	}
	if d.NextArg() {
		return d.Errf("lock: %s: unexpected argument %q", sub, d.Val())
	}
	return nil
}
