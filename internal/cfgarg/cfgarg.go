// Package cfgarg reads the arguments of Caddyfile subdirectives alike for
// the lock handler and its store modules, so that every block of the
// `lock` directive refuses a bad value with the same words.
package cfgarg

import (
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// GivenOnce returns a check that refuses a subdirective of block given a
// second time, where it would silently take the last value; those in
// adding (lists) may repeat.
func GivenOnce(d *caddyfile.Dispenser, block string, adding ...string) func(sub string) error {
	seen := make(map[string]bool)
	return func(sub string) error {
		if seen[sub] && !slices.Contains(adding, sub) {
			return d.Errf("%s: %s is given twice; give it once", block, sub)
		}
		seen[sub] = true
		return nil
	}
}

// One reads the single argument of subdirective sub: what says what was
// expected when it is missing, noun names it when there are more.
func One(d *caddyfile.Dispenser, sub, what, noun string) (string, error) {
	if !d.NextArg() {
		return "", d.Errf("lock: %s: expected %s", sub, what)
	}
	val := d.Val()
	if d.NextArg() {
		return "", d.Errf("lock: %s: expected one %s, got also %q", sub, noun, d.Val())
	}
	return val, nil
}

// Duration reads the single duration argument of sub, which must not be
// negative.
func Duration(d *caddyfile.Dispenser, sub string) (caddy.Duration, error) {
	val, err := One(d, sub, "a duration such as 500ms or 30s", "duration")
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(val)
	if err != nil {
		return 0, d.Errf("lock: %s: expected a duration such as 500ms or 30s, got %q: %v", sub, val, err)
	}
	if dur < 0 {
		return 0, d.Errf("lock: %s: expected a duration that is not negative, got %q", sub, val)
	}
	return caddy.Duration(dur), nil
}

// PositiveDuration reads the single duration argument of sub, which must
// be more than zero.
func PositiveDuration(d *caddyfile.Dispenser, sub string) (caddy.Duration, error) {
	dur, err := Duration(d, sub)
	if err == nil && dur == 0 {
		return 0, d.Errf("lock: %s: expected a positive duration, got 0", sub)
	}
	return dur, err
}

// Count reads the single positive whole number argument of sub.
func Count(d *caddyfile.Dispenser, sub string) (int, error) {
	val, err := One(d, sub, "a positive whole number", "number")
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(val)
	if err != nil || n < 1 {
		return 0, d.Errf("lock: %s: expected a positive whole number, got %q", sub, val)
	}
	return n, nil
}
