package main

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// The handler's own cost: the package's BenchmarkHandlerOwn, whose
// <method>/lock and <method>/route sub-benchmarks differ only by the lock
// handler (see handlercost_bench_test.go). The test binary runs once per
// pair, at -cpu 1, after the Caddy runs.

// ownLine is one result line of BenchmarkHandlerOwn.
type ownLine struct {
	method, through string // "write" or "read"; "lock" or "route"
	nsPerOp, allocs float64
}

var ownRE = regexp.MustCompile(`^BenchmarkHandlerOwn/(\w+)/(\w+)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op\s+[\d.]+ B/op\s+(\d+) allocs/op`)

func parseOwn(out []byte) []ownLine {
	var lines []ownLine
	for line := range strings.SplitSeq(string(out), "\n") {
		m := ownRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		l := ownLine{method: m[1], through: m[2]}
		l.nsPerOp, _ = strconv.ParseFloat(m[3], 64)
		l.allocs, _ = strconv.ParseFloat(m[4], 64)
		lines = append(lines, l)
	}
	return lines
}

// ownPair is BenchmarkHandlerOwn's lines of one pair.
type ownPair []ownLine

// ownRuns is BenchmarkHandlerOwn's results, one per pair.
type ownRuns []ownPair

// diff is, for one pair, what method costs through the lock handler over
// the route without it: ns/op and allocs/op; ok is false when either
// side is missing.
func (run ownPair) diff(method string) (ns, allocs float64, ok bool) {
	var lock, route *ownLine
	for i := range run {
		l := &run[i]
		if l.method != method {
			continue
		}
		switch l.through {
		case "lock":
			lock = l
		case "route":
			route = l
		}
	}
	if lock == nil || route == nil {
		return 0, 0, false
	}
	return lock.nsPerOp - route.nsPerOp, lock.allocs - route.allocs, true
}

// goalFigures is goal 2's figures over the pairs: allocations per locked
// write, the handler's time per locked write over a proxied write's Caddy
// CPU in scenario 1 (base, pair by pair), and allocations per read.
func (o ownRuns) goalFigures(base *runDef) (writeAllocs, writeShare, readAllocs spread) {
	var wa, ws, ra []float64
	for i, run := range o {
		if ns, allocs, ok := run.diff("write"); ok {
			wa = append(wa, allocs)
			if base != nil && i < len(base.results) && base.results[i].cpuPer > 0 {
				ws = append(ws, ns/float64(base.results[i].cpuPer))
			}
		}
		if _, allocs, ok := run.diff("read"); ok {
			ra = append(ra, allocs)
		}
	}
	return spreadOf(wa), spreadOf(ws), spreadOf(ra)
}

// runOwnBench runs BenchmarkHandlerOwn once per pair.
func runOwnBench(cfg config) (ownRuns, error) {
	var runs ownRuns
	for pair := 1; pair <= cfg.pairs; pair++ {
		cmd := exec.Command(cfg.testBin, "-test.run", "^$", "-test.bench", "^BenchmarkHandlerOwn$",
			"-test.cpu", "1", "-test.benchmem", "-test.benchtime", cfg.benchtime)
		cmd.Dir = cfg.repo
		out, err := cmd.CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("handler benchmark, pair %d: %w\n%s", pair, err, out)
		}
		lines := parseOwn(out)
		if len(lines) != 4 {
			return nil, fmt.Errorf("handler benchmark, pair %d: %d results in its output, want 4:\n%s", pair, len(lines), out)
		}
		runs = append(runs, lines)
		w, wa, _ := ownPair(lines).diff("write")
		r, ra, _ := ownPair(lines).diff("read")
		fmt.Printf("pair %d/%d handler: locked write %+.0f ns %+.0f allocs, read %+.0f ns %+.0f allocs over the route alone\n",
			pair, cfg.pairs, w, wa, r, ra)
	}
	return runs, nil
}
