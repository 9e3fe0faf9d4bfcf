package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// counter counts bytes both ways between devices and a relay.
type counter struct{ n atomic.Int64 }

func (c *counter) load() int64 {
	if c == nil {
		return 0
	}
	return c.n.Load()
}

// countingListener counts every byte its connections read and write.
type countingListener struct {
	net.Listener
	c *counter
}

func (l *countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, c: l.c}, nil
}

type countingConn struct {
	net.Conn
	c *counter
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.c.n.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.c.n.Add(int64(n))
	return n, err
}

// proxy forwards loopback TCP connections to a child relay, counting the
// bytes, since the child's own listener cannot be wrapped.
type proxy struct {
	ln     net.Listener
	target string
	c      *counter
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, c: &counter{}, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		if !p.track(in, out) {
			return
		}
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

func (p *proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// pipe copies one direction; when it ends, both sides are closed.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.c.n.Add(int64(n))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// memStats is a relay's memory over a workload, in bytes.
type memStats struct {
	PeakRSS  int64  // highest resident set size seen
	Baseline int64  // resident set size when the probe started
	PeakHeap int64  // Go heap in use at its highest (in-process only)
	Note     string // what was measured
}

// memProbe follows a relay's memory from reset until peak.
type memProbe interface {
	reset()
	peak() memStats
	close()
}

// selfProbe measures this process (an in-process relay shares it with the
// replicas): the kernel's peak RSS since reset (VmHWM, reset through
// clear_refs) and the Go heap in use, sampled.
type selfProbe struct {
	mu       sync.Mutex
	base     int64
	peakHeap int64
	stopC    chan struct{}
	done     chan struct{}
}

func newSelfProbe() *selfProbe {
	p := &selfProbe{stopC: make(chan struct{}), done: make(chan struct{})}
	p.reset()
	go p.sample()
	return p
}

func heapInUse() int64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int64(s[0].Value.Uint64())
}

func (p *selfProbe) sample() {
	defer close(p.done)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stopC:
			return
		case <-t.C:
			h := heapInUse()
			p.mu.Lock()
			p.peakHeap = max(p.peakHeap, h)
			p.mu.Unlock()
		}
	}
}

func (p *selfProbe) reset() {
	// Writing 5 to clear_refs resets VmHWM to the current RSS (Linux).
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	rss, _ := procStatus("self", "VmRSS")
	p.mu.Lock()
	p.base, p.peakHeap = rss, heapInUse()
	p.mu.Unlock()
}

func (p *selfProbe) peak() memStats {
	hwm, _ := procStatus("self", "VmHWM")
	p.mu.Lock()
	defer p.mu.Unlock()
	return memStats{PeakRSS: hwm, Baseline: p.base, PeakHeap: max(p.peakHeap, heapInUse()),
		Note: "in-process: the whole bench process, replicas and clients included"}
}

func (p *selfProbe) close() { close(p.stopC); <-p.done }

// childProbe reads a child relay's peak RSS (VmHWM) from /proc.
type childProbe struct {
	pid  string
	base int64
}

func newChildProbe(pid int) (*childProbe, error) {
	p := &childProbe{pid: strconv.Itoa(pid)}
	p.reset()
	return p, nil
}

func (p *childProbe) reset() {
	os.WriteFile("/proc/"+p.pid+"/clear_refs", []byte("5"), 0)
	p.base, _ = procStatus(p.pid, "VmRSS")
}

func (p *childProbe) peak() memStats {
	hwm, err := procStatus(p.pid, "VmHWM")
	note := "child relay process: VmHWM"
	if err != nil {
		note = "child relay process: /proc unreadable: " + err.Error()
	}
	return memStats{PeakRSS: hwm, Baseline: p.base, Note: note}
}

func (p *childProbe) close() {}

// procStatus reads a "kB" field of /proc/<pid>/status, in bytes.
func procStatus(pid, field string) (int64, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n << 10, err
	}
	return 0, fmt.Errorf("bench: no %s in /proc/%s/status", field, pid)
}

// scrapeProbe samples an external relay's process_resident_memory_bytes
// from its /metrics every 250 ms.
type scrapeProbe struct {
	url   string
	mu    sync.Mutex
	base  int64
	peakV int64
	err   error
	stopC chan struct{}
	done  chan struct{}
}

func newScrapeProbe(url string) *scrapeProbe {
	p := &scrapeProbe{url: url, stopC: make(chan struct{}), done: make(chan struct{})}
	p.reset()
	go func() {
		defer close(p.done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stopC:
				return
			case <-t.C:
				p.observe()
			}
		}
	}()
	return p
}

func (p *scrapeProbe) observe() int64 {
	m, err := scrape(context.Background(), p.url)
	v := int64(m["process_resident_memory_bytes"])
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.err = err
	}
	p.peakV = max(p.peakV, v)
	return v
}

func (p *scrapeProbe) reset() {
	v := p.observe()
	p.mu.Lock()
	p.base, p.peakV = v, v
	p.mu.Unlock()
}

func (p *scrapeProbe) peak() memStats {
	p.observe()
	p.mu.Lock()
	defer p.mu.Unlock()
	note := "external relay: process_resident_memory_bytes from /metrics, sampled every 250 ms (whole relay)"
	if p.err != nil {
		note += "; scrape error: " + p.err.Error()
	}
	return memStats{PeakRSS: p.peakV, Baseline: p.base, Note: note}
}

func (p *scrapeProbe) close() { close(p.stopC); <-p.done }

// scrape reads a Prometheus text page and returns its series, keyed by
// name and labels as written (name{label="value"}).
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("bench: scrape %s: HTTP %d", url, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name, val := line[:i], line[i+1:]
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// Relay counters read from /metrics.
const (
	mBytesIn     = "ferry_relay_change_received_bytes_total"
	mBytesOut    = "ferry_relay_change_sent_bytes_total"
	mAccepted    = "ferry_relay_changes_accepted_total"
	mSubscribers = "ferry_relay_subscribers"
	mPushSeconds = `ferry_relay_request_seconds_sum{type="push"}`
	mPushes      = `ferry_relay_request_seconds_count{type="push"}`
)
