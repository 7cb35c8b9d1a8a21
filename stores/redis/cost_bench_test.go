package redisstore

// What a locked write costs redis-server: its CPU per Acquire+Release
// pair and each script's usec_per_call, from INFO before and after.
//
//	go test -run '^$' -bench 'RedisServerCost' ./stores/redis/

import (
	"context"
	"os"
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
	flatAndHierarchy(b, startRedis(b), "cost-", func(b *testing.B, l *Locker) {
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

// flatAndHierarchy runs bench as two sub-benchmarks, on a locker of a zone
// without hierarchy and one with it.
func flatAndHierarchy(b *testing.B, srv *testRedis, zone string, bench func(*testing.B, *Locker)) {
	for _, hier := range []bool{false, true} {
		name := "flat"
		if hier {
			name = "hierarchy"
		}
		b.Run(name, func(b *testing.B) {
			bench(b, newRedisLocker(b, srv, zone+name, redisOpts{hierarchy: hier}))
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

// BenchmarkRedisFixedPipelines sends acquire calls, then their release
// calls, in pipelines of eight from one goroutine: redis-server's CPU per
// locked write (server-µs/write) without the scheduler deciding how calls
// batch. Against a redis-server run under callgrind it gives exact
// instruction counts, which a loaded machine does not blur
// (CADDY_LOCK_BENCH_REDIS names that server instead of starting one):
//
//	valgrind --tool=callgrind --toggle-collect=evalGenericCommand \
//	  redis-server --port 6390 --save "" --appendonly no &
//	CADDY_LOCK_BENCH_REDIS=127.0.0.1:6390 go test -run '^$' \
//	  -bench 'RedisFixedPipelines/flat' -benchtime 2000x ./stores/redis/
//	redis-cli -p 6390 shutdown nosave   # callgrind.out.*: totals / 2001
func BenchmarkRedisFixedPipelines(b *testing.B) {
	var srv *testRedis
	if addr := os.Getenv("CADDY_LOCK_BENCH_REDIS"); addr != "" {
		srv = &testRedis{Addr: addr}
	} else {
		srv = startRedis(b)
	}
	const depth = 8
	flatAndHierarchy(b, srv, "fixed-", func(b *testing.B, l *Locker) {
		ctx := context.Background()
		for _, s := range []*redis.Script{acquireScript, releaseScript} {
			if err := s.Load(ctx, l.client).Err(); err != nil {
				b.Fatal(err)
			}
		}
		acqKeys := []string{l.kExp, l.kHeld, l.kInfo, l.kMeta, l.kQueue, l.kWexp, l.kWseq, l.kXidx}
		var keys, members [depth]string
		before := serverCPU(b, l.client)
		b.ResetTimer()
		for i := 0; i < b.N; i += depth {
			p := l.client.Pipeline()
			for j := range depth {
				k := "/d" + strconv.Itoa((i+j)%64) + "/f" + strconv.Itoa(i+j)
				tok := newToken(lockstore.Exclusive)
				keys[j], members[j] = k, k+"\x00"+tok
				p.EvalSha(ctx, acquireScript.Hash(), acqKeys, l.acquireArgs(lockstore.Request{Key: k, Kind: lockstore.Exclusive}, tok, "")...)
			}
			if _, err := p.Exec(ctx); err != nil {
				b.Fatal(err)
			}
			p = l.client.Pipeline()
			for j := range depth {
				p.EvalSha(ctx, releaseScript.Hash(), l.holderKeys(), members[j], keys[j], l.channel, 1000)
			}
			if _, err := p.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric((serverCPU(b, l.client)-before)/float64(b.N), "server-µs/write")
	})
}
