package main

import (
	"strings"
	"testing"
	"time"
)

// runWith is a run whose measurements are ms.
func runWith(name string, ms ...measurement) *runDef {
	return &runDef{name: name, results: ms}
}

func put(rate float64, p50, p99, cpu, redis time.Duration) measurement {
	return measurement{rate: rate, p50: p50, p99: p99, cpuPer: cpu, redisPer: redis,
		answered: 100, statuses: statuses{200: 100}}
}

// reportRuns is a three-pair run of every scenario; withRedis adds
// scenario 2r, at half scenario 2's rate, twice its p50 and its Caddy CPU,
// and with Redis using as much CPU again as Caddy.
func reportRuns(withRedis bool) []*runDef {
	ms := func(rate float64, d time.Duration) []measurement {
		return []measurement{put(rate, d, 4*d, d, 0), put(rate*1.1, d, 4*d, d, 0), put(rate*0.9, d, 4*d, d, 0)}
	}
	runs := []*runDef{
		runWith("base-put", ms(1000, time.Millisecond)...),
		runWith("lock-put", ms(1000, time.Millisecond)...),
		runWith("base-mix", ms(1000, time.Millisecond)...),
		runWith("lock-mix", ms(1000, time.Millisecond)...),
		runWith("hot-423", ms(3000, time.Millisecond/2)...),
	}
	if withRedis {
		var rs []measurement
		for _, m := range runs[1].results {
			rs = append(rs, put(m.rate/2, 2*m.p50, m.p99, 2*m.cpuPer, 2*m.cpuPer))
		}
		runs = append(runs, runWith("lock-redis", rs...))
	}
	return runs
}

// rowOf returns the table row of label, "" if there is none.
func rowOf(report, label string) string {
	for line := range strings.SplitSeq(report, "\n") {
		if strings.HasPrefix(line, "| "+label+" |") {
			return line
		}
	}
	return ""
}

func TestReportComparesRedisWithMemoryStore(t *testing.T) {
	cfg := config{pairs: 3, requests: 100, duration: time.Second, concurrency: 16}
	report := buildReport("machine: test", cfg, reportRuns(true), nil, nil, memResult{perLock: 100, passed: true})
	row := rowOf(report, "2r")
	if row == "" {
		t.Fatalf("no 2r row in:\n%s", report)
	}
	cells := strings.Split(row, "|")
	// | 2r | what | req/s | p50 | p99 | req/s ratio | p50 ratio | p99 ratio | CPU/req | CPU/req ratio | RSS |
	for i, want := range map[int]string{3: "500", 4: "2ms", 5: "4ms", 6: "0.50 (0.50–0.50)", 7: "2.00 (2.00–2.00)",
		8: "1.00 (1.00–1.00)", 9: "2ms", 10: "2.00 (2.00–2.00)"} {
		if got := strings.TrimSpace(cells[i]); got != want {
			t.Errorf("2r column %d = %q, want %q; row:\n%s", i, got, want, row)
		}
	}
	// Redis used 2ms per request and Caddy 2ms, against 1ms of Caddy in
	// scenario 2.
	if !strings.Contains(report, "its own CPU per request was 2ms (2ms–2ms);") {
		t.Errorf("no redis-server CPU per request of 2ms in:\n%s", report)
	}
	if !strings.Contains(report, "together were 4.00 (4.00–4.00) of scenario 2's") {
		t.Errorf("Caddy's and Redis's CPU together should be 4× scenario 2's Caddy CPU:\n%s", report)
	}
	if rowOf(report, "2") == "" || rowOf(report, "3") == "" {
		t.Errorf("the other rows are missing:\n%s", report)
	}
}

func TestReportSaysRedisWasSkipped(t *testing.T) {
	cfg := config{pairs: 3, requests: 100, duration: time.Second, concurrency: 16}
	report := buildReport("machine: test", cfg, reportRuns(false), nil, nil, memResult{perLock: 100, passed: true})
	if row := rowOf(report, "2r"); row != "" {
		t.Errorf("a 2r row without Redis: %s", row)
	}
	if !strings.Contains(report, "Scenario 2r (`lock` with `store redis`) was skipped: redis-server not found in PATH") {
		t.Errorf("the report does not say why 2r is missing:\n%s", report)
	}
	for _, label := range []string{"1", "2", "3a", "3", "4"} {
		if rowOf(report, label) == "" {
			t.Errorf("no row %s without Redis:\n%s", label, report)
		}
	}
}

// The ceiling of scenario 4 is one informational line, not a row or a
// goal: a static 423 at 4x scenario 1's rate, scenario 4's 423s at 3x.
func TestReportGivesTheStaticRefusalCeiling(t *testing.T) {
	cfg := config{pairs: 3, requests: 100, duration: time.Second, concurrency: 16}
	runs := reportRuns(false)
	plain := buildReport("machine: test", cfg, runs, nil, nil, memResult{perLock: 100, passed: true})
	if strings.Contains(plain, "Ceiling") {
		t.Errorf("a ceiling line without a static-423 run:\n%s", plain)
	}
	static := runWith("static-423", put(4000, time.Millisecond/4, time.Millisecond, 20*time.Microsecond, 0),
		put(4400, time.Millisecond/4, time.Millisecond, 20*time.Microsecond, 0), put(3600, time.Millisecond/4, time.Millisecond, 20*time.Microsecond, 0))
	report := buildReport("machine: test", cfg, append(runs, static), nil, nil, memResult{perLock: 100, passed: true})
	want := "Ceiling (informational, not a goal): a static 423 (`respond` with a body of 265 bytes, the size of scenario 4's) runs at 4.00x (4.00x–4.00x) scenario 1's req/s, " +
		"with Caddy CPU/req 20µs (20µs–20µs) against scenario 4's 500µs (500µs–500µs); scenario 4's 423s run at 0.75 (0.75–0.75) of the static 423's rate."
	if !strings.Contains(report, want) {
		t.Errorf("no line\n%s\nin:\n%s", want, report)
	}
	for line := range strings.SplitSeq(report, "\n") {
		if strings.Contains(line, "static") && (strings.HasPrefix(line, "|") || strings.HasPrefix(line, "- goal")) {
			t.Errorf("the ceiling is in the table or the goals: %s", line)
		}
	}
	if got, wantRows := strings.Count(report, "\n| "), strings.Count(plain, "\n| "); got != wantRows {
		t.Errorf("%d table rows with the ceiling, %d without", got, wantRows)
	}
}
