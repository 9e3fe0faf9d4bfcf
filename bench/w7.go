package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/automerge/automerge-go"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// The shape of W7's records: a list of w7Items small maps {id, title,
// done, tags: a list of two strings}, written by w7Changes changes of
// w7Items/w7Changes maps each: the object-heavy shape of crdt's cost
// calibration (TestCostCalibration, which writes 4,000 maps): 14,001
// operations and 26 KB saved per record, about 14 MiB loaded by the
// relay's estimate.
const (
	w7Items   = 2000
	w7Changes = 40
	w7Edits   = 10 // single-item edits per record in the edit phase
)

const w7Title = "object-heavy records: push and edit"

// objRecord is one of W7's records as a device made it: its creation
// changes, the edits after them, and the heads after each.
type objRecord struct {
	create    []byte // the w7Changes changes, one stream
	created   crdt.Heads
	saved     []byte // the record saved after creation (the edit floor's base)
	edits     [][]byte
	editHeads []crdt.Heads
}

// W7 is object-heavy records through the relay: Objects records of the
// shape above, Clients raw transport clients pushing them, each record's
// creation changes in one push (a device's first sync of a record built
// offline), durable acks awaited; then w7Edits single-item edits per
// record, one per push, every record in turn (edits of large records the
// relay may have evicted meanwhile). It reports each phase's rate with its
// ratio to raw automerge-go doing the same (the creation changes loaded
// into fresh documents; the edits applied to documents holding the
// record), the relay's peak RSS and, for a child relay, its CPU time. It
// fails unless every ack names the heads pushed and the relay's accepted
// counter grew by every change pushed.
func W7(ctx context.Context, cfg Config) (res *Result, err error) {
	cfg, res, cleanup, err := prepare(ctx, cfg, "W7")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	start := time.Now()
	pr := newProgress(cfg.Progress)
	pr.report(true, "W7: making %d records of %d small maps", cfg.Objects, w7Items)
	recs := make([]objRecord, cfg.Objects)
	for i := range recs {
		if recs[i], err = makeObjRecord(actorID(cfg.Seed, uint64(700+i)), i); err != nil {
			return nil, err
		}
	}
	createFloor, editFloor, err := w7Floors(ctx, recs)
	if err != nil {
		return nil, err
	}
	res.EditFloor = &editFloor

	env, err := startRelay(ctx, cfg.Relay, filepath.Join(cfg.Dir, "W7"))
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, env.close)
	w := &w7Run{ctx: ctx, env: env, coll: collName("w7"), recs: recs}
	defer w.close()
	if err := w.connect(min(cfg.Clients, cfg.Objects)); err != nil {
		return nil, err
	}
	env.mem.reset()
	before, err := env.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	created, err := w.phase(spanW7Create, func(c *transport.Client, i int) error {
		return w.push(c, i, recs[i].create, recs[i].created)
	})
	if err != nil {
		return nil, err
	}
	cpuCreate := env.mem.peak().CPU
	pr.report(true, "W7: %d records created in %s", len(recs), created.Round(time.Millisecond))
	edited, err := w.phase(spanW7Edit, func(c *transport.Client, i int) error {
		for k, e := range recs[i].edits {
			if err := w.push(c, i, e, recs[i].editHeads[k]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	mem := env.mem.peak()
	after, err := env.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	nCreate, nEdit := len(recs)*w7Changes, len(recs)*w7Edits
	if got := after.since(before, mAccepted); got != float64(nCreate+nEdit) && !(env.mode == External && got > float64(nCreate+nEdit)) {
		return nil, checkf("the relay's %s grew by %v for %d changes pushed", mAccepted, got, nCreate+nEdit)
	}

	res.add(Metric{Name: "records", Value: float64(len(recs)), Unit: "count"})
	res.add(Metric{Name: "clients", Value: float64(len(w.pushers)), Unit: "count"})
	res.add(Metric{Name: "ops_per_record", Value: float64(createFloor.Ops), Unit: "count"})
	res.add(Metric{Name: "floor_create", Value: createFloor.Seconds, Unit: "s", Note: "raw automerge-go loading each record's creation changes into a fresh document (median of 5 runs)"})
	res.timeVs("create", created, nCreate, "changes/s", &createFloor.Floor)
	res.add(Metric{Name: "create_records_rate", Value: float64(len(recs)) / created.Seconds(), Unit: "records/s"})
	res.add(Metric{Name: "floor_edit", Value: editFloor.Seconds, Unit: "s", Note: "raw automerge-go applying the edits, one change per call, to documents holding the record (median of 5 runs)"})
	res.timeVs("edit", edited, nEdit, "changes/s", &editFloor)
	if mem.CPU > 0 {
		res.add(Metric{Name: "create_relay_cpu", Value: cpuCreate.Seconds(), Unit: "s", Note: "the child relay's user and system CPU time over the phase, from /proc"})
		res.add(Metric{Name: "edit_relay_cpu", Value: (mem.CPU - cpuCreate).Seconds(), Unit: "s", Note: "the child relay's user and system CPU time over the phase, from /proc"})
	}
	res.memory("", mem, 0)
	res.Notes = append(res.Notes,
		fmt.Sprintf("%d records of %d small maps in a list ({id, title, done, tags: [2]}), %d changes each, %d operations and %s saved per record", len(recs), w7Items, w7Changes, createFloor.Ops, fmtBytes(float64(len(recs[0].saved)))),
		fmt.Sprintf("create: %d clients push each record's %d changes in one push, awaiting its durable ack; ratio to raw automerge-go loading the same changes into fresh documents", len(w.pushers), w7Changes),
		fmt.Sprintf("edit: then %d single-item edits per record, one per push, every record in turn; ratio to raw automerge-go applying them to documents holding the record", w7Edits))
	res.Elapsed = time.Since(start)
	return res, nil
}

// makeObjRecord builds record i as a device would (by actor), then makes
// its edits: item k*w7Items/w7Edits's title rewritten, one change each.
func makeObjRecord(actor string, i int) (objRecord, error) {
	d, err := crdt.New(actor)
	if err != nil {
		return objRecord{}, err
	}
	defer d.Free()
	n := 0
	per := w7Items / w7Changes
	for c := range w7Changes {
		items := make([]any, 0, per)
		for range per {
			items = append(items, map[string]any{
				"id": int64(n), "title": fmt.Sprint("item ", i, ".", n), "done": n%3 == 0, "tags": []any{"a", "b"},
			})
			n++
		}
		if c == 0 {
			err = d.Set(crdt.Path{"items"}, items)
		} else {
			err = d.InsertAt(crdt.Path{"items"}, n-per, items...)
		}
		if err != nil {
			return objRecord{}, err
		}
		if _, err := d.Commit("", editAt); err != nil {
			return objRecord{}, err
		}
	}
	var r objRecord
	if r.create, err = d.ChangesSince(nil); err != nil {
		return objRecord{}, err
	}
	r.created, r.saved = d.Heads(), d.Save()
	for k := range w7Edits {
		h := d.Heads()
		if err := d.Set(crdt.Path{"items", k * (w7Items / w7Edits), "title"}, fmt.Sprint("edited ", k)); err != nil {
			return objRecord{}, err
		}
		if _, err := d.Commit("", editAt); err != nil {
			return objRecord{}, err
		}
		e, err := d.ChangesSince(h)
		if err != nil {
			return objRecord{}, err
		}
		r.edits = append(r.edits, e)
		r.editHeads = append(r.editHeads, d.Heads())
	}
	return r, nil
}

// createFloor is W7's creation floor, with the operations one record holds.
type createFloor struct {
	Floor
	Ops int
}

// w7Floors times raw automerge-go taking in W7's changes: each record's
// creation changes loaded into a fresh document, freed after; and its
// edits applied to a document holding the record, one record at a time
// (so that one record is loaded at once).
func w7Floors(ctx context.Context, recs []objRecord) (createFloor, Floor, error) {
	var cf createFloor
	var total int64
	for _, r := range recs {
		total += int64(len(r.create))
	}
	runs, err := timeRuns(ctx, func() (time.Duration, error) {
		t0 := time.Now()
		for i, r := range recs {
			d := automerge.New()
			err := d.LoadIncremental(r.create)
			if err == nil && len(d.Heads()) != 1 {
				err = checkf("W7 record %d's creation did not apply", i)
			}
			crdt.FreeAutomerge(d)
			if err != nil {
				return 0, fmt.Errorf("bench: W7 floor, record %d: %w", i, err)
			}
		}
		return time.Since(t0), nil
	})
	if err != nil {
		return cf, Floor{}, err
	}
	med := median(runs)
	n := len(recs) * w7Changes
	cf.Floor = Floor{Changes: n, Seconds: med.Seconds(), Bytes: total, Rate: float64(n) / med.Seconds()}
	for _, d := range runs {
		cf.Runs = append(cf.Runs, d.Seconds())
	}
	d, err := crdt.Load(recs[0].saved, "")
	if err != nil {
		return cf, Floor{}, err
	}
	c, err := d.Cost()
	d.Free()
	if err != nil {
		return cf, Floor{}, err
	}
	cf.Ops = c.Ops
	sets := make([]editSet, len(recs))
	for i, r := range recs {
		sets[i].base = [][]byte{r.saved}
		for _, e := range r.edits {
			sets[i].edits = append(sets[i].edits, edit{0, e})
		}
	}
	ef, err := applyFloor(ctx, sets...)
	return cf, ef, err
}

// w7Run is W7's clients.
type w7Run struct {
	ctx     context.Context
	env     *relayEnv
	coll    string
	recs    []objRecord
	pushers []*transport.Client
}

func (w *w7Run) connect(n int) error {
	for k := range n {
		dctx, cancel := context.WithTimeout(w.ctx, time.Minute)
		conn, err := transport.Dial(dctx, w.env.url, nil)
		if err != nil {
			cancel()
			return fmt.Errorf("pusher %d: %w", k, err)
		}
		c := transport.NewClient(conn, nil)
		hello := &transport.Hello{APIKey: w.env.apiKey, Token: w.env.token, ReplicaID: fmt.Sprintf("w7-pusher-%d", k), Versions: transport.SupportedVersions()}
		err = c.Call(dctx, hello, &transport.Welcome{})
		cancel()
		w.pushers = append(w.pushers, c)
		if err != nil {
			return fmt.Errorf("pusher %d: %w", k, err)
		}
	}
	return nil
}

func (w *w7Run) close() {
	for _, c := range w.pushers {
		c.Close()
	}
}

// The timed spans of W7's phases (see edge).
const (
	spanW7Create = "w7-create"
	spanW7Edit   = "w7-edit"
)

// phase runs do for every record, pusher k taking records k, k+n, ...,
// and returns how long that took, as the timed span.
func (w *w7Run) phase(span string, do func(c *transport.Client, i int) error) (time.Duration, error) {
	errs := make(chan error, len(w.pushers))
	var wg sync.WaitGroup
	t0 := edge(span, true)
	for k, c := range w.pushers {
		wg.Go(func() {
			for i := k; i < len(w.recs); i += len(w.pushers) {
				if err := do(c, i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	el := edge(span, false).Sub(t0)
	close(errs)
	return el, <-errs
}

// push pushes changes of record i and checks that the ack names it at
// heads.
func (w *w7Run) push(c *transport.Client, i int, data []byte, heads crdt.Heads) error {
	req := &transport.Push{Collection: w.coll, Records: []transport.RecordChanges{{Record: recordID(i), Data: data, Heads: heads.Slices()}}}
	var ack transport.Ack
	if err := c.Call(w.ctx, req, &ack); err != nil {
		return fmt.Errorf("push of record %d: %w", i, err)
	}
	if h := testHooks.ack; h != nil {
		h(&ack)
	}
	if len(ack.Records) != 1 || ack.Records[0].Record != recordID(i) {
		return checkf("ack of %d records for a push of record %s", len(ack.Records), recordID(i))
	}
	if h, err := crdt.HeadsFromSlices(ack.Records[0].Heads); err != nil || !h.Equal(heads) {
		return checkf("ack names %s at %x, pushed at %v", ack.Records[0].Record, ack.Records[0].Heads, heads)
	}
	return nil
}
