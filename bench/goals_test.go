package main

import (
	"strings"
	"testing"
	"time"
)

// goalRuns is verdictPairs pairs of every Caddy run: the lock costs 1% of the
// throughput and 2% of p99 on PUTs, 3% and 1% on the mix; 423s come at 3.6x
// scenario 1's rate; Redis runs at 0.5x the memory store, its server
// spending 2ms over the 100 locked writes of a measurement (20µs each) in
// the first pair, 3ms (30µs) in the others.
func goalRuns(withRedis bool) map[string]*runDef {
	ms := func(rate float64, p99 time.Duration) []measurement {
		var out []measurement
		for range verdictPairs {
			m := put(rate, time.Millisecond, p99, 100*time.Microsecond, 0)
			m.writes = 100
			out = append(out, m)
		}
		return out
	}
	byName := map[string]*runDef{
		"base-put": runWith("base-put", ms(1000, 100*time.Millisecond)...),
		"lock-put": runWith("lock-put", ms(990, 102*time.Millisecond)...),
		"base-mix": runWith("base-mix", ms(2000, 100*time.Millisecond)...),
		"lock-mix": runWith("lock-mix", ms(1940, 101*time.Millisecond)...),
		"hot-423":  runWith("hot-423", ms(3600, time.Millisecond)...),
	}
	if withRedis {
		r := runWith("lock-redis", ms(495, 200*time.Millisecond)...)
		for i := range r.results {
			r.results[i].redisCPU = 3 * time.Millisecond
		}
		r.results[0].redisCPU = 2 * time.Millisecond
		byName["lock-redis"] = r
	}
	return byName
}

// goalLockerRuns is verdictPairs pairs of BenchmarkLocker: the table at 12x MemLS
// on distinct keys at -cpu 1 in every pair; from -cpu 1 to -cpu 2 it gains
// 1.2x, and the padded mutexes 1.5x (a share of 0.8), in every pair.
func goalLockerRuns() lockerRuns {
	run := []benchLine{
		{workload: "distinct", impl: "caddylock", cpu: 1, nsPerOp: 60},
		{workload: "distinct", impl: "caddylock", cpu: 2, nsPerOp: 50},
		{workload: "distinct", impl: "webdav", cpu: 1, nsPerOp: 720},
		{workload: "distinct", impl: "webdav", cpu: 2, nsPerOp: 700},
		{workload: "distinct", impl: "64-mutexes", cpu: 1, nsPerOp: 30},
		{workload: "distinct", impl: "64-mutexes", cpu: 2, nsPerOp: 20},
	}
	var lk lockerRuns
	for range verdictPairs {
		lk = append(lk, run)
	}
	return lk
}

// goalOwnRuns is verdictPairs pairs of BenchmarkHandlerOwn: a locked write costs
// the handler 2 allocations and 5µs more than the route alone (5% of
// scenario 1's 100µs of Caddy CPU), a read 1 allocation.
func goalOwnRuns() ownRuns {
	pair := ownPair{
		{method: "write", through: "route", nsPerOp: 6000, allocs: 25},
		{method: "write", through: "lock", nsPerOp: 11000, allocs: 27},
		{method: "read", through: "route", nsPerOp: 2500, allocs: 25},
		{method: "read", through: "lock", nsPerOp: 2600, allocs: 26},
	}
	var own ownRuns
	for range verdictPairs {
		own = append(own, pair)
	}
	return own
}

func goalLine(t *testing.T, gs []goal, n int) string {
	t.Helper()
	for _, g := range gs {
		if g.n == n {
			return g.String()
		}
	}
	t.Fatalf("no goal %d", n)
	return ""
}

func TestGoalLines(t *testing.T) {
	gs := goals(goalRuns(true), goalLockerRuns(), goalOwnRuns())
	if len(gs) != 5 {
		t.Fatalf("%d goals, want 5", len(gs))
	}
	for _, c := range []struct {
		n     int
		parts []string
		met   bool
	}{
		// 0.99 ≥ 0.98 and 1.02 ≤ 1.03, but the mix's 0.97 < 0.98.
		{1, []string{"PUT req/s ratio 0.99 (0.99–0.99) ≥ 0.98", "PUT p99 ratio 1.02 (1.02–1.02) ≤ 1.03",
			"mix req/s ratio 0.97 (0.97–0.97) ≥ 0.98", "mix p99 ratio 1.01 (1.01–1.01) ≤ 1.03"}, false},
		// The read's one allocation misses the 0.
		{2, []string{"allocs per locked write 2 (2–2) ≤ 2", "share of a proxied write's Caddy CPU 5.0% (5.0%–5.0%) ≤ 10.0%",
			"allocs per read 1 (1–1) ≤ 0"}, false},
		{3, []string{"423/s over scenario 1's req/s 3.60x (3.60x–3.60x) ≥ 3.50x"}, true},
		// The median pair's redis-server spent 30µs per locked write.
		{4, []string{"req/s over the memory store's 0.50 (0.50–0.50) ≥ 0.80", "redis-server CPU per locked write 30µs (20µs–30µs) ≤ 20µs"}, false},
		{5, []string{"ops/s over MemLS's at -cpu 1 12.00x (12.00x–12.00x) ≥ 10.00x", "-cpu 2 scaling over the padded mutexes' scaling 0.80 (0.80–0.80) ≥ 0.90"}, false},
	} {
		line := goalLine(t, gs, c.n)
		for _, p := range c.parts {
			if !strings.Contains(line, p) {
				t.Errorf("goal %d: no %q in\n%s", c.n, p, line)
			}
		}
		want := ": missed"
		if c.met {
			want = ": met"
		}
		if !strings.HasSuffix(line, want) {
			t.Errorf("goal %d should end %q:\n%s", c.n, want, line)
		}
		if !strings.HasPrefix(line, "goal ") {
			t.Errorf("goal %d line does not start with its number: %s", c.n, line)
		}
	}
}

// A goal is judged by the medians: one pair outside the bound does not
// make it missed, and every figure of a goal must be met.
func TestGoalJudgedByMedian(t *testing.T) {
	runs := goalRuns(true)
	for i := range runs["lock-mix"].results {
		runs["lock-mix"].results[i].rate = 1990
	}
	runs["lock-mix"].results[2].rate = 1900 // one bad pair
	line := goalLine(t, goals(runs, goalLockerRuns(), goalOwnRuns()), 1)
	if !strings.Contains(line, "mix req/s ratio 0.99 (0.95–0.99) ≥ 0.98") || !strings.HasSuffix(line, ": met") {
		t.Errorf("goal 1 with the mix's median at 0.99 should be met:\n%s", line)
	}
	// Each goal 2 figure met: 0 allocations per read.
	own := goalOwnRuns()
	for _, p := range own {
		p[3].allocs = p[2].allocs
	}
	if line := goalLine(t, goals(runs, goalLockerRuns(), own), 2); !strings.HasSuffix(line, ": met") {
		t.Errorf("goal 2 with 2 allocations per write, 5%% of the CPU, 0 per read should be met:\n%s", line)
	}
}

// Without redis-server, and without benchmark results, the goals say so
// and count as missed; a run of fewer pairs than a verdict needs (a smoke pass's one) says so.
func TestGoalLinesWithoutData(t *testing.T) {
	gs := goals(goalRuns(false), nil, nil)
	four := goalLine(t, gs, 4)
	if !strings.Contains(four, "not measured (redis-server not found in PATH") || !strings.HasSuffix(four, ": missed") {
		t.Errorf("goal 4 without Redis:\n%s", four)
	}
	for _, n := range []int{2, 5} {
		if line := goalLine(t, gs, n); !strings.Contains(line, "not measured (no Benchmark") || !strings.HasSuffix(line, ": missed") {
			t.Errorf("goal %d without benchmark results:\n%s", n, line)
		}
	}
	runs := goalRuns(false)
	for _, r := range runs {
		r.results = r.results[:1]
	}
	if line := goalLine(t, goals(runs, nil, nil), 3); !strings.HasSuffix(line, ": met (from 1 pairs, fewer than the 10 a verdict needs)") {
		t.Errorf("goal 3 from one pair:\n%s", line)
	}
}

// The report carries the goal lines.
func TestReportPrintsGoals(t *testing.T) {
	cfg := config{pairs: 3, requests: 100, duration: time.Second, concurrency: 16}
	var runs []*runDef
	for _, r := range goalRuns(true) {
		runs = append(runs, r)
	}
	report := buildReport("machine: test", cfg, runs, goalLockerRuns(), goalOwnRuns(), memResult{perLock: 100, passed: true})
	for n := 1; n <= 5; n++ {
		if !strings.Contains(report, "\n- goal "+string(rune('0'+n))+", ") {
			t.Errorf("no line for goal %d in:\n%s", n, report)
		}
	}
	if !strings.Contains(report, "a locked write 5µs (5µs–5µs) and 2 allocs, a read 0.1µs (0.1µs–0.1µs) and 1 allocs.") {
		t.Errorf("no handler summary in:\n%s", report)
	}
}
