package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// w4Quiet bounds the pushes of W4's quiet fan-out phase.
const w4Quiet = 200

// W4 is relay ingest: Clients raw transport clients, each with its own
// Automerge actor and records, push pre-made creation changes (Batch
// records per push, each push awaiting its durable ack before the next)
// into one collection, Records changes in all, while Subscribers live
// subscribers of the collection receive them. It reports accepted
// changes/s, and fan-out latency (from sending a push until the last
// subscriber has its record) under that load and in a quiet phase of
// single pushes. It fails unless every acknowledgement names the records
// pushed, with their heads, and log positions of their own, and the
// relay's accepted counter grew by every change pushed.
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
	res.add(Metric{Name: "accepted", Value: in.accepted, Unit: "changes", Note: "relay /metrics " + mAccepted + " over the ingest (checked: every change pushed)"})
	res.time("ingest", in.elapsed, in.n, "changes/s")
	if g := in.after.since(in.before, mGroups); g > 0 {
		res.add(Metric{Name: "ingest_changes_per_group", Value: in.accepted / g, Unit: "changes", Note: "relay /metrics " + mAccepted + " over " + mGroups + ": the changes each store append (and its fsync) carried"})
	}
	res.phaseBytes(in.env, "ingest", in.before, in.after, in.n*(1+cfg.Subscribers), in.n, mBytesIn)
	res.latency("fanout_load_p50", percentile(in.fanLoad, 50))
	res.latency("fanout_load_p99", percentile(in.fanLoad, 99))
	if len(in.fanQuiet) > 0 {
		res.latency("fanout_p50", percentile(in.fanQuiet, 50))
		res.latency("fanout_p99", percentile(in.fanQuiet, 99))
	}
	if in.cpu > 0 {
		res.add(Metric{Name: "ingest_relay_cpu", Value: in.cpu.Seconds(), Unit: "s", Note: "the child relay's user and system CPU time over the ingest, from /proc"})
		res.add(Metric{Name: "ingest_relay_cpu_per_change", Value: in.cpu.Seconds() / float64(in.n), Unit: "s/change"})
		// With the relay in a process of its own, this process's CPU is
		// the clients': the pushers and the subscribers, which connect
		// to it directly and count their own bytes (dialCounted).
		res.add(Metric{Name: "ingest_clients_cpu", Value: in.selfCPU.Seconds(), Unit: "s", Note: "this process's user and system CPU time over the ingest: the pushers and the subscribers, counting the bytes of their own connections"})
		res.add(Metric{Name: "ingest_clients_cpu_per_change", Value: in.selfCPU.Seconds() / float64(in.n), Unit: "s/change"})
	}
	res.memory("", in.mem, 0)
	res.Notes = append(res.Notes,
		fmt.Sprintf("ingest: %d clients push %d changes, %d per push, each awaiting its durable ack (the relay's append fsynced); %d subscribers receive them meanwhile", cfg.Clients, in.n, cfg.Batch, cfg.Subscribers),
		"fanout_load: from sending a push until the last subscriber has its record, during ingest (the relay's durable append included)",
		fmt.Sprintf("fanout: the same for %d single pushes, one at a time after ingest", len(in.fanQuiet)),
		"ingest_wire includes the subscribers' live traffic; its ratio is to the raw bytes of every change once pushed and once per subscriber")
	res.Elapsed = time.Since(start)
	return res, nil
}

// ingestRun is what one ingest measured.
type ingestRun struct {
	n                 int
	elapsed           time.Duration
	accepted          float64
	fanLoad, fanQuiet []time.Duration // sorted
	before, after     snapshot
	mem               memStats
	cpu               time.Duration // the relay's CPU over the ingest (child relays only)
	selfCPU           time.Duration // this process's CPU over the ingest
	env               *relayEnv
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
	self0 := cpuTime()
	if in.elapsed, err = w.pushAll(); err != nil {
		return nil, err
	}
	in.cpu = env.mem.peak().CPU
	in.selfCPU = cpuTime() - self0
	if in.after, err = env.snapshot(ctx); err != nil {
		return nil, err
	}
	in.accepted = in.after.since(in.before, mAccepted)
	// An external relay may take other clients' changes meanwhile.
	if in.accepted != float64(n) && !(env.mode == External && in.accepted > float64(n)) {
		return nil, checkf("the relay's %s grew by %v over the ingest of %d changes", mAccepted, in.accepted, n)
	}
	w.pr.report(true, "%s: %d changes acknowledged in %s", label, n, in.elapsed.Round(time.Millisecond))
	if err := waitAll(ctx, w.subs, w.changed, int64(n)); err != nil {
		return nil, err
	}
	if in.fanLoad, err = w.fanout(0, n); err != nil {
		return nil, err
	}
	if in.fanQuiet, err = w.quietFanout(); err != nil {
		return nil, err
	}
	if err := w.checkSeqs(); err != nil {
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
	sent    []int64       // by record index: ns since base of its push's send
	seq     []uint64      // by record index: its log position, from the ack
}

// makeChanges makes every change before the clock starts: pusher k's
// records, then the quiet phase's.
func (w *w4Run) makeChanges() error {
	cfg := w.cfg
	w.pr.report(true, "%s: making %d changes", w.label, w.total)
	w.chs = make([]created, 0, w.total)
	w.sent = make([]int64, w.total)
	w.seq = make([]uint64, w.total)
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
	conn, err := w.env.dialCounted(dctx)
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

// push sends records [from, to) through c and awaits the ack, which must
// name each record with the heads pushed: what the relay holds. The
// push's records take the log positions that end at the ack's seq.
func (w *w4Run) push(c *transport.Client, from, to int) error {
	req := &transport.Push{Collection: w.coll}
	for i := from; i < to; i++ {
		req.Records = append(req.Records, transport.RecordChanges{Record: recordID(i), Data: w.chs[i].data, Heads: w.chs[i].heads.Slices()})
	}
	var ack transport.Ack
	sent := int64(time.Since(w.base))
	if err := c.Call(w.ctx, req, &ack); err != nil {
		return fmt.Errorf("push: %w", err)
	}
	if h := testHooks.ack; h != nil {
		h(&ack)
	}
	if len(ack.Records) != to-from || ack.Collection != w.coll || ack.Seq < uint64(to-from) {
		return checkf("ack of %d records in %q at seq %d for a push of %d to %q", len(ack.Records), ack.Collection, ack.Seq, to-from, w.coll)
	}
	for j, ra := range ack.Records {
		i := from + j
		h, err := crdt.HeadsFromSlices(ra.Heads)
		if err != nil || ra.Record != recordID(i) || !h.Equal(w.chs[i].heads) {
			return checkf("ack names %s at %x for record %s pushed at %v", ra.Record, ra.Heads, recordID(i), w.chs[i].heads)
		}
		w.sent[i] = sent
		w.seq[i] = ack.Seq - uint64(to-1-i)
	}
	return nil
}

// checkSeqs checks that the relay gave every record pushed a log position
// of its own, with no gaps: each was appended, once.
func (w *w4Run) checkSeqs() error {
	s := slices.Clone(w.seq)
	slices.Sort(s)
	for i := 1; i < len(s); i++ {
		if s[i] != s[i-1]+1 {
			return checkf("the relay acknowledged log positions %d and then %d for %d records pushed once each", s[i-1], s[i], len(s))
		}
	}
	return nil
}

// fanout returns, sorted, each record of [from, to)'s time from its
// push's send until the last subscriber had it.
func (w *w4Run) fanout(from, to int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, to-from)
	for i := from; i < to; i++ {
		d := lastRecv(w.subs, i) - w.sent[i]
		if d <= 0 {
			return nil, checkf("record %s reached its last subscriber %v after its push was sent", recordID(i), time.Duration(d))
		}
		out = append(out, time.Duration(d))
	}
	return sortedDurations(out), nil
}

// pushAll is the ingest itself: every pusher pushes its records, Batch per
// push, each awaiting its ack. It returns how long that took.
func (w *w4Run) pushAll() (time.Duration, error) {
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
func (w *w4Run) quietFanout() ([]time.Duration, error) {
	for i := w.n; i < w.total; i++ {
		if err := w.push(w.pushers[0], i, i+1); err != nil {
			return nil, err
		}
		if err := waitAll(w.ctx, w.subs, w.changed, int64(i+1)); err != nil {
			return nil, err
		}
	}
	return w.fanout(w.n, w.total)
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
