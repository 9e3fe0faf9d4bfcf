package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrysync/ferry/transport"
)

// w4Quiet bounds the pushes of W4's quiet fan-out phase.
const w4Quiet = 200

// W4 is relay ingest: Clients raw transport clients, each with its own
// Automerge actor and records, push pre-made creation changes (Batch
// records per push, each push awaiting its durable ack before the next)
// into one collection, Records changes in all, while Subscribers live
// subscribers of the collection receive them. It reports accepted
// changes/s, and fan-out latency (a push's ack until every subscriber has
// the record) under that load and in a quiet phase of single pushes.
func W4(ctx context.Context, cfg Config) (res *Result, err error) {
	cfg, res, cleanup, err := prepare(ctx, cfg, "W4")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	start := time.Now()
	in, err := ingest(ctx, cfg, cfg.Records, "W4")
	if err != nil {
		return nil, err
	}
	res.add(Metric{Name: "clients", Value: float64(cfg.Clients), Unit: "count"})
	res.add(Metric{Name: "subscribers", Value: float64(cfg.Subscribers), Unit: "count"})
	res.add(Metric{Name: "records_per_push", Value: float64(cfg.Batch), Unit: "count"})
	res.add(Metric{Name: "pushed", Value: float64(in.n), Unit: "changes"})
	res.add(Metric{Name: "accepted", Value: in.accepted, Unit: "changes", Note: "relay /metrics " + mAccepted})
	res.time("ingest", in.elapsed, in.n, "changes/s")
	res.phaseBytes(in.env, "ingest", in.before, in.after, in.n*(1+cfg.Subscribers), in.n, mBytesIn)
	res.latency("fanout_load_p50", percentile(in.fanLoad, 50))
	res.latency("fanout_load_p99", percentile(in.fanLoad, 99))
	if len(in.fanQuiet) > 0 {
		res.latency("fanout_p50", percentile(in.fanQuiet, 50))
		res.latency("fanout_p99", percentile(in.fanQuiet, 99))
		res.latency("push_to_all_p50", percentile(in.sendQuiet, 50))
	}
	res.memory("", in.mem, 0)
	res.Notes = append(res.Notes,
		fmt.Sprintf("ingest: %d clients push %d changes, %d per push, each awaiting its durable ack; %d subscribers receive them meanwhile", cfg.Clients, in.n, cfg.Batch, cfg.Subscribers),
		"fanout_load: from a push's ack until the last subscriber has the record, during ingest (0 where the live message beat the ack)",
		fmt.Sprintf("fanout: the same, for %d single pushes one at a time after ingest; push_to_all: from sending that push", len(in.fanQuiet)),
		"ingest_wire includes the subscribers' live traffic; its ratio is to the raw bytes of every change once pushed and once per subscriber")
	res.Elapsed = time.Since(start)
	return res, nil
}

// ingestRun is what one ingest measured.
type ingestRun struct {
	n                   int
	elapsed             time.Duration
	accepted            float64
	fanLoad             []time.Duration // sorted
	fanQuiet, sendQuiet []time.Duration // sorted
	before, after       snapshot
	mem                 memStats
	env                 *relayEnv
}

func recordID(i int) string { return fmt.Sprintf("r%08d", i) }

// subscriber records when each record reaches one live subscriber.
type subscriber struct {
	c    *transport.Client
	recv []int64 // by record index: ns since base, 0 until received
	n    atomic.Int64
}

// ingest runs W4's procedure with n records, in dir/label.
func ingest(ctx context.Context, cfg Config, n int, label string) (in *ingestRun, err error) {
	dir := filepath.Join(cfg.Dir, fmt.Sprintf("%s-%d", label, n))
	env, err := startRelay(ctx, cfg.Relay, dir)
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, env.close)
	in = &ingestRun{n: n, env: env}
	quiet := min(cfg.Updates, w4Quiet)
	w := &w4Run{ctx: ctx, cfg: cfg, env: env, label: label, coll: collName("w4"), pr: newProgress(cfg.Progress), n: n, total: n + quiet}
	defer w.close()
	if err := w.makeChanges(); err != nil {
		return nil, err
	}
	if err := w.connect(); err != nil {
		return nil, err
	}
	env.mem.reset()
	if in.before, err = env.snapshot(ctx); err != nil {
		return nil, err
	}
	if in.elapsed, err = w.pushAll(); err != nil {
		return nil, err
	}
	if in.after, err = env.snapshot(ctx); err != nil {
		return nil, err
	}
	in.accepted = in.after.since(in.before, mAccepted)
	w.pr.report(true, "%s: %d changes acknowledged in %s", label, n, in.elapsed.Round(time.Millisecond))
	if err := waitAll(ctx, w.subs, w.changed, int64(n)); err != nil {
		return nil, err
	}
	for i := range n {
		in.fanLoad = append(in.fanLoad, time.Duration(max(lastRecv(w.subs, i)-w.ack[i], 0)))
	}
	in.fanLoad = sortedDurations(in.fanLoad)
	if in.fanQuiet, in.sendQuiet, err = w.quietFanout(); err != nil {
		return nil, err
	}
	in.mem = env.mem.peak()
	return in, nil
}

// w4Run is one ingest: its pre-made changes, its clients and what they
// saw, as times since base.
type w4Run struct {
	ctx         context.Context
	cfg         Config
	env         *relayEnv
	label, coll string
	pr          *progress
	n, total    int // records ingested; and with the quiet phase's

	chs     []created // by record index
	bounds  []int     // pusher k owns records [bounds[k], bounds[k+1])
	base    time.Time
	clients []*transport.Client // all of them, closed by close
	subWG   sync.WaitGroup
	subs    []*subscriber
	pushers []*transport.Client
	changed chan struct{} // a subscriber received something
	ack     []int64       // by record index: ns since base of its ack
}

// makeChanges makes every change before the clock starts: pusher k's
// records, then the quiet phase's.
func (w *w4Run) makeChanges() error {
	cfg := w.cfg
	w.pr.report(true, "%s: making %d changes", w.label, w.total)
	w.chs = make([]created, 0, w.total)
	w.bounds = make([]int, cfg.Clients+1)
	for k := range cfg.Clients {
		cnt := w.n/cfg.Clients + btoi(k < w.n%cfg.Clients)
		w.bounds[k+1] = w.bounds[k] + cnt
		c, _, err := creationChanges(actorID(cfg.Seed, uint64(100+k)), products(cfg.Seed, uint64(100+k), cnt), time.Now())
		if err != nil {
			return err
		}
		w.chs = append(w.chs, c...)
	}
	qc, _, err := creationChanges(actorID(cfg.Seed, 99), products(cfg.Seed, 99, w.total-w.n), time.Now())
	if err != nil {
		return err
	}
	w.chs = append(w.chs, qc...)
	return nil
}

// dial connects one client and says hello.
func (w *w4Run) dial(name string, buf int) (*transport.Client, error) {
	dctx, cancel := context.WithTimeout(w.ctx, time.Minute)
	defer cancel()
	conn, err := transport.Dial(dctx, w.env.url, nil)
	if err != nil {
		return nil, err
	}
	c := transport.NewClient(conn, &transport.ClientOptions{LiveBuffer: buf})
	hello := &transport.Hello{APIKey: w.env.apiKey, Token: w.env.token, ReplicaID: name, Versions: transport.SupportedVersions()}
	if err := c.Call(dctx, hello, &transport.Welcome{}); err != nil {
		c.Close()
		return nil, err
	}
	w.clients = append(w.clients, c)
	return c, nil
}

// connect subscribes the subscribers, from the start of the (empty)
// collection, and connects the pushers.
func (w *w4Run) connect() error {
	w.base = time.Now()
	w.changed = make(chan struct{}, 1)
	w.subs = make([]*subscriber, w.cfg.Subscribers)
	for s := range w.subs {
		c, err := w.dial(fmt.Sprintf("%s-sub-%d", w.label, s), 4096)
		if err != nil {
			return fmt.Errorf("subscriber %d: %w", s, err)
		}
		if err := c.Call(w.ctx, &transport.Subscribe{Collection: w.coll}, &transport.OK{}); err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
		sub := &subscriber{c: c, recv: make([]int64, w.total)}
		w.subs[s] = sub
		w.subWG.Go(func() { w.receive(sub) })
	}
	w.pushers = make([]*transport.Client, w.cfg.Clients)
	for k := range w.pushers {
		c, err := w.dial(fmt.Sprintf("%s-pusher-%d", w.label, k), 0)
		if err != nil {
			return fmt.Errorf("pusher %d: %w", k, err)
		}
		w.pushers[k] = c
	}
	return nil
}

// receive notes when each record reaches sub, until its connection ends.
func (w *w4Run) receive(sub *subscriber) {
	for lv := range sub.c.Live() {
		now := int64(time.Since(w.base))
		for _, rc := range lv.Records {
			i, err := strconv.Atoi(rc.Record[1:])
			if err != nil || i < 0 || i >= w.total || sub.recv[i] != 0 {
				continue
			}
			sub.recv[i] = max(now, 1)
			sub.n.Add(1)
		}
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
}

func (w *w4Run) close() {
	for _, c := range w.clients {
		c.Close()
	}
	w.subWG.Wait()
}

// push sends records [from, to) through c and awaits the ack.
func (w *w4Run) push(c *transport.Client, from, to int) error {
	req := &transport.Push{Collection: w.coll}
	for i := from; i < to; i++ {
		req.Records = append(req.Records, transport.RecordChanges{Record: recordID(i), Data: w.chs[i].data, Heads: w.chs[i].heads.Slices()})
	}
	var ack transport.Ack
	if err := c.Call(w.ctx, req, &ack); err != nil {
		return fmt.Errorf("push: %w", err)
	}
	if len(ack.Records) != to-from {
		return checkf("ack of %d records for a push of %d", len(ack.Records), to-from)
	}
	return nil
}

// pushAll is the ingest itself: every pusher pushes its records, Batch per
// push, each awaiting its ack. It returns how long that took.
func (w *w4Run) pushAll() (time.Duration, error) {
	w.ack = make([]int64, w.total)
	var acked atomic.Int64
	errs := make(chan error, len(w.pushers))
	var wg sync.WaitGroup
	t0 := time.Now()
	for k, c := range w.pushers {
		wg.Go(func() {
			for i := w.bounds[k]; i < w.bounds[k+1]; i += w.cfg.Batch {
				to := min(i+w.cfg.Batch, w.bounds[k+1])
				if err := w.push(c, i, to); err != nil {
					errs <- err
					return
				}
				now := int64(time.Since(w.base))
				for j := i; j < to; j++ {
					w.ack[j] = now
				}
				acked.Add(int64(to - i))
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-tick.C:
			w.pr.report(false, "%s: %d/%d changes acknowledged", w.label, acked.Load(), w.n)
		}
	}
	elapsed := time.Since(t0)
	close(errs)
	return elapsed, <-errs
}

// quietFanout pushes the quiet phase's records one at a time, each once
// every subscriber has the last: fan-out latency without load.
func (w *w4Run) quietFanout() (fan, send []time.Duration, err error) {
	for i := w.n; i < w.total; i++ {
		sent := time.Since(w.base)
		if err := w.push(w.pushers[0], i, i+1); err != nil {
			return nil, nil, err
		}
		acked := time.Since(w.base)
		if err := waitAll(w.ctx, w.subs, w.changed, int64(i+1)); err != nil {
			return nil, nil, err
		}
		last := time.Duration(lastRecv(w.subs, i))
		fan = append(fan, max(last-acked, 0))
		send = append(send, last-sent)
	}
	return sortedDurations(fan), sortedDurations(send), nil
}

// waitAll waits until every subscriber has received n records.
func waitAll(ctx context.Context, subs []*subscriber, changed <-chan struct{}, n int64) error {
	deadline := time.NewTimer(2 * time.Minute)
	defer deadline.Stop()
	for {
		all := true
		for _, s := range subs {
			if s.n.Load() < n {
				all = false
				break
			}
		}
		if all {
			return nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			for k, s := range subs {
				if s.n.Load() < n {
					return checkf("subscriber %d has %d of %d records after 2 minutes (connection: %v)", k, s.n.Load(), n, s.c.Err())
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// lastRecv is when the last subscriber received record i (ns since base).
func lastRecv(subs []*subscriber, i int) int64 {
	var last int64
	for _, s := range subs {
		last = max(last, s.recv[i])
	}
	return last
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
