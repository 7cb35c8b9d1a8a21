package caddylock

// A 423 is the cheapest answer Caddy can write (goal 3 of BENCHMARKS.md):
// what every refusal needs is computed here without fmt, and with as few
// allocations as the answer allows.

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// resultValue returns result as a placeholder value. A string constant
// converts to an interface without an allocation, a string variable
// with one: each known result is returned as its constant.
func resultValue(result string) any {
	switch result {
	case resultAcquired:
		return resultAcquired
	case resultWaited:
		return resultWaited
	case resultConflict:
		return resultConflict
	case resultFull:
		return resultFull
	case resultNone:
		return resultNone
	case resultUnavailable:
		return resultUnavailable
	case resultFailOpen:
		return resultFailOpen
	case resultStoreError:
		return resultStoreError
	case resultTooDeep:
		return resultTooDeep
	case resultBadKey:
		return resultBadKey
	case resultAmbiguous:
		return resultAmbiguous
	}
	return result
}

// asConflict returns err's *lockstore.ConflictError, if it has one. The
// locker returns it unwrapped: the type assertion finds it without
// errors.As, whose target escapes (an allocation on every refusal).
func asConflict(err error) *lockstore.ConflictError {
	if c, ok := err.(*lockstore.ConflictError); ok {
		return c
	}
	return asConflictWrapped(err)
}

func asConflictWrapped(err error) *lockstore.ConflictError {
	var c *lockstore.ConflictError
	if errors.As(err, &c) {
		return c
	}
	return nil
}

// conflictDetail is the detail of a 423's problem document: method and
// key, then c.Error(), in one allocation (the error's own formatting
// takes three). The problem document itself has it written into its
// body, with no string of its own (problem.appendJSON).
func conflictDetail(method, key string, c *lockstore.ConflictError) string {
	var buf [256]byte
	return string(appendConflictText(buf[:0], method, key, c, false))
}

// appendConflictText appends conflictDetail's text to b, as the
// characters of a JSON string (appendJSONChars) when json is set. Each
// piece after the request's method and key and the conflict's key begins
// with ASCII, so escaping those one by one is escaping the whole text.
func appendConflictText(b []byte, method, key string, c *lockstore.ConflictError, json bool) []byte {
	b = appendText(b, method, json)
	b = append(b, ' ')
	b = appendText(b, key, json)
	b = append(b, " conflicts with the "...)
	b = append(b, c.Kind.String()...)
	if c.Below {
		b = append(b, " lock below "...)
	} else {
		b = append(b, " lock on "...)
	}
	b = appendText(b, c.Key, json)
	b = append(b, ", held for "...)
	// ASCII, but for a "µ" that needs no escape in JSON.
	return appendMillis(b, c.HeldFor.Round(time.Millisecond))
}

// appendText appends s, escaped for a JSON string when json is set. Not
// a function passed in: the compiler would have everything given to it
// escape, the handler's conflict with it.
func appendText(b []byte, s string, json bool) []byte {
	if json {
		return appendJSONChars(b, s)
	}
	return append(b, s...)
}

// appendMillis appends d as time.Duration's String writes it, for a d
// that is a whole number of milliseconds (anything else is formatted by
// String).
func appendMillis(b []byte, d time.Duration) []byte {
	if d < 0 || d%time.Millisecond != 0 {
		return append(b, d.String()...)
	}
	ms := int64(d / time.Millisecond)
	if ms == 0 {
		return append(b, "0s"...)
	}
	if ms < 1000 {
		return append(strconv.AppendInt(b, ms, 10), "ms"...)
	}
	s, frac := ms/1000, ms%1000
	h, m := s/3600, s/60%60
	if h > 0 {
		b = append(strconv.AppendInt(b, h, 10), 'h')
	}
	if h > 0 || m > 0 {
		b = append(strconv.AppendInt(b, m, 10), 'm')
	}
	b = strconv.AppendInt(b, s%60, 10)
	if frac > 0 {
		digits := [3]byte{byte('0' + frac/100), byte('0' + frac/10%10), byte('0' + frac%10)}
		n := 3
		for digits[n-1] == '0' {
			n--
		}
		b = append(append(b, '.'), digits[:n]...)
	}
	return append(b, 's')
}

// refusalBufs holds the buffers problem documents are written into: a
// ResponseWriter does not keep what it is given to Write.
var refusalBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooledRefusal bounds the buffers kept: a rare long document (a long
// key) does not make every later one hold its size.
const maxPooledRefusal = 4096

// decimals are the numbers below maxPooledRefusal (the Content-Length
// of a pooled document, Retry-After), formatted once.
var decimals = func() []string {
	s := make([]string, maxPooledRefusal)
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

// decimal formats n, a header value.
func decimal(n int) string {
	if n >= 0 && n < len(decimals) {
		return decimals[n]
	}
	return strconv.Itoa(n)
}
