package caddylock

// The store modules of the http.handlers.lock.stores namespace register
// themselves when imported; importing them here keeps `xcaddy build
// --with github.com/caddy-lock/caddy-lock` giving every store.
import (
	_ "github.com/caddy-lock/caddy-lock/stores/redis"
)
