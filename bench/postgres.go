package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferrysync/ferry/relay"
)

// Postgres runs Target.Relays `ferry relay` processes (made by
// Target.Command, as for Child) on the PostgreSQL database
// Target.Postgres, each workload in a schema of its own, dropped when it
// ends. Devices reach them through a round-robin TCP balancer that counts
// the bytes: consecutive connections go to consecutive relays, so W2's two
// replicas sync through different relays, W4's clients and subscribers
// are spread over them, and W1's fresh replica pulls from another relay
// than the one the writer pushed to. The relays' /metrics are summed.
const Postgres = External + 1

// relayProcessConfig is the configuration a PostgreSQL relay of the bench gets.
type relayProcessConfig struct {
	Apps           []relay.App `json:"apps"`
	LogLevel       string      `json:"log_level"`
	Postgres       string      `json:"postgres"`
	PostgresSchema string      `json:"postgres_schema"`
}

func startPostgres(ctx context.Context, t Target, dir string) (env *relayEnv, err error) {
	n := max(t.Relays, 1)
	app, tok, err := newApp()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	b := make([]byte, 6)
	rand.Read(b)
	schema := "bench_" + hex.EncodeToString(b)
	cb, _ := json.Marshal(relayProcessConfig{Apps: []relay.App{app}, LogLevel: "warn", Postgres: t.Postgres, PostgresSchema: schema})
	cfgPath := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(cfgPath, cb, 0o600); err != nil {
		return nil, err
	}
	var children []*relayProcess
	var cleanups []func() error
	defer func() {
		if err != nil {
			for _, c := range children {
				c.kill()
			}
			for _, f := range slices.Backward(cleanups) {
				f()
			}
		}
	}()
	cleanups = append(cleanups, func() error { return dropSchema(t.Postgres, schema) })
	// One at a time: the first creates the schema.
	for i := range n {
		c, err := startRelayProcess(ctx, t, cfgPath, filepath.Join(dir, fmt.Sprint("relay-", i+1)))
		if err != nil {
			return nil, err
		}
		children = append(children, c)
	}
	var hosts []string
	for _, c := range children {
		hosts = append(hosts, c.host)
	}
	lb, err := newBalancer(hosts)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() error { lb.close(); return nil })
	sum, err := newMetricsSum(hosts)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, sum.close)
	probe, err := newPGProbe(children, t.Postgres, schema)
	if err != nil {
		return nil, err
	}
	env = &relayEnv{
		mode: Postgres, url: "ws://" + lb.addr() + children[0].path, metricsURL: sum.url,
		apiKey: app.APIKey, token: tok, wire: lb.c, mem: probe,
	}
	env.stop = func() error {
		lb.close()
		var errs []error
		for _, c := range children {
			errs = append(errs, c.stop())
		}
		errs = append(errs, sum.close(), dropSchema(t.Postgres, schema))
		return errors.Join(errs...)
	}
	return env, nil
}

func dropSchema(dsn, schema string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("bench: dropping schema %s: %w", schema, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		return fmt.Errorf("bench: dropping schema %s: %w", schema, err)
	}
	return nil
}

// balancer forwards each connection to the next relay in turn, counting
// the bytes both ways, as a load balancer in front of the relays would.
type balancer struct {
	*proxy
	mu      sync.Mutex
	targets []string
	next    int
}

func newBalancer(targets []string) (*balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &balancer{proxy: &proxy{ln: ln, c: &counter{}, conns: map[net.Conn]struct{}{}}, targets: targets}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

func (b *balancer) pick() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.targets[b.next%len(b.targets)]
	b.next++
	return t
}

func (b *balancer) serve() {
	defer b.wg.Done()
	for {
		in, err := b.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", b.pick())
		if err != nil {
			in.Close()
			continue
		}
		if !b.track(in, out) {
			return
		}
		b.wg.Add(2)
		go b.pipe(in, out)
		go b.pipe(out, in)
	}
}

// metricsSum serves the sum of the relays' /metrics, series by series, so
// the workloads read the relays as one.
type metricsSum struct {
	url   string
	hosts []string
	srv   *http.Server
	done  chan struct{}
}

func newMetricsSum(hosts []string) (*metricsSum, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m := &metricsSum{url: "http://" + ln.Addr().String() + "/metrics", hosts: hosts, done: make(chan struct{})}
	m.srv = &http.Server{Handler: http.HandlerFunc(m.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { defer close(m.done); m.srv.Serve(ln) }()
	return m, nil
}

func (m *metricsSum) serve(w http.ResponseWriter, r *http.Request) {
	total := map[string]float64{}
	for _, h := range m.hosts {
		s, err := scrape(r.Context(), "http://"+h+"/metrics")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		for k, v := range s {
			total[k] += v
		}
	}
	for k, v := range total {
		fmt.Fprintf(w, "%s %s\n", k, strconv.FormatFloat(v, 'g', -1, 64))
	}
}

func (m *metricsSum) close() error {
	err := m.srv.Close()
	<-m.done
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// pgProbe follows the relay processes' memory (the sum of their peak
// RSS), and notes how the CPU time of the workload divided between them,
// the PostgreSQL sessions serving them, and this process (replicas and
// clients): on one machine, that is where more relays would need cores.
type pgProbe struct {
	children []*childProbe
	dsn      string
	schema   string

	mu   sync.Mutex
	cpu0 map[string]float64 // pid -> CPU seconds at reset
}

func newPGProbe(children []*relayProcess, dsn, schema string) (*pgProbe, error) {
	p := &pgProbe{dsn: dsn, schema: schema}
	for _, c := range children {
		cp, err := newChildProbe(c.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		p.children = append(p.children, cp)
	}
	p.reset()
	return p, nil
}

func (p *pgProbe) reset() {
	for _, c := range p.children {
		c.reset()
	}
	cpu := map[string]float64{"self": procCPU("self")}
	for _, c := range p.children {
		cpu[c.pid] = procCPU(c.pid)
	}
	for _, pid := range p.backends() {
		cpu[pid] = procCPU(pid)
	}
	p.mu.Lock()
	p.cpu0 = cpu
	p.mu.Unlock()
}

// backends returns the PIDs of the PostgreSQL sessions of the relays.
func (p *pgProbe) backends() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		return nil
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = $1", "ferry-relay/"+p.schema)
	if err != nil {
		return nil
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var pid int
		if rows.Scan(&pid) == nil {
			out = append(out, strconv.Itoa(pid))
		}
	}
	return out
}

func (p *pgProbe) peak() memStats {
	var st memStats
	for _, c := range p.children {
		s := c.peak()
		st.PeakRSS += s.PeakRSS
		st.Baseline += s.Baseline
	}
	p.mu.Lock()
	cpu0 := p.cpu0
	p.mu.Unlock()
	since := func(pid string) float64 { return max(procCPU(pid)-cpu0[pid], 0) }
	var relays []string
	for i, c := range p.children {
		relays = append(relays, fmt.Sprintf("relay %d %.2f s", i+1, since(c.pid)))
	}
	var pg float64
	for _, pid := range p.backends() {
		pg += since(pid)
	}
	st.Note = fmt.Sprintf("%d relay processes on PostgreSQL: the sum of their VmHWM. CPU since the workload's start: %s; their PostgreSQL sessions %.2f s; the bench process (replicas, clients) %.2f s",
		len(p.children), strings.Join(relays, ", "), pg, since("self"))
	return st
}

func (p *pgProbe) close() {}

// procCPU is a process's user and system CPU time in seconds, from
// /proc/PID/stat by procfs, which finds the fields past the command name
// and knows the clock tick (0 if the process is gone).
func procCPU(pid string) float64 {
	p, err := openProc(pid)
	if err != nil {
		return 0
	}
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return st.CPUTime()
}
