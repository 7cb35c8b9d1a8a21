package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
)

// The lock table alone: the package's BenchmarkLocker (caddy-lock's table
// against golang.org/x/net/webdav's in-memory lock system, sub-benchmarks
// named <workload>/<implementation>) and TestMemoryPerHeldLock. The test
// binary is built once and run once per pair, so that the two
// implementations alternate as the Caddy runs do.

// benchLine is one result line of BenchmarkLocker.
type benchLine struct {
	workload, impl string
	cpu            int
	nsPerOp        float64
	allocs         float64 // -1 when not reported
}

var benchRE = regexp.MustCompile(`^BenchmarkLocker/(\S+?)/(\S+?)(?:-(\d+))?\s+\d+\s+([\d.]+) ns/op(?:.*?\s([\d.]+) allocs/op)?`)

func parseBench(out []byte) []benchLine {
	var lines []benchLine
	for line := range strings.SplitSeq(string(out), "\n") {
		m := benchRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		l := benchLine{workload: m[1], impl: m[2], cpu: 1, allocs: -1}
		if m[3] != "" {
			l.cpu, _ = strconv.Atoi(m[3])
		}
		l.nsPerOp, _ = strconv.ParseFloat(m[4], 64)
		if m[5] != "" {
			l.allocs, _ = strconv.ParseFloat(m[5], 64)
		}
		lines = append(lines, l)
	}
	return lines
}

// buildTestBinary builds the package's test binary into the output
// directory.
func buildTestBinary(cfg config) (string, error) {
	bin, err := filepath.Abs(filepath.Join(cfg.out, "caddylock.test"))
	if err != nil {
		return "", fmt.Errorf("locating %s: %w", cfg.out, err)
	}
	cmd := exec.Command("go", "test", "-c", "-o", bin, ".")
	cmd.Dir = cfg.repo
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the package's tests: %w\n%s", err, out)
	}
	return bin, nil
}

// lockerRuns is the locker benchmark's lines, one slice per pair.
type lockerRuns [][]benchLine

func runLockerBench(cfg config) (lockerRuns, error) {
	var runs lockerRuns
	for pair := 1; pair <= cfg.pairs; pair++ {
		cmd := exec.Command(cfg.testBin, "-test.run", "^$", "-test.bench", "^BenchmarkLocker$",
			"-test.cpu", "1,2", "-test.benchtime", cfg.benchtime)
		cmd.Dir = cfg.repo
		out, err := cmd.CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("locker benchmark, pair %d: %w\n%s", pair, err, out)
		}
		lines := parseBench(out)
		if len(lines) == 0 {
			return nil, fmt.Errorf("locker benchmark, pair %d: no results in its output:\n%s", pair, out)
		}
		runs = append(runs, lines)
		fmt.Printf("pair %d/%d locker: %d results\n", pair, cfg.pairs, len(lines))
	}
	return runs, nil
}

// memResult is what TestMemoryPerHeldLock logged.
type memResult struct {
	perLock float64 // bytes per held lock
	residue int64   // heap above the start after releasing them all
	passed  bool
	output  string
}

var (
	memPerLockRE = regexp.MustCompile(`memory per held lock: ([\d.]+) bytes`)
	memResidueRE = regexp.MustCompile(`after release: ([+-]?\d+) bytes`)
)

// runMemoryTest runs TestMemoryPerHeldLock and reads its figures. The test
// failing (a target missed) is a result, not an error of the run.
func runMemoryTest(cfg config) (memResult, error) {
	var r memResult
	cmd := exec.Command(cfg.testBin, "-test.run", "^TestMemoryPerHeldLock$", "-test.v", "-test.count", "1")
	cmd.Dir = cfg.repo
	out, err := cmd.CombinedOutput()
	r.output = string(out)
	r.passed = err == nil
	m1, m2 := memPerLockRE.FindSubmatch(out), memResidueRE.FindSubmatch(out)
	if m1 == nil || m2 == nil {
		return r, fmt.Errorf("TestMemoryPerHeldLock printed no figures (%v):\n%s", err, out)
	}
	r.perLock, _ = strconv.ParseFloat(string(m1[1]), 64)
	r.residue, _ = strconv.ParseInt(string(m2[1]), 10, 64)
	return r, nil
}

func numCPU() int { return runtime.NumCPU() }

func goVersion(cfg config) string {
	out, err := exec.Command("go", "version").Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "go version ")
}

// caddyVersion asks the built binary; its first word is the version.
func caddyVersion(cfg config) string {
	out, err := exec.Command(cfg.caddy, "version").Output()
	if err != nil {
		return "Caddy (version unknown)"
	}
	f := bytes.Fields(out)
	if len(f) == 0 {
		return "Caddy (version unknown)"
	}
	return "Caddy " + string(f[0])
}
