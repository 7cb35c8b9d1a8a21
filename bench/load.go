package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// A lean HTTP/1.1 load generator: every worker owns one keep-alive
// connection and has one request in flight at a time, so a request's
// latency is the time from writing it to reading the end of its answer.
// Requests are built once, up front, and answers are parsed by hand: the
// generator runs on the same cores as Caddy, and the less it costs the more
// of the machine measures Caddy.

// loadSpec says what load to drive.
type loadSpec struct {
	addr        string        // host:port of the server under test
	concurrency int           // workers, one connection each
	requests    int           // stop after this many requests in all...
	duration    time.Duration // ...or after this long, whichever comes first
	paths       int           // distinct paths /docs/0 ... /docs/<paths-1>; 1 means /hot only
	getEvery    int           // out of every 10 requests, this many are GETs; the rest PUTs
}

// sample is one answered request.
type sample struct {
	status  uint16
	latency time.Duration
}

// loadResult is what one load run measured.
type loadResult struct {
	elapsed  time.Duration
	samples  []sample
	errors   int      // requests that got no answer (connection failed or broken)
	firstErr error    // the first of those, for the report
	statuses statuses // answers by status
}

// statuses counts answers by status code.
type statuses map[uint16]int

func (s statuses) String() string {
	codes := make([]int, 0, len(s))
	for c := range s {
		codes = append(codes, int(c))
	}
	slices.Sort(codes)
	var b bytes.Buffer
	for i, c := range codes {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%d", c, s[uint16(c)])
	}
	return b.String()
}

// putBody is what every PUT sends: a small document.
var putBody = bytes.Repeat([]byte("0123456789abcdef"), 8)

// workerRequests is a worker's requests, built once: a PUT and a GET for
// each of its paths.
type workerRequests struct {
	puts, gets [][]byte
}

// requestBytes builds a worker's requests for its share of the paths
// (worker w of c gets paths w, w+c, w+2c, ...), so that, with at least as
// many paths as workers, no two workers ever touch one path, and the lock
// scenarios measure the cost of locking, not conflicts between the load's
// own clients.
func requestBytes(spec loadSpec, worker int) workerRequests {
	var paths []string
	if spec.paths <= 1 {
		paths = []string{"/hot"}
	} else {
		for p := worker % spec.paths; p < spec.paths; p += spec.concurrency {
			paths = append(paths, "/docs/"+strconv.Itoa(p))
		}
	}
	var wr workerRequests
	for _, path := range paths {
		put := fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
			path, spec.addr, len(putBody), putBody)
		get := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, spec.addr)
		wr.puts = append(wr.puts, []byte(put))
		wr.gets = append(wr.gets, []byte(get))
	}
	return wr
}

// pick returns the request for a worker's i-th request, which is the
// load's ticket-th: the method follows the ticket, so that the whole load
// has exactly getEvery GETs in every ten requests.
func (wr workerRequests) pick(spec loadSpec, i int, ticket int64) []byte {
	if ticket%10 < int64(10-spec.getEvery) {
		return wr.puts[i%len(wr.puts)]
	}
	return wr.gets[i%len(wr.gets)]
}

// runLoad drives spec against its server and returns what it measured.
func runLoad(spec loadSpec) loadResult {
	var (
		tickets  atomic.Int64
		deadline = time.Now().Add(spec.duration)
		wg       sync.WaitGroup
		results  = make([]loadResult, spec.concurrency)
	)
	start := time.Now()
	for w := range spec.concurrency {
		wg.Go(func() {
			results[w] = work(spec, w, &tickets, deadline)
		})
	}
	wg.Wait()
	total := loadResult{elapsed: time.Since(start), statuses: statuses{}}
	for _, r := range results {
		total.samples = append(total.samples, r.samples...)
		total.errors += r.errors
		if total.firstErr == nil {
			total.firstErr = r.firstErr
		}
		for c, n := range r.statuses {
			total.statuses[c] += n
		}
	}
	return total
}

// work is one worker: it takes tickets until the requests or the time are
// used up.
func work(spec loadSpec, worker int, tickets *atomic.Int64, deadline time.Time) loadResult {
	res := loadResult{statuses: statuses{}}
	reqs := requestBytes(spec, worker)
	res.samples = make([]sample, 0, min(spec.requests/spec.concurrency+1, 1<<16))
	var c *conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for i := 0; ; i++ {
		ticket := tickets.Add(1)
		if ticket > int64(spec.requests) || !time.Now().Before(deadline) {
			break
		}
		if c == nil {
			var err error
			if c, err = dial(spec.addr); err != nil {
				res.errors++
				if res.firstErr == nil {
					res.firstErr = err
				}
				time.Sleep(10 * time.Millisecond) // do not spin on a dead server
				continue
			}
		}
		t0 := time.Now()
		status, keep, err := c.roundTrip(reqs.pick(spec, i, ticket))
		lat := time.Since(t0)
		if err != nil {
			res.errors++
			if res.firstErr == nil {
				res.firstErr = err
			}
			c.Close()
			c = nil
			continue
		}
		res.samples = append(res.samples, sample{status: status, latency: lat})
		res.statuses[status]++
		if !keep {
			c.Close()
			c = nil
		}
	}
	return res
}

// conn is a client connection that speaks just enough HTTP/1.1 to read
// the answers of a server: a status line, headers, and a body framed by
// Content-Length or chunked encoding.
type conn struct {
	net.Conn
	r *bufio.Reader
}

func dial(addr string) (*conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	return &conn{Conn: c, r: bufio.NewReaderSize(c, 16<<10)}, nil
}

// answerTimeout bounds the wait for one answer, so that a hung server
// fails the run instead of stalling it.
const answerTimeout = 10 * time.Second

// roundTrip writes one request and reads its answer, returning the
// status and whether the connection may be reused.
func (c *conn) roundTrip(req []byte) (status uint16, keepAlive bool, err error) {
	if err := c.SetDeadline(time.Now().Add(answerTimeout)); err != nil {
		return 0, false, fmt.Errorf("setting deadline: %w", err)
	}
	if _, err := c.Write(req); err != nil {
		return 0, false, fmt.Errorf("writing request: %w", err)
	}
	return c.readResponse()
}

var (
	errMalformed = errors.New("malformed HTTP response")
	hContentLen  = []byte("content-length")
	hTransferEnc = []byte("transfer-encoding")
	hConnection  = []byte("connection")
)

func (c *conn) readResponse() (status uint16, keepAlive bool, err error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, false, fmt.Errorf("reading status line: %w", err)
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	length, chunked, keepAlive := -1, false, true
	for {
		h, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, false, fmt.Errorf("reading headers: %w", err)
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, false, fmt.Errorf("%w: header line %q", errMalformed, h)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, hContentLen):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, false, fmt.Errorf("%w: Content-Length %q", errMalformed, value)
			}
		case bytes.EqualFold(name, hTransferEnc):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, hConnection):
			keepAlive = !bytes.EqualFold(value, []byte("close"))
		}
	}
	switch {
	case code == 204 || code == 304 || code/100 == 1:
	case chunked:
		err = c.discardChunks()
	case length >= 0:
		_, err = c.r.Discard(length)
	default:
		// Delimited by the end of the connection.
		_, err = io.Copy(io.Discard, c.r)
		keepAlive = false
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading body of a %d answer: %w", code, err)
	}
	return uint16(code), keepAlive, nil
}

func (c *conn) discardChunks() error {
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		sizeField, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		size, err := strconv.ParseInt(string(bytes.TrimSpace(sizeField)), 16, 64)
		if err != nil || size < 0 {
			return fmt.Errorf("%w: chunk size %q", errMalformed, line)
		}
		if size == 0 {
			// Trailers, then the empty line.
			for {
				t, err := c.r.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(bytes.TrimRight(t, "\r\n")) == 0 {
					return nil
				}
			}
		}
		if _, err := c.r.Discard(int(size) + 2); err != nil { // data and CRLF
			return err
		}
	}
}
