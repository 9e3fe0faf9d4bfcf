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
	pr := newProgress(cfg.Progress)
	coll := collName("w4")
	quiet := min(cfg.Updates, w4Quiet)
	total := n + quiet

	// Pre-made changes: client k owns records [bounds[k], bounds[k+1]).
	pr.report(true, "%s: making %d changes", label, total)
	chs := make([]created, 0, total)
	bounds := make([]int, cfg.Clients+1)
	for k := range cfg.Clients {
		cnt := n/cfg.Clients + btoi(k < n%cfg.Clients)
		bounds[k+1] = bounds[k] + cnt
		c, _, err := creationChanges(actorID(cfg.Seed, uint64(100+k)), products(cfg.Seed, uint64(100+k), cnt), time.Now())
		if err != nil {
			return nil, err
		}
		chs = append(chs, c...)
	}
	qc, _, err := creationChanges(actorID(cfg.Seed, 99), products(cfg.Seed, 99, quiet), time.Now())
	if err != nil {
		return nil, err
	}
	chs = append(chs, qc...)

	dial := func(name string, buf int) (*transport.Client, error) {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		conn, err := transport.Dial(dctx, env.url, nil)
		if err != nil {
			return nil, err
		}
		c := transport.NewClient(conn, &transport.ClientOptions{LiveBuffer: buf})
		hello := &transport.Hello{APIKey: env.apiKey, Token: env.token, ReplicaID: name, Versions: transport.SupportedVersions()}
		if err := c.Call(dctx, hello, &transport.Welcome{}); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	var clients []*transport.Client
	var subWG sync.WaitGroup
	defer func() {
		for _, c := range clients {
			c.Close()
		}
		subWG.Wait()
	}()

	// Subscribers, from the start of the (empty) collection.
	base := time.Now()
	changed := make(chan struct{}, 1)
	subs := make([]*subscriber, cfg.Subscribers)
	for s := range subs {
		c, err := dial(fmt.Sprintf("%s-sub-%d", label, s), 4096)
		if err != nil {
			return nil, fmt.Errorf("subscriber %d: %w", s, err)
		}
		clients = append(clients, c)
		if err := c.Call(ctx, &transport.Subscribe{Collection: coll}, &transport.OK{}); err != nil {
			return nil, fmt.Errorf("subscribe: %w", err)
		}
		sub := &subscriber{c: c, recv: make([]int64, total)}
		subs[s] = sub
		subWG.Add(1)
		go func() {
			defer subWG.Done()
			for lv := range c.Live() {
				now := int64(time.Since(base))
				for _, rc := range lv.Records {
					i, err := strconv.Atoi(rc.Record[1:])
					if err != nil || i < 0 || i >= total || sub.recv[i] != 0 {
						continue
					}
					sub.recv[i] = max(now, 1)
					sub.n.Add(1)
				}
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		}()
	}
	pushers := make([]*transport.Client, cfg.Clients)
	for k := range pushers {
		c, err := dial(fmt.Sprintf("%s-pusher-%d", label, k), 0)
		if err != nil {
			return nil, fmt.Errorf("pusher %d: %w", k, err)
		}
		clients = append(clients, c)
		pushers[k] = c
	}

	push := func(c *transport.Client, from, to int) error {
		req := &transport.Push{Collection: coll}
		for i := from; i < to; i++ {
			req.Records = append(req.Records, transport.RecordChanges{Record: recordID(i), Data: chs[i].data, Heads: chs[i].heads.Slices()})
		}
		var ack transport.Ack
		if err := c.Call(ctx, req, &ack); err != nil {
			return fmt.Errorf("push: %w", err)
		}
		if len(ack.Records) != to-from {
			return checkf("ack of %d records for a push of %d", len(ack.Records), to-from)
		}
		return nil
	}

	// Ingest.
	env.mem.reset()
	if in.before, err = env.snapshot(ctx); err != nil {
		return nil, err
	}
	ack := make([]int64, total)
	var acked atomic.Int64
	errs := make(chan error, cfg.Clients)
	var wg sync.WaitGroup
	t0 := time.Now()
	for k, c := range pushers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := bounds[k]; i < bounds[k+1]; i += cfg.Batch {
				to := min(i+cfg.Batch, bounds[k+1])
				if err := push(c, i, to); err != nil {
					errs <- err
					return
				}
				now := int64(time.Since(base))
				for j := i; j < to; j++ {
					ack[j] = now
				}
				acked.Add(int64(to - i))
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
wait:
	for {
		select {
		case <-done:
			break wait
		case <-tick.C:
			pr.report(false, "%s: %d/%d changes acknowledged", label, acked.Load(), n)
		}
	}
	tick.Stop()
	in.elapsed = time.Since(t0)
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	if in.after, err = env.snapshot(ctx); err != nil {
		return nil, err
	}
	in.accepted = in.after.since(in.before, mAccepted)
	pr.report(true, "%s: %d changes acknowledged in %s", label, n, in.elapsed.Round(time.Millisecond))
	if err := waitAll(ctx, subs, changed, int64(n)); err != nil {
		return nil, err
	}
	for i := range n {
		in.fanLoad = append(in.fanLoad, time.Duration(max(lastRecv(subs, i)-ack[i], 0)))
	}
	in.fanLoad = sortedDurations(in.fanLoad)

	// Quiet fan-out: single pushes, one at a time.
	for j := range quiet {
		i := n + j
		sent := time.Since(base)
		if err := push(pushers[0], i, i+1); err != nil {
			return nil, err
		}
		acked := time.Since(base)
		if err := waitAll(ctx, subs, changed, int64(i+1)); err != nil {
			return nil, err
		}
		last := time.Duration(lastRecv(subs, i))
		in.fanQuiet = append(in.fanQuiet, max(last-acked, 0))
		in.sendQuiet = append(in.sendQuiet, last-sent)
	}
	in.fanQuiet, in.sendQuiet = sortedDurations(in.fanQuiet), sortedDurations(in.sendQuiet)
	in.mem = env.mem.peak()
	return in, nil
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
