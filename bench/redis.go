package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// The Redis side of the comparison of stores: scenario 2's load through a
// Caddy whose lock table lives in a redis-server that the run starts on
// loopback and stops when it ends.

// errNoRedis means redis-server is not in PATH: the Redis scenario is
// skipped, and the rest of the run goes on.
var errNoRedis = errors.New("redis-server not found in PATH (install the redis-server package to run it)")

// redisArgs is the command line of a throwaway redis-server: loopback
// only, on port, persisting nothing, with its working directory dir.
func redisArgs(port int, dir string) []string {
	return []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", dir}
}

// redisSite is the handlers of the Redis scenario: `lock` with its
// defaults, its table in the redis-server at addr.
func redisSite(addr string) string {
	return "\tlock {\n\t\tstore redis {\n\t\t\taddress " + addr + "\n\t\t}\n\t}\n"
}

// startRedis starts redis-server from PATH on a free loopback port, with a
// scratch directory that goes when it stops, and its output in
// out/redis-server.log. It returns errNoRedis when there is no
// redis-server.
func startRedis(out string) (*proc, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errNoRedis
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bench-redis-")
	if err != nil {
		return nil, fmt.Errorf("redis-server's directory: %w", err)
	}
	p, err := startProc("redis-server", exec.Command(bin, redisArgs(port, dir)...),
		"127.0.0.1:"+strconv.Itoa(port), filepath.Join(out, "redis-server.log"), dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return p, nil
}
