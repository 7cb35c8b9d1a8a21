package dav

// The Timeout, Depth and Lock-Token headers, and new lock tokens.

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/google/uuid"
)

// ---------------------------------------------------------------------------
// Timeout header (RFC 4918 section 10.7)

// ParseTimeout parses a Timeout header: a comma-separated list of
// "Second-N" and "Infinite" (both matched case-insensitively, as clients
// vary). Every element must be well-formed and the first one is used.
// An empty header gives def; "Infinite" gives limit; N is clamped to
// limit, also when it does not fit in an integer. limit <= 0 means no
// limit (the largest time.Duration). def is clamped to [0, limit].
func ParseTimeout(s string, def, limit time.Duration) (time.Duration, error) {
	if limit <= 0 {
		limit = math.MaxInt64
	}
	def = min(max(def, 0), limit)
	if strings.Trim(s, " \t") == "" {
		return def, nil
	}
	var (
		d     time.Duration
		found bool
	)
	for elem := range strings.SplitSeq(s, ",") {
		elem = strings.Trim(elem, " \t")
		if elem == "" {
			continue // #rule lists allow empty elements
		}
		v, err := parseTimeType(elem, limit)
		if err != nil {
			return 0, fmt.Errorf("invalid Timeout header %.80q: %w", s, err)
		}
		if !found {
			d, found = v, true
		}
	}
	if !found {
		return 0, fmt.Errorf(`invalid Timeout header %.80q: expected "Second-N" or "Infinite"`, s)
	}
	return d, nil
}

func parseTimeType(e string, limit time.Duration) (time.Duration, error) {
	if strings.EqualFold(e, "Infinite") {
		return limit, nil
	}
	const prefix = "Second-"
	if len(e) < len(prefix) || !strings.EqualFold(e[:len(prefix)], prefix) {
		return 0, fmt.Errorf(`expected "Second-N" or "Infinite", found %.40q`, e)
	}
	digits := e[len(prefix):]
	if digits == "" {
		return 0, errors.New(`expected digits after "Second-"`)
	}
	maxSecs := int64(limit / time.Second)
	var n int64
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if !isDigit(c) {
			return 0, fmt.Errorf(`expected digits after "Second-", found %s`, quoteAt(digits, i))
		}
		// Saturate just above maxSecs so that huge values clamp instead
		// of overflowing.
		if n <= maxSecs {
			n = n*10 + int64(c-'0')
		}
	}
	if n > maxSecs {
		return limit, nil
	}
	return time.Duration(n) * time.Second, nil
}

// formatTimeout formats a lock's remaining time for the DAV:timeout
// element and the Timeout response header: "Infinite", or "Second-N" with
// N rounded up to whole seconds and never negative.
func formatTimeout(remaining time.Duration, infinite bool) string {
	if infinite {
		return "Infinite"
	}
	if remaining <= 0 {
		return "Second-0"
	}
	secs := remaining / time.Second
	if remaining%time.Second != 0 {
		secs++
	}
	return "Second-" + strconv.FormatInt(int64(secs), 10)
}

// ---------------------------------------------------------------------------
// Depth header (RFC 4918 section 10.2)

// ParseDepth parses a Depth header: "0", "1" or "infinity" (matched
// case-insensitively); an empty header gives def.
func ParseDepth(s string, def lockstore.Depth) (lockstore.Depth, error) {
	switch v := strings.Trim(s, " \t"); {
	case v == "":
		return def, nil
	case v == "0":
		return lockstore.DepthZero, nil
	case v == "1":
		return lockstore.DepthOne, nil
	case strings.EqualFold(v, "infinity"):
		return lockstore.DepthInfinity, nil
	}
	return 0, fmt.Errorf(`invalid Depth header %.40q: expected "0", "1" or "infinity"`, s)
}

// ParseLockDepth parses the Depth header of a LOCK request, where only "0"
// and "infinity" are allowed and a missing header means infinity (RFC 4918
// section 9.10.3).
func ParseLockDepth(s string) (lockstore.Depth, error) {
	d, err := ParseDepth(s, lockstore.DepthInfinity)
	if err != nil {
		return 0, err
	}
	if d == lockstore.DepthOne {
		return 0, errors.New(`invalid Depth header for LOCK: "1" is not allowed, use "0" or "infinity"`)
	}
	return d, nil
}

// ---------------------------------------------------------------------------
// Lock-Token header (RFC 4918 section 10.5) and lock tokens

// ParseLockToken parses a Lock-Token header, a Coded-URL "<absolute-URI>",
// and returns the URI.
func ParseLockToken(s string) (string, error) {
	v := strings.Trim(s, " \t")
	if v == "" {
		return "", errors.New("missing Lock-Token header")
	}
	if len(v) < 2 || v[0] != '<' || v[len(v)-1] != '>' {
		return "", fmt.Errorf(`invalid Lock-Token header %.80q: expected "<" absolute-URI ">"`, s)
	}
	u := v[1 : len(v)-1]
	if off, msg := checkURI(u, false); msg != "" {
		return "", fmt.Errorf("invalid Lock-Token header %.80q at offset %d: %s", s, off+1, msg)
	}
	return u, nil
}

// NewLockToken returns a new lock token: "urn:uuid:" and a random (version
// 4) UUID in lower-case canonical form, with 122 random bits from
// crypto/rand so that tokens cannot be guessed. The reader is named
// rather than left to uuid's package-wide source, which uuid.SetRand and
// uuid.EnableRandPool (callable by any package in the binary) change.
// crypto/rand.Reader never fails since Go 1.24, so Must never panics.
func NewLockToken() string {
	return uuid.Must(uuid.NewRandomFromReader(rand.Reader)).URN()
}
