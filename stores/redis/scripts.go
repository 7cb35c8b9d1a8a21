package redisstore

// The store's Lua scripts live in lua/*.lua, embedded at build time. Each
// script is its source files concatenated, byte for byte what the Go
// strings of earlier versions held, so a script's SHA1 (what EVALSHA
// sends, and what the metrics name operations by) is fixed per build and
// unchanged by the move to files. The one Go value a script needs,
// lockstore.HoldWindow, is substituted once at init (see releaseScript).

import (
	"embed"
	"fmt"
)

//go:embed lua/*.lua
var luaFiles embed.FS

// lua returns the source of lua/<name>.lua; a missing file is a build
// mistake, which the package's tests load every script to catch.
func lua(name string) string {
	b, err := luaFiles.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic(fmt.Sprintf("redis lock store: script %s: %v", name, err))
	}
	return string(b)
}

// luaAncestors defines ancestorsOf(k) for scripts: an iterator over the
// proper ancestors of a "/"-rooted key, nearest first, as
// lockstore.Ancestors defines them. Scripts derive ancestors from the key
// rather than being sent them: sent, they cost the sum of their lengths,
// quadratic in the depth of the key, on every call.
var luaAncestors = lua("ancestors")

// scriptTime sets `now` to the server clock in ms, and `nowus` in µs (for
// hold times, which may be shorter than a ms); every script starts with
// it so that the clocks of Caddy nodes never matter.
var scriptTime = lua("time")

// holdWindowMark in lua/release.lua stands for lockstore.HoldWindow.
const holdWindowMark = "{{HOLD_WINDOW}}"
