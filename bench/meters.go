package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/procfs"

	"github.com/ferrysync/ferry/transport"
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
	PeakRSS  int64 // highest resident set size seen
	Baseline int64 // resident set size when the probe started
	PeakHeap int64 // Go heap in use at its highest (in-process only)
	// In-process only, sampled: the highest anonymous resident memory (Go's
	// heap, the C allocator's, stacks), and the highest file-backed
	// resident memory (the binary, and the files Badger maps: its tables,
	// whole, and its logs as far as written), which the kernel may drop
	// and read back at will.
	PeakAnon, PeakFile int64
	Note               string // what was measured
	// CPU is the relay's user and system CPU time since the probe's reset
	// (child relays only: on a shared machine, a measure of its work that
	// other processes' load does not stretch).
	CPU time.Duration
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
	peakAnon int64
	peakFile int64
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
			st, _ := procStatus("self")
			p.mu.Lock()
			p.peakHeap = max(p.peakHeap, h)
			p.peakAnon = max(p.peakAnon, int64(st.RssAnon))
			p.peakFile = max(p.peakFile, int64(st.RssFile))
			p.mu.Unlock()
		}
	}
}

func (p *selfProbe) reset() {
	// Writing 5 to clear_refs resets VmHWM to the current RSS (Linux).
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	st, _ := procStatus("self")
	p.mu.Lock()
	p.base, p.peakHeap = int64(st.VmRSS), heapInUse()
	p.peakAnon, p.peakFile = int64(st.RssAnon), int64(st.RssFile)
	p.mu.Unlock()
}

func (p *selfProbe) peak() memStats {
	st, _ := procStatus("self")
	p.mu.Lock()
	defer p.mu.Unlock()
	return memStats{PeakRSS: int64(st.VmHWM), Baseline: p.base, PeakHeap: max(p.peakHeap, heapInUse()),
		PeakAnon: max(p.peakAnon, int64(st.RssAnon)), PeakFile: max(p.peakFile, int64(st.RssFile)),
		Note: "in-process: the whole bench process, replicas and clients included"}
}

func (p *selfProbe) close() { close(p.stopC); <-p.done }

// childProbe reads a child relay's peak RSS (VmHWM) and CPU time from
// /proc.
type childProbe struct {
	pid  string
	base int64
	cpu0 float64
}

func newChildProbe(pid int) (*childProbe, error) {
	p := &childProbe{pid: strconv.Itoa(pid)}
	p.reset()
	return p, nil
}

func (p *childProbe) reset() {
	os.WriteFile("/proc/"+p.pid+"/clear_refs", []byte("5"), 0)
	st, _ := procStatus(p.pid)
	p.base = int64(st.VmRSS)
	p.cpu0 = procCPU(p.pid)
}

func (p *childProbe) peak() memStats {
	st, err := procStatus(p.pid)
	note := "child relay process: VmHWM"
	if err != nil {
		note = "child relay process: /proc unreadable: " + err.Error()
	}
	cpu := time.Duration((procCPU(p.pid) - p.cpu0) * float64(time.Second))
	return memStats{PeakRSS: int64(st.VmHWM), Baseline: p.base, Note: note, CPU: max(cpu, 0)}
}

func (p *childProbe) close() {}

// procStatus reads a process's /proc/<pid>/status ("self" for this one)
// with procfs, whose parser knows the file's fields and units.
func procStatus(pid string) (procfs.ProcStatus, error) {
	p, err := openProc(pid)
	if err != nil {
		return procfs.ProcStatus{}, fmt.Errorf("bench: /proc/%s: %w", pid, err)
	}
	st, err := p.NewStatus()
	if err != nil {
		return procfs.ProcStatus{}, fmt.Errorf("bench: /proc/%s/status: %w", pid, err)
	}
	return st, nil
}

// openProc opens /proc/<pid> with procfs; pid "self" is this process.
func openProc(pid string) (procfs.Proc, error) {
	if pid == "self" {
		return procfs.Self()
	}
	n, err := strconv.Atoi(pid)
	if err != nil {
		return procfs.Proc{}, err
	}
	return procfs.NewProc(n)
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

// scrape reads a Prometheus text page and returns its series (see
// flatten).
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	// Ask for the text format, the one every exporter serves.
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("bench: scrape %s: HTTP %d", url, resp.StatusCode)
	}
	out, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("bench: scrape %s: %w", url, err)
	}
	return out, nil
}

// parseMetrics parses the Prometheus text format with expfmt (escaped
// label values, timestamps, +Inf and NaN, histograms split over lines) and
// flattens it: each series keyed by its name and its labels sorted by
// name, as written in the format (name{a="x",b="y"}). A counter, gauge or
// untyped series is its value; a histogram or summary gives its name_sum
// and name_count series (buckets and quantiles are left out).
func parseMetrics(r io.Reader) (map[string]float64, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			labels := seriesLabels(m.GetLabel())
			switch {
			case m.Histogram != nil:
				out[name+"_sum"+labels] = m.GetHistogram().GetSampleSum()
				out[name+"_count"+labels] = float64(m.GetHistogram().GetSampleCount())
			case m.Summary != nil:
				out[name+"_sum"+labels] = m.GetSummary().GetSampleSum()
				out[name+"_count"+labels] = float64(m.GetSummary().GetSampleCount())
			case m.Counter != nil:
				out[name+labels] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[name+labels] = m.GetGauge().GetValue()
			case m.Untyped != nil:
				out[name+labels] = m.GetUntyped().GetValue()
			}
		}
	}
	return out, nil
}

// labelEscaper escapes a label value as the text format writes it.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// seriesLabels writes labels as {a="x",b="y"}, sorted by name; "" for none.
func seriesLabels(ls []*dto.LabelPair) string {
	if len(ls) == 0 {
		return ""
	}
	ls = slices.SortedFunc(slices.Values(ls), func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
	var b strings.Builder
	b.WriteByte('{')
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=\"%s\"", l.GetName(), labelEscaper.Replace(l.GetValue()))
	}
	b.WriteByte('}')
	return b.String()
}

// Relay counters read from /metrics.
const (
	mBytesIn     = "ferry_relay_change_received_bytes_total"
	mBytesOut    = "ferry_relay_change_sent_bytes_total"
	mAccepted    = "ferry_relay_changes_accepted_total"
	mGroups      = "ferry_relay_group_commits_total"
	mSubscribers = "ferry_relay_subscribers"
	mCompactions = "ferry_relay_compactions_total"
	mPushSeconds = `ferry_relay_request_seconds_sum{type="push"}`
	mPushes      = `ferry_relay_request_seconds_count{type="push"}`
)

// dialCounted connects a raw transport client to the relay. To a child
// relay it connects directly and counts the bytes on its own connection,
// into the counter the proxy counts into, instead of going through the
// proxy: the proxy runs in this process, on the cores the relay is
// measured on, and copies every message twice more (a read and a write
// each way, and the goroutine wakes between them), which no device of a
// real relay pays. The bytes counted are the same ones: the proxy
// forwards them unchanged. Elsewhere it dials e.url.
func (e *relayEnv) dialCounted(ctx context.Context) (*transport.Conn, error) {
	if e.direct == "" {
		return transport.Dial(ctx, e.url, nil)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, c: e.wire}, nil
	}
	e.counted = true
	hc := &http.Client{Transport: &http.Transport{DialContext: dial}}
	return transport.Dial(ctx, e.direct, &transport.Options{Dial: &websocket.DialOptions{HTTPClient: hc}})
}
