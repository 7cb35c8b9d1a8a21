package caddylock

import (
	"time"

	"github.com/caddyserver/caddy/v2"
)

// A request that passes a lock handler without taking a lock (a read,
// with the defaults) has the same placeholders every time. Setting them
// would give the replacer's map its first bucket, an allocation per read;
// a provider of constants (a plain function: no closure to allocate)
// answers them instead. Values set later (with Set, by a refusal or
// another handler) take precedence, as the replacer asks its map before
// the providers added with Map.

// noLockPlaceholders answers the placeholders of a request that takes no
// lock.
func noLockPlaceholders(key string) (any, bool) {
	switch key {
	case "http.lock.key", "http.lock.fence":
		return "", true
	case "http.lock.wait":
		return time.Duration(0), true
	case "http.lock.result":
		return resultNone, true
	}
	return nil, false
}

// setNoLockPlaceholders gives the request the placeholders of a request
// that takes no lock. An earlier handler of the route that set them (a
// lock handler of another zone, say) has put its values in the map,
// which the provider would not override: those are overwritten.
func setNoLockPlaceholders(repl *caddy.Replacer) {
	if _, set := repl.Get("http.lock.result"); set {
		repl.Set("http.lock.key", "")
		repl.Set("http.lock.fence", "")
		repl.Set("http.lock.wait", time.Duration(0))
		repl.Set("http.lock.result", resultNone)
		return
	}
	repl.Map(noLockPlaceholders)
}
