package main

import (
	"fmt"
	"strings"
	"time"
)

// The five goals of the performance issue (BENCHMARKS.md, "Goals"), each
// judged from the figures of one run: every figure is a median over the
// run's pairs, and a goal is met when every one of its figures is.

// verdictPairs is how many pairs the figures are medians over, at
// least: a line from fewer says so.
const verdictPairs = 10

// figure is one measured value of a goal and its bound.
type figure struct {
	what    string
	s       spread
	bound   float64
	atLeast bool                 // the figure must be >= bound (otherwise <= bound)
	format  func(float64) string // how the value and the bound are printed
	missing string               // why there is no value, when s is empty
}

// met reports whether the figure's median is within its bound.
func (f figure) met() bool {
	if f.s.n == 0 {
		return false
	}
	if f.atLeast {
		return f.s.med >= f.bound
	}
	return f.s.med <= f.bound
}

func (f figure) String() string {
	if f.s.n == 0 {
		return f.what + " not measured (" + f.missing + ")"
	}
	v := f.format(f.s.med)
	if f.s.n > 1 {
		v += " (" + f.format(f.s.min) + "–" + f.format(f.s.max) + ")"
	}
	op := "≤"
	if f.atLeast {
		op = "≥"
	}
	return fmt.Sprintf("%s %s %s %s", f.what, v, op, f.format(f.bound))
}

// goal is one goal's line: its figures, met when all are.
type goal struct {
	n       int
	what    string
	figures []figure
}

func (g goal) met() bool {
	for _, f := range g.figures {
		if !f.met() {
			return false
		}
	}
	return len(g.figures) > 0
}

// String is the goal's line: "goal N, what: figure, figure: met".
func (g goal) String() string {
	parts := make([]string, len(g.figures))
	pairs := 0
	for i, f := range g.figures {
		parts[i] = f.String()
		if f.s.n > 0 && (pairs == 0 || f.s.n < pairs) {
			pairs = f.s.n
		}
	}
	mark := "met"
	if !g.met() {
		mark = "missed"
	}
	if pairs > 0 && pairs < verdictPairs {
		mark += fmt.Sprintf(" (from %d pairs, fewer than the %d a verdict needs)", pairs, verdictPairs)
	}
	return fmt.Sprintf("goal %d, %s: %s: %s", g.n, g.what, strings.Join(parts, ", "), mark)
}

func fmtRatio(x float64) string { return fmt.Sprintf("%.2f", x) }
func fmtTimes(x float64) string { return fmt.Sprintf("%.2fx", x) }
func fmtCount(x float64) string { return fmt.Sprintf("%.0f", x) }
func fmtShare(x float64) string { return fmt.Sprintf("%.1f%%", 100*x) }
func fmtMicros(x float64) string {
	return fmtDur(time.Duration(x))
}

// goals computes the five goals from a run's measurements: the Caddy runs
// by name, the locker benchmark and the handler's own cost.
func goals(byName map[string]*runDef, lk lockerRuns, own ownRuns) []goal {
	rate := func(m measurement) float64 { return m.rate }
	p99 := func(m measurement) float64 { return float64(m.p99) }
	ratio := func(b, a string, f func(measurement) float64) spread {
		if byName[b] == nil || byName[a] == nil {
			return spread{}
		}
		return pairRatios(byName[b], byName[a], f)
	}
	noRedis := errNoRedis.Error()

	one := goal{n: 1, what: "end to end, memory store (lock over reverse_proxy alone)", figures: []figure{
		{what: "PUT req/s ratio", s: ratio("lock-put", "base-put", rate), bound: 0.98, atLeast: true, format: fmtRatio},
		{what: "PUT p99 ratio", s: ratio("lock-put", "base-put", p99), bound: 1.03, format: fmtRatio},
		{what: "90% GET mix req/s ratio", s: ratio("lock-mix", "base-mix", rate), bound: 0.98, atLeast: true, format: fmtRatio},
		{what: "mix p99 ratio", s: ratio("lock-mix", "base-mix", p99), bound: 1.03, format: fmtRatio},
	}}

	writeAllocs, writeShare, readAllocs := own.goalFigures(byName["base-put"])
	two := goal{n: 2, what: "the handler's own cost (BenchmarkHandlerOwn, lock minus route)", figures: []figure{
		{what: "allocs per locked write", s: writeAllocs, bound: 2, format: fmtCount, missing: "no BenchmarkHandlerOwn results"},
		{what: "share of a proxied write's Caddy CPU", s: writeShare, bound: 0.10, format: fmtShare, missing: "no BenchmarkHandlerOwn results"},
		{what: "allocs per read", s: readAllocs, bound: 0, format: fmtCount, missing: "no BenchmarkHandlerOwn results"},
	}}

	three := goal{n: 3, what: "423 answers over proxied writes", figures: []figure{
		{what: "423/s over scenario 1's req/s", s: ratio("hot-423", "base-put", rate), bound: 3.5, atLeast: true, format: fmtTimes},
	}}

	var redisCPU spread
	if r := byName["lock-redis"]; r != nil {
		var per []float64
		for _, m := range r.results {
			if m.writes > 0 {
				per = append(per, float64(m.redisCPU)/float64(m.writes))
			}
		}
		redisCPU = spreadOf(per)
	}
	four := goal{n: 4, what: "Redis store (redis-server on the same machine)", figures: []figure{
		{what: "req/s over the memory store's", s: ratio("lock-redis", "lock-put", rate), bound: 0.8, atLeast: true, format: fmtRatio, missing: noRedis},
		{what: "redis-server CPU per locked write", s: redisCPU, bound: float64(20 * time.Microsecond), format: fmtMicros, missing: noRedis},
	}}

	distinct, share := lockerGoal(lk)
	five := goal{n: 5, what: "the lock table (BenchmarkLocker, distinct keys)", figures: []figure{
		{what: "ops/s over MemLS's at -cpu 1", s: distinct, bound: 10, atLeast: true, format: fmtTimes, missing: "no BenchmarkLocker results"},
		{what: "-cpu 2 scaling over the padded mutexes' scaling", s: share, bound: 0.9, atLeast: true, format: fmtRatio, missing: "no BenchmarkLocker results"},
	}}
	return []goal{one, two, three, four, five}
}

// lockerGoal is goal 5's figures, per pair of the locker benchmark: the
// lock table's ops/s over MemLS's on distinct keys at -cpu 1, and its
// scaling from -cpu 1 to -cpu 2 over the scaling of the 64 padded
// mutexes (the most any table sharded that way could gain on the
// machine).
func lockerGoal(lk lockerRuns) (distinct, share spread) {
	var ratios, shares []float64
	for _, run := range lk {
		ns := map[string]float64{}
		for _, l := range run {
			ns[fmt.Sprintf("%s/%s/%d", l.workload, l.impl, l.cpu)] = l.nsPerOp
		}
		if a, b := ns["distinct/caddylock/1"], ns["distinct/webdav/1"]; a > 0 && b > 0 {
			ratios = append(ratios, b/a)
		}
		l1, l2 := ns["distinct/caddylock/1"], ns["distinct/caddylock/2"]
		m1, m2 := ns["distinct/64-mutexes/1"], ns["distinct/64-mutexes/2"]
		if l1 > 0 && l2 > 0 && m1 > 0 && m2 > 0 {
			shares = append(shares, (l1/l2)/(m1/m2))
		}
	}
	return spreadOf(ratios), spreadOf(shares)
}
