package caddylock

import (
	"testing"

	"github.com/caddy-lock/caddy-lock/internal/redistest"
)

// The handler's Redis tests start their redis-servers with the helpers
// that the Redis store's own tests use too.

type testRedis = redistest.Server

func startRedis(t testing.TB, args ...string) *testRedis { return redistest.Start(t, args...) }

func startSentinel(t testing.TB, master *testRedis, name string, settings ...string) *testRedis {
	return redistest.StartSentinel(t, master, name, settings...)
}

func startRedisTLS(t *testing.T) (*testRedis, string) { return redistest.StartTLS(t) }
