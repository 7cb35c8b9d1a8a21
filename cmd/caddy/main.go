// Command caddy is Caddy with its standard modules and caddy-lock, for
// running the module without building a custom binary with xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-lock/caddy-lock"
)

func main() {
	caddycmd.Main()
}
