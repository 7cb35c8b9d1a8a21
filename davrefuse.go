package caddylock

// How the WebDAV side refuses: 423 with the locks in the way, 207 for
// locks below, store failures, and the plain and XML answers.

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/dav"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"go.uber.org/zap"
)

// plain answers with a short text/plain message.
func (d *davRequest) plain(status int, msg string) error {
	d.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	d.w.Header().Set("Content-Length", strconv.Itoa(len(msg)+1))
	d.w.WriteHeader(status)
	_, _ = d.w.Write([]byte(msg + "\n"))
	return nil
}

// writeXML answers with an XML body.
func (d *davRequest) writeXML(status int, body []byte) error {
	return writeXML(d.w, status, body)
}

// davError answers with a DAV:error document naming condition.
func (d *davRequest) davError(status int, condition string, hrefs ...string) error {
	return d.writeXML(status, dav.MarshalDAVError(condition, hrefs...))
}

// failOpen reports whether a write whose explicit locks could not be
// read goes on regardless (the store's on_error fail_open); it logs and
// counts the pass.
func (d *davRequest) failOpen(err error) bool {
	h := d.h
	if !h.failsOpen(err) {
		return false
	}
	h.storeTrouble(d.key, err)
	if d.result != resultFailOpen {
		d.result = resultFailOpen
		if d.counted {
			// ServeHTTP counted the request as acquired; it passes as fail_open.
			d.repl.Set("http.lock.result", resultFailOpen)
		}
	}
	return true
}

// storeFailed answers 503 when the lock store failed.
func (d *davRequest) storeFailed(err error) error {
	result, err := d.h.refuseExplicitStore(d.w, d.r, d.repl, d.key, err)
	switch result {
	case "":
		d.counted = true // refuse counted it
	case resultFull:
		d.settle(resultFull)
	}
	return err
}

// refuseInflight answers a request whose in-flight lock was not granted:
// a WebDAV client gets 423 with DAV:error naming the busy resource,
// everybody else the handler's usual refusal.
func (d *davRequest) refuseInflight(err error) error {
	if a, ok := err.(*preconditionAnswered); ok {
		d.counted = true // the check set the result and counted it
		return a.err
	}
	var conflict *lockstore.ConflictError
	if !d.xml || !errors.As(err, &conflict) {
		d.counted = true // refuse counts it
		return d.h.refuse(d.w, d.r, d.repl, d.key, err)
	}
	d.settle(resultConflict)
	retry := conflict.RetryAfter
	if d.h.RetryAfter > 0 {
		retry = time.Duration(d.h.RetryAfter)
	}
	setRetryAfter(d.w, retry)
	cond := dav.CondLockTokenSubmitted
	if d.method == "LOCK" {
		cond = dav.CondNoConflictingLock
	}
	return d.davError(http.StatusLocked, cond, conflict.Key)
}

// lockRoots returns the roots of locks as the clients named them
// (without repeats, in the order of locks) and how long until the last
// of the locks ends unless refreshed.
func lockRoots(locks []lockstore.ExplicitLock) (hrefs []string, retry time.Duration) {
	for _, l := range locks {
		retry = max(retry, time.Until(l.Expires))
		if !slices.Contains(hrefs, l.Href) {
			hrefs = append(hrefs, l.Href)
		}
	}
	return hrefs, retry
}

// refuseExplicit answers 423 for explicit locks in the way (see
// Handler.refuseExplicit).
func (d *davRequest) refuseExplicit(locks []lockstore.ExplicitLock, condition string) error {
	d.settle(resultConflict)
	return d.h.refuseExplicit(d.w, d.r, d.key, d.xml, locks, condition)
}

// allBelow reports whether every lock of locks is rooted strictly below
// key: only a depth-infinity LOCK on key meets such locks.
func allBelow(locks []lockstore.ExplicitLock, key string) bool {
	return len(locks) > 0 && !slices.ContainsFunc(locks, func(l lockstore.ExplicitLock) bool { return !lockstore.Below(l.Root, key) })
}

// refuseBelow answers a depth-infinity LOCK that locks on resources below
// the request URI keep from being granted, as RFC 4918 section 9.10.6
// (and the example of 9.10.9) says: 207 Multi-Status with a response of
// 423 Locked for each of their roots and one of 424 Failed Dependency for
// the request URI. Retry-After says when the last of them ends unless
// refreshed.
func (d *davRequest) refuseBelow(locks []lockstore.ExplicitLock) error {
	if len(locks) == 0 {
		return d.refuseExplicit(nil, dav.CondNoConflictingLock)
	}
	d.settle(resultConflict)
	hrefs, retry := lockRoots(locks)
	d.h.logger.Debug("explicit lock conflict below", zap.String("key", d.key),
		zap.String("lock_root", locks[0].Root), zap.String("token", tokenPrefix(locks[0].Token)), zap.Int("locks", len(locks)))
	setRetryAfter(d.w, retry)
	return d.writeXML(http.StatusMultiStatus, dav.MarshalLockFailure(hrefs, d.href()))
}
