package redisstore

// What a locked write costs redis-server: its CPU per Acquire+Release
// pair and each script's usec_per_call, from INFO before and after.
//
//	go test -run '^$' -bench 'RedisServerCost' ./stores/redis/

import (
	"context"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/redis/go-redis/v9"
)

// serverCPU is redis-server's CPU time so far (user + system), in µs,
// as INFO cpu reports it.
func serverCPU(b *testing.B, c redis.UniversalClient) float64 {
	b.Helper()
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var us float64
	for _, f := range []string{"used_cpu_user", "used_cpu_sys"} {
		m := regexp.MustCompile(f + `:([0-9.]+)`).FindStringSubmatch(info)
		if m == nil {
			b.Fatalf("no %s in INFO cpu:\n%s", f, info)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		us += v * 1e6
	}
	return us
}

// scriptStats reports each script's usec_per_call since the last reset,
// by the script's name.
func scriptStats(b *testing.B, c redis.UniversalClient) map[string]float64 {
	b.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]float64{}
	for _, m := range regexp.MustCompile(`cmdstat_(\w+):calls=(\d+),usec=(\d+),usec_per_call=([0-9.]+)`).FindAllStringSubmatch(info, -1) {
		out[m[1]], _ = strconv.ParseFloat(m[4], 64)
	}
	return out
}

// BenchmarkRedisServerCost acquires and releases exclusive locks on
// distinct keys from parallel goroutines and reports redis-server's CPU
// per pair (server-µs/write) and the mean time of one EVALSHA inside the
// server (evalsha-µs), with and without hierarchy.
func BenchmarkRedisServerCost(b *testing.B) {
	srv := startRedis(b)
	for _, hier := range []bool{false, true} {
		name := "flat"
		if hier {
			name = "hierarchy"
		}
		b.Run(name, func(b *testing.B) {
			l := newRedisLocker(b, srv, "cost-"+name, redisOpts{hierarchy: hier})
			ctx := context.Background()
			ls, err := l.Acquire(ctx, lockstore.Request{Key: "/warm", Kind: lockstore.Exclusive})
			if err != nil {
				b.Fatal(err)
			}
			ls.Release()
			if err := l.client.ConfigResetStat(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			before := serverCPU(b, l.client)
			b.ResetTimer()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					ls, err := l.Acquire(ctx, lockstore.Request{Key: "/d" + strconv.FormatInt(i%64, 10) + "/f" + strconv.FormatInt(i, 10), Kind: lockstore.Exclusive})
					if err != nil {
						b.Error(err)
						return
					}
					ls.Release()
				}
			})
			b.StopTimer()
			after := serverCPU(b, l.client)
			b.ReportMetric((after-before)/float64(b.N), "server-µs/write")
			b.ReportMetric(scriptStats(b, l.client)["evalsha"], "evalsha-µs")
		})
	}
}

// BenchmarkRedisScriptSplit times the two scripts apart: b.N acquires,
// then their b.N releases, reporting each phase's usec_per_call as
// redis-server measures it (acquire-µs, release-µs).
func BenchmarkRedisScriptSplit(b *testing.B) {
	srv := startRedis(b)
	l := newRedisLocker(b, srv, "split", redisOpts{})
	ctx := context.Background()
	ls, err := l.Acquire(ctx, lockstore.Request{Key: "/warm", Kind: lockstore.Exclusive})
	if err != nil {
		b.Fatal(err)
	}
	ls.Release()
	leases := make([]lockstore.Lease, b.N)
	if err := l.client.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			ls, err := l.Acquire(ctx, lockstore.Request{Key: "/s/" + strconv.FormatInt(i, 10), Kind: lockstore.Exclusive})
			if err != nil {
				b.Error(err)
				return
			}
			leases[i] = ls
		}
	})
	b.ReportMetric(scriptStats(b, l.client)["evalsha"], "acquire-µs")
	if err := l.client.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	next.Store(0)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if ls := leases[next.Add(1)-1]; ls != nil {
				ls.Release()
			}
		}
	})
	b.ReportMetric(scriptStats(b, l.client)["evalsha"], "release-µs")
}

// BenchmarkRedisServerFloor is the yardstick for the figures above: two
// EVALSHA calls of a script that does nothing, from as many goroutines,
// so server-µs/write is what two round trips cost redis-server before any
// lock work (reading, parsing, running Lua at all, replying).
func BenchmarkRedisServerFloor(b *testing.B) {
	srv := startRedis(b)
	l := newRedisLocker(b, srv, "floor", redisOpts{})
	ctx := context.Background()
	noop := redis.NewScript("return 1")
	if err := noop.Load(ctx, l.client).Err(); err != nil {
		b.Fatal(err)
	}
	before := serverCPU(b, l.client)
	b.ResetTimer()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			for range 2 {
				if err := noop.EvalSha(ctx, l.client, []string{"k"}).Err(); err != nil {
					b.Error(err)
					return
				}
			}
		}
	})
	b.StopTimer()
	b.ReportMetric((serverCPU(b, l.client)-before)/float64(b.N), "server-µs/write")
}
