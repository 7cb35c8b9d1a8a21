package main

import (
	"fmt"
	"strings"
	"time"
)

// scenario is one row of the results: a run, the run it is compared with
// (nil for a baseline), and its description.
type scenario struct {
	label, what string
	b, a        *runDef
}

// medianRun summarises one side's measurements by their medians.
func medianRun(ms []measurement) (rate, p50, p99, rss, cpu spread) {
	var rs, p5, p9, rss0, c []float64
	for _, m := range ms {
		rs = append(rs, m.rate)
		p5 = append(p5, float64(m.p50))
		p9 = append(p9, float64(m.p99))
		rss0 = append(rss0, m.peakRSS)
		c = append(c, float64(m.cpuPer))
	}
	return spreadOf(rs), spreadOf(p5), spreadOf(p9), spreadOf(rss0), spreadOf(c)
}

// pairRatios divides b's measurements by a's, pair by pair.
func pairRatios(b, a *runDef, f func(measurement) float64) spread {
	var rs []float64
	for i := range min(len(a.results), len(b.results)) {
		if d := f(a.results[i]); d > 0 {
			rs = append(rs, f(b.results[i])/d)
		}
	}
	return spreadOf(rs)
}

func buildReport(machine string, cfg config, runs []*runDef, lk lockerRuns, own ownRuns, mem memResult) string {
	byName := map[string]*runDef{}
	for _, r := range runs {
		byName[r.name] = r
	}
	base := byName["base-put"]
	rows := []scenario{
		{"1", "baseline: `reverse_proxy`, PUT over 10 000 paths", byName["base-put"], nil},
		{"2", "`lock` (defaults), PUT over 10 000 paths — vs 1", byName["lock-put"], base},
		{"2r", "`lock { store redis {…} }` (defaults, redis-server on the same machine), PUT over 10 000 paths — vs 2", byName["lock-redis"], byName["lock-put"]},
		{"3a", "baseline for 3: `reverse_proxy`, 90% GET 10% PUT", byName["base-mix"], nil},
		{"3", "`lock { shared GET HEAD }`, 90% GET 10% PUT — vs 3a", byName["lock-mix"], byName["base-mix"]},
		{"4", "423 answers: PUT to one path, backend holds writes 50 ms — vs 1", byName["hot-423"], base},
	}
	rate := func(m measurement) float64 { return m.rate }
	p50 := func(m measurement) float64 { return float64(m.p50) }
	p99 := func(m measurement) float64 { return float64(m.p99) }
	cpu := func(m measurement) float64 { return float64(m.cpuPer) }

	var b strings.Builder
	fmt.Fprintf(&b, "%s; load average %s at the end\n\n", machine, loadAverage())
	fmt.Fprintf(&b, "%d pairs; per measurement %d requests (or %s) on %d keep-alive connections, each side in its own Caddy warmed up with %d requests; values are medians of the pairs, ratios median (min–max) of the per-pair ratios, peak RSS the highest of the run.\n\n",
		cfg.pairs, cfg.requests, cfg.duration, cfg.concurrency, cfg.warmup)
	b.WriteString("| # | scenario | req/s | p50 | p99 | req/s ratio | p50 ratio | p99 ratio | Caddy CPU/req | CPU/req ratio | Caddy peak RSS |\n")
	b.WriteString("|---|---|---:|---:|---:|---|---|---|---:|---|---:|\n")
	for _, s := range rows {
		if s.b == nil {
			continue // a scenario that was skipped
		}
		r, l50, l99, rss, c := medianRun(s.b.results)
		rr, r50, r99, rc := "—", "—", "—", "—"
		if s.a != nil {
			rr = pairRatios(s.b, s.a, rate).ratio()
			r50 = pairRatios(s.b, s.a, p50).ratio()
			r99 = pairRatios(s.b, s.a, p99).ratio()
			rc = pairRatios(s.b, s.a, cpu).ratio()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.label, s.what,
			fmtRate(r.med), fmtDur(time.Duration(l50.med)), fmtDur(time.Duration(l99.med)), rr, r50, r99,
			fmtDur(time.Duration(c.med)), rc, fmtBytes(rss.max))
	}
	fmt.Fprintf(&b, "\n%s\n", redisSummary(byName["lock-redis"], byName["lock-put"]))
	fmt.Fprintf(&b, "Scenario 4 counts only the 423 answers (rate and latency); %s.\n", hotSummary(byName["hot-423"]))
	if s := ceilingSummary(byName["static-423"], byName["hot-423"], base); s != "" {
		fmt.Fprintf(&b, "%s\n", s)
	}
	memVerdict := "meets"
	if !mem.passed {
		memVerdict = "fails"
	}
	fmt.Fprintf(&b, "Memory per held lock (TestMemoryPerHeldLock, 100 000 exclusive locks): %.0f bytes; after releasing them all the heap is %+d bytes from where it started (the test %s its bounds).\n",
		mem.perLock, mem.residue, memVerdict)

	b.WriteString("\nThe lock table alone (`BenchmarkLocker`, caddy-lock vs golang.org/x/net/webdav's MemLS, Acquire+Release vs Create+Unlock):\n\n")
	b.WriteString(lockerTable(lk))

	b.WriteString(ownSummary(own))

	b.WriteString("\nGoals (medians over the pairs; a goal is met when every figure's median is within its bound):\n\n")
	for _, g := range goals(byName, lk, own) {
		fmt.Fprintf(&b, "- %s\n", g)
	}

	b.WriteString("\nOther checks:\n\n")
	target := func(ok bool, what string) {
		mark := "met"
		if !ok {
			mark = "missed"
		}
		fmt.Fprintf(&b, "- %s: %s\n", what, mark)
	}
	allocs := lockerAllocs(lk)
	target(allocs >= 0 && allocs <= 1, fmt.Sprintf("locker <= 1 alloc per acquire: %.0f (most of any caddylock workload)", allocs))
	target(mem.perLock <= 256, fmt.Sprintf("<= 256 bytes per held lock: %.0f", mem.perLock))
	target(mem.passed, fmt.Sprintf("heap back to its start after release (within 1 MiB): %+d bytes", mem.residue))
	return b.String()
}

// redisSummary says what the redis-server of scenario 2r cost besides
// Caddy, or that the scenario was skipped (r is nil).
func redisSummary(r, mem *runDef) string {
	if r == nil {
		return fmt.Sprintf("Scenario 2r (`lock` with `store redis`) was skipped: %v.", errNoRedis)
	}
	var per []float64
	for _, m := range r.results {
		per = append(per, float64(m.redisPer))
	}
	both := pairRatios(r, mem, func(m measurement) float64 { return float64(m.cpuPer + m.redisPer) })
	return fmt.Sprintf("Scenario 2r keeps the lock table in a redis-server that the run starts on 127.0.0.1: "+
		"its own CPU per request was %s; Caddy's and Redis's together were %s of scenario 2's Caddy CPU per request.",
		spreadOf(per).durations(), both.ratio())
}

// hotSummary says how the writes of scenario 4 fared.
func hotSummary(r *runDef) string {
	var ok, locked int
	for _, m := range r.results {
		ok += m.statuses[200]
		locked += m.statuses[423]
	}
	return fmt.Sprintf("over all pairs %d writes were proxied and %d refused with 423 without reaching the backend", ok, locked)
}

// ceilingSummary is the informational line on scenario 4's ceiling (not a
// goal): how fast the same Caddy answers the same load with a static 423
// of the same size, over scenario 1's rate, and how close scenario 4's
// 423s come to it, pair by pair. "" when the ceiling was not measured.
func ceilingSummary(static, hot, base *runDef) string {
	if static == nil || hot == nil || base == nil {
		return ""
	}
	rate := func(m measurement) float64 { return m.rate }
	var cpu, hotCPU []float64
	for _, m := range static.results {
		cpu = append(cpu, float64(m.cpuPer))
	}
	for _, m := range hot.results {
		hotCPU = append(hotCPU, float64(m.cpuPer))
	}
	return fmt.Sprintf("Ceiling (informational, not a goal): a static 423 (`respond` with a body of %d bytes, the size of scenario 4's) runs at %s scenario 1's req/s, with Caddy CPU/req %s against scenario 4's %s; scenario 4's 423s run at %s of the static 423's rate.",
		staticRefusalBytes, timesOf(pairRatios(static, base, rate)), spreadOf(cpu).durations(),
		spreadOf(hotCPU).durations(), pairRatios(hot, static, rate).ratio())
}

// timesOf prints a spread of ratios as "3.50x (3.40x–3.60x)".
func timesOf(s spread) string {
	if s.n == 0 {
		return "—"
	}
	v := fmtTimes(s.med)
	if s.n > 1 {
		v += " (" + fmtTimes(s.min) + "–" + fmtTimes(s.max) + ")"
	}
	return v
}

// lockerTable tabulates the locker benchmark: ops/s of each
// implementation per workload and -cpu, and caddy-lock's ratio to the
// reference where the reference runs the same workload.
func lockerTable(lk lockerRuns) string {
	type key struct {
		workload, impl string
		cpu            int
	}
	ops := map[key][]float64{}
	allocs := map[key]float64{}
	var order []key
	for _, run := range lk {
		for _, l := range run {
			k := key{l.workload, l.impl, l.cpu}
			if _, seen := ops[k]; !seen {
				order = append(order, k)
			}
			ops[k] = append(ops[k], 1e9/l.nsPerOp)
			allocs[k] = max(allocs[k], l.allocs)
		}
	}
	var b strings.Builder
	b.WriteString("| workload | -cpu | caddy-lock ops/s | allocs/op | webdav ops/s | allocs/op | ratio |\n|---|---:|---:|---:|---:|---:|---|\n")
	for _, k := range order {
		if k.impl != "caddylock" {
			continue
		}
		ref := key{k.workload, "webdav", k.cpu}
		refOps, refAllocs, ratio := "—", "—", "—"
		if rs, ok := ops[ref]; ok {
			refOps = fmtRate(spreadOf(rs).med)
			refAllocs = fmt.Sprintf("%.0f", allocs[ref])
			var ratios []float64
			for i := range min(len(rs), len(ops[k])) {
				ratios = append(ratios, ops[k][i]/rs[i])
			}
			ratio = spreadOf(ratios).ratio()
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %s | %s | %s |\n", k.workload, k.cpu,
			fmtRate(spreadOf(ops[k]).med), allocs[k], refOps, refAllocs, ratio)
	}
	return b.String()
}

// lockerAllocs is the most allocations per operation of any caddy-lock
// workload of the locker benchmark, -1 without results.
func lockerAllocs(lk lockerRuns) float64 {
	most := -1.0
	for _, run := range lk {
		for _, l := range run {
			if l.impl == "caddylock" {
				most = max(most, l.allocs)
			}
		}
	}
	return most
}

// ownSummary is a line on BenchmarkHandlerOwn: what the handler adds to a
// locked write and to a read, medians over the pairs.
func ownSummary(own ownRuns) string {
	var wns, wa, rns, ra []float64
	for _, run := range own {
		if ns, a, ok := run.diff("write"); ok {
			wns, wa = append(wns, ns), append(wa, a)
		}
		if ns, a, ok := run.diff("read"); ok {
			rns, ra = append(rns, ns), append(ra, a)
		}
	}
	if len(wns) == 0 && len(rns) == 0 {
		return "\nThe handler's own cost (`BenchmarkHandlerOwn`): no results.\n"
	}
	return fmt.Sprintf("\nThe handler's own cost (`BenchmarkHandlerOwn`, -cpu 1, the route through `lock` minus the same route without it): "+
		"a locked write %s and %s allocs, a read %s and %s allocs.\n",
		spreadOf(wns).durations(), spreadOf(wa).counts(), spreadOf(rns).durations(), spreadOf(ra).counts())
}
