// Command bench measures what caddy-lock costs: it runs the built Caddy
// (cmd/caddy) in front of a local backend with and without the lock
// handler, alternating the two sides of every comparison (A B A B ...),
// runs the lock table's Go benchmark and memory test, and prints one table.
// bench/run builds what it needs and runs it; see BENCHMARKS.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// distinctPaths is how many paths scenarios 1 to 3 spread their requests
// over.
const distinctPaths = 10000

// config is what a run is asked to do.
type config struct {
	caddy       string        // the built cmd/caddy
	repo        string        // the module's root, for the Go benchmark and test
	out         string        // where results and logs go
	pairs       int           // A/B pairs per scenario
	requests    int           // requests per measurement
	duration    time.Duration // time bound of a measurement
	warmup      int           // requests to each Caddy before its first measurement, not counted
	concurrency int           // connections
	benchtime   string        // -test.benchtime of the locker benchmark
	testBin     string        // the package's test binary, built by the run
	profile     time.Duration // when set, a CPU profile of Caddy over this long in every measurement
}

func main() {
	var cfg config
	smoke := flag.Bool("smoke", false, "a quick pass that checks that everything runs: 1 pair, 300 requests per measurement")
	flag.StringVar(&cfg.caddy, "caddy", "", "the Caddy binary with caddy-lock (go build ./cmd/caddy)")
	flag.StringVar(&cfg.repo, "repo", ".", "the caddy-lock module root")
	flag.StringVar(&cfg.out, "out", "bench/out", "directory for results and Caddy logs")
	flag.IntVar(&cfg.pairs, "pairs", 10, "A/B pairs per scenario")
	flag.IntVar(&cfg.requests, "requests", 20000, "requests per measurement")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "time bound of one measurement")
	flag.IntVar(&cfg.warmup, "warmup", 2000, "requests sent to each Caddy before its first measurement, not counted")
	flag.IntVar(&cfg.concurrency, "c", 16, "concurrent keep-alive connections")
	flag.StringVar(&cfg.benchtime, "benchtime", "500ms", "-benchtime of the locker benchmark")
	flag.DurationVar(&cfg.profile, "profile", 0, "take a CPU profile of Caddy over this long (at least 1s) in every measurement, written to the output directory as <run>-<pair>.pprof")
	flag.Parse()
	if *smoke {
		cfg.pairs, cfg.requests, cfg.warmup, cfg.benchtime = 1, 300, 50, "2000x"
	}
	stopOnSignal()
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	if cfg.caddy == "" {
		return errors.New("-caddy is required: the path of a built cmd/caddy")
	}
	if cfg.pairs < 1 || cfg.requests < 1 || cfg.concurrency < 1 || cfg.warmup < 0 {
		return errors.New("-pairs, -requests and -c must be positive, -warmup not negative")
	}
	if cfg.concurrency > distinctPaths {
		return fmt.Errorf("-c %d: at most %d connections, one path each at least", cfg.concurrency, distinctPaths)
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", cfg.out, err)
	}
	var err error
	if cfg.testBin, err = buildTestBinary(cfg); err != nil {
		return err
	}
	machine := describeMachine(cfg)
	fmt.Println(machine)

	fast, err := startBackend(0)
	if err != nil {
		return err
	}
	defer fast.close()
	slow, err := startBackend(50 * time.Millisecond)
	if err != nil {
		return err
	}
	defer slow.close()

	runs := []*runDef{
		{name: "base-put", backend: fast, paths: distinctPaths},
		{name: "lock-put", backend: fast, paths: distinctPaths, site: "\tlock\n"},
		{name: "base-mix", backend: fast, paths: distinctPaths, getEvery: 9},
		{name: "lock-mix", backend: fast, paths: distinctPaths, getEvery: 9, site: "\tlock {\n\t\tshared GET HEAD\n\t}\n"},
		{name: "hot-423", backend: slow, paths: 1, site: "\tlock\n", refusals: true},
		// Scenario 4's ceiling: the same load answered by Caddy alone.
		{name: "static-423", backend: slow, paths: 1, site: staticRefusalSite, refusals: true, static: true},
	}
	// Scenario 2 with the lock table in Redis, measured right after
	// scenario 2 in every round.
	redis, err := startRedis(cfg.out)
	switch {
	case errors.Is(err, errNoRedis):
		fmt.Printf("lock-redis: skipped: %v\n", err)
	case err != nil:
		return fmt.Errorf("lock-redis: %w", err)
	default:
		defer redis.stop()
		fmt.Printf("lock-redis: redis-server on %s (pid %d)\n", redis.addr, redis.cmd.Process.Pid)
		rd := &runDef{name: "lock-redis", backend: fast, paths: distinctPaths, site: redisSite(redis.addr), redis: redis}
		runs = slices.Insert(runs, 2, rd)
	}
	for _, rd := range runs {
		if err := start(cfg, rd); err != nil {
			return fmt.Errorf("%s: %w", rd.name, err)
		}
		defer rd.proc.stop()
	}
	for pair := 1; pair <= cfg.pairs; pair++ {
		for _, rd := range runs {
			m, err := measure(cfg, rd, pair)
			if err != nil {
				return fmt.Errorf("pair %d, %s: %w", pair, rd.name, err)
			}
			rd.results = append(rd.results, m)
			extra := ""
			if rd.redis != nil {
				extra = fmt.Sprintf("  redis-server %s CPU/req", fmtDur(m.redisPer))
			}
			fmt.Printf("pair %d/%d %-10s %s%s\n", pair, cfg.pairs, rd.name, m, extra)
		}
	}

	lk, err := runLockerBench(cfg)
	if err != nil {
		return err
	}
	own, err := runOwnBench(cfg)
	if err != nil {
		return err
	}
	mem, err := runMemoryTest(cfg)
	if err != nil {
		return err
	}

	report := buildReport(machine, cfg, runs, lk, own, mem)
	fmt.Print("\n" + report)
	path := filepath.Join(cfg.out, "results.md")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	fmt.Printf("\n(written to %s; Caddy logs in %s)\n", path, cfg.out)
	return nil
}

// runDef is one side of a comparison: a Caddy config, a backend and a
// load, measured once per pair.
type runDef struct {
	name     string
	site     string // handlers before reverse_proxy, Caddyfile syntax
	backend  *backend
	paths    int  // distinct paths (1: one hot path)
	getEvery int  // GETs out of every 10 requests
	refusals bool // the interesting answers are 423s (scenario 4)
	static   bool // every answer is a 423 Caddy writes itself (scenario 4's ceiling)
	proc     *proc
	redis    *proc  // the redis-server its lock table is in, nil for none
	admin    string // Caddy's admin address, "off" unless profiling
	results  []measurement
}

// measurement is one run of one side.
type measurement struct {
	rate     float64 // answered requests per second (423s only, for refusals)
	p50, p99 time.Duration
	peakRSS  float64       // bytes, Caddy's VmHWM so far
	cpuPer   time.Duration // Caddy's CPU time per answered request
	redisPer time.Duration // the redis-server's CPU time per answered request, 0 without Redis
	redisCPU time.Duration // the redis-server's CPU time over the measurement, 0 without Redis
	writes   int           // writes that reached the backend: with lock, the locked writes
	answered int
	statuses statuses
}

func (m measurement) String() string {
	return fmt.Sprintf("%8s/s  p50 %-8s p99 %-8s caddy %-7s CPU/req  peak RSS %-9s [%s]",
		fmtRate(m.rate), fmtDur(m.p50), fmtDur(m.p99), fmtDur(m.cpuPer), fmtBytes(m.peakRSS), m.statuses)
}

// start runs rd's Caddy, which serves every measurement of rd, and warms
// it up. Every side keeps its own Caddy for the whole run, so that the
// sides of a pair can be measured one right after the other.
func start(cfg config, rd *runDef) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	rd.admin = "off"
	if cfg.profile > 0 {
		adminPort, err := freePort()
		if err != nil {
			return err
		}
		rd.admin = fmt.Sprintf("127.0.0.1:%d", adminPort)
	}
	conf, err := caddyfile(cfg.out, rd.name, port, rd.admin, rd.backend.addr, rd.site)
	if err != nil {
		return err
	}
	if rd.proc, err = startCaddy(cfg.caddy, conf, port, filepath.Join(cfg.out, rd.name+".log")); err != nil {
		return err
	}
	if cfg.warmup > 0 {
		spec := rd.load(cfg)
		spec.requests = cfg.warmup
		if w := runLoad(spec); w.errors > 0 {
			return fmt.Errorf("warm-up: %d requests failed, the first: %w", w.errors, w.firstErr)
		}
	}
	return nil
}

// load is the load of one measurement of rd.
func (rd *runDef) load(cfg config) loadSpec {
	return loadSpec{addr: rd.proc.addr, concurrency: cfg.concurrency, requests: cfg.requests, duration: cfg.duration,
		paths: rd.paths, getEvery: rd.getEvery}
}

// measure drives one measurement's load through rd's Caddy, checking
// every answer: a proxied request must get 200 and reach the backend, a
// refused one 423 without reaching it.
func measure(cfg config, rd *runDef, pair int) (measurement, error) {
	var m measurement
	p := rd.proc
	rd.backend.reset()
	before, err := p.usage()
	if err != nil {
		return m, err
	}
	var redisBefore usage
	if rd.redis != nil {
		if redisBefore, err = rd.redis.usage(); err != nil {
			return m, err
		}
	}
	profiled := make(chan error, 1)
	if cfg.profile > 0 {
		prefix := filepath.Join(cfg.out, fmt.Sprintf("%s-%d", rd.name, pair))
		if err := snapshotAllocs(rd.admin, prefix+".allocs-before.pprof"); err != nil {
			return m, err
		}
		go func() { profiled <- profileCPU(rd.admin, cfg.profile, prefix+".pprof") }()
	} else {
		profiled <- nil
	}
	res := runLoad(rd.load(cfg))
	if err := <-profiled; err != nil {
		return m, err
	}
	if cfg.profile > 0 {
		prefix := filepath.Join(cfg.out, fmt.Sprintf("%s-%d", rd.name, pair))
		if err := snapshotAllocs(rd.admin, prefix+".allocs-after.pprof"); err != nil {
			return m, err
		}
	}
	after, err := p.usage()
	if err != nil {
		return m, err
	}
	var redisAfter usage
	if rd.redis != nil {
		if redisAfter, err = rd.redis.usage(); err != nil {
			return m, err
		}
	}
	if res.errors > 0 {
		return m, fmt.Errorf("%d requests failed, the first: %w (Caddy log %s)", res.errors, res.firstErr, p.log)
	}
	if err := checkAnswers(rd, res); err != nil {
		return m, err
	}

	m.statuses = res.statuses
	m.answered = len(res.samples)
	m.peakRSS = float64(after.peakRSS)
	m.cpuPer = (after.cpu - before.cpu) / time.Duration(max(1, m.answered))
	m.redisCPU = redisAfter.cpu - redisBefore.cpu
	m.redisPer = m.redisCPU / time.Duration(max(1, m.answered))
	m.writes = int(rd.backend.writes.Load())
	var lat []time.Duration
	for _, s := range res.samples {
		if !rd.refusals || s.status == 423 {
			lat = append(lat, s.latency)
		}
	}
	slices.Sort(lat)
	m.rate = float64(len(lat)) / res.elapsed.Seconds()
	m.p50, m.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return m, nil
}

// checkAnswers verifies a run's answers against what reached the backend.
func checkAnswers(rd *runDef, res loadResult) error {
	ok, locked := res.statuses[200], res.statuses[423]
	if other := len(res.samples) - ok - locked; other > 0 || (!rd.refusals && locked > 0) {
		return fmt.Errorf("unexpected answers: %s", res.statuses)
	}
	reached := int(rd.backend.writes.Load() + rd.backend.reads.Load())
	if reached != ok {
		return fmt.Errorf("%d requests were answered 200 but %d reached the backend", ok, reached)
	}
	if rd.static && (locked == 0 || ok > 0) {
		return fmt.Errorf("writes to a static 423 got %s; want only 423", res.statuses)
	}
	if rd.refusals && !rd.static && (locked == 0 || ok == 0) {
		return fmt.Errorf("writes to one path under a 50ms backend got %s; want some 200 and many 423", res.statuses)
	}
	return nil
}

// describeMachine names what the figures were measured on.
func describeMachine(cfg config) string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("machine: %d cores (%s), load average %s at the start; %s; %s", numCPU(), cpu, loadAverage(), goVersion(cfg), caddyVersion(cfg))
}

// loadAverage is the 1, 5 and 15 minute load averages: how busy the
// machine was with other work.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
