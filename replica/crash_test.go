//go:build unix

package replica_test

// Crash safety, tested for real: a child process writes to a durable store
// and reports each write that returned nil; the parent kills it with SIGKILL
// at a random moment, reopens the store and checks that every reported write
// is there and that nothing else is, except the one write in flight.
//
// The protocol, one line each on the child's stdout:
//
//	try {json}   before a write call: the state every record it touches will have
//	ok {json}    after that call returned nil
//
// A record is always reported whole (all its fields and the tombstone), so
// after the crash the store must equal the state the ok lines built, or that
// state with the last unanswered try applied, all of it or none of it (a unit
// of work is atomic). Nothing else is allowed.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/replica"
)

const (
	crashEnvSeed      = "FERRY_CRASH_SEED"       // reproduce a TestCrashSafety run
	crashEnvChildDir  = "FERRY_CRASH_CHILD_DIR"  // set only in the child process
	crashEnvChildSeed = "FERRY_CRASH_CHILD_SEED" // the child's own seed

	crashRounds      = 10
	crashMinLines    = 20
	crashMaxLines    = 400
	crashChildMaxOps = 100_000 // the child is killed long before
	crashMaxPerColl  = 40      // records per collection, tombstones included
	crashHot         = 4       // most writes go to this many records per collection, so they compact
)

var crashColls = []string{"items", "orders"}

// crashRec is one record's whole state, as the child reports it and the
// parent expects it in the store.
type crashRec struct {
	Coll string  `json:"c"`
	ID   string  `json:"id"` // "" in a try line: Collection.Insert picks the ID during the call
	Del  bool    `json:"del,omitempty"`
	V    int64   `json:"v"`
	Note string  `json:"note"`
	N    *int64  `json:"n,omitempty"` // counter, if the record has one
	T    *string `json:"t,omitempty"` // text, if the record has one
}

func (r crashRec) key() string { return r.Coll + "/" + r.ID }

func (r crashRec) equal(o crashRec) bool {
	return r.Coll == o.Coll && r.ID == o.ID && r.Del == o.Del && r.V == o.V && r.Note == o.Note &&
		crashEqPtr(r.N, o.N) && crashEqPtr(r.T, o.T)
}

func (r crashRec) String() string {
	b, _ := json.Marshal(r)
	return string(b)
}

func crashEqPtr[T comparable](a, b *T) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// crashLine is the payload of a try or ok line.
type crashLine struct {
	Seq  int        `json:"seq"`
	Op   string     `json:"op"`
	Recs []crashRec `json:"recs"` // the records the write touches, as they are after it
}

// crashFields are the fields Insert and Put write.
type crashFields struct {
	V    int64  `ferry:"v"`
	Note string `ferry:"note"`
}

// crashView decodes a whole record.
type crashView struct {
	V    int64  `ferry:"v"`
	Note string `ferry:"note"`
	N    int64  `ferry:"n"`
	T    string `ferry:"t"`
}

// TestCrashSafety runs the child several times against one store, killing
// it each time after a random number of lines, and checks the store after
// each kill. Set FERRY_CRASH_SEED to replay a run's choices (the exact kill
// point also depends on timing).
func TestCrashSafety(t *testing.T) {
	if os.Getenv(crashEnvChildDir) != "" {
		t.Skip("inside the crash child")
	}
	seed := rand.Uint64()
	if s := os.Getenv(crashEnvSeed); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", crashEnvSeed, s, err)
		}
	}
	t.Logf("seed %d (rerun with %s=%d)", seed, crashEnvSeed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	rounds := crashRounds
	if testing.Short() {
		rounds = 2
	}

	dir := t.TempDir()
	model := map[string]crashRec{} // every record the store must hold, by key
	writes := map[string]int{}     // acknowledged writes per record
	var replicaID string
	for round := range rounds {
		kill := crashMinLines + rng.IntN(crashMaxLines-crashMinLines+1)
		lag := 2 * rng.Float64()
		childSeed := rng.Uint64()
		pending, n := crashRunChild(t, dir, childSeed, kill, lag, model, writes)
		landed, id := crashVerify(t, dir, model, pending)
		if replicaID != "" && id != replicaID {
			t.Fatalf("round %d: replica ID changed from %s to %s", round, replicaID, id)
		}
		replicaID = id
		t.Logf("round %d: killed %.2f writes after line %d; %d writes acknowledged, in-flight %s landed=%v; %d records",
			round, lag, kill, n, crashOpName(pending), landed, len(model))
		if t.Failed() {
			return
		}
	}
	hot := slices.Sorted(maps.Values(writes))
	slices.Reverse(hot)
	t.Logf("acknowledged writes to the most written records: %v", hot[:min(len(hot), 8)])
}

func crashOpName(l *crashLine) string {
	if l == nil {
		return "(none)"
	}
	return fmt.Sprintf("#%d %s", l.Seq, l.Op)
}

// crashRunChild starts the child on dir, applies its ok lines to model, kills
// it lag writes' time after its line number kill, and reaps it. It returns
// the write that was in flight (nil if none) and how many writes were
// acknowledged.
//
// The lag is what makes the moment random: the parent reacts to a line in
// microseconds, far faster than a durable commit, so a kill right on a line
// would always land just before a write starts (after try) or between two
// writes (after ok), never inside Badger's commit or between the commit and
// the ok. The lag is not synchronization: every line is read whatever it is.
func crashRunChild(t *testing.T, dir string, seed uint64, kill int, lag float64, model map[string]crashRec, writes map[string]int) (*crashLine, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), crashEnvChildDir+"="+dir, crashEnvChildSeed+"="+strconv.FormatUint(seed, 10))
	cmd.WaitDelay = 10 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var first time.Time // when the first line came: the child's startup is not a write
	var killed atomic.Bool
	var killErr atomic.Pointer[error]
	doKill := func() { // on the timer's goroutine
		killed.Store(true)
		if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			killErr.Store(&err)
		}
	}
	var killTimer *time.Timer
	waited := false
	defer func() {
		if killTimer != nil {
			killTimer.Stop()
		}
		if !waited { // a t.Fatal below: never leave the child running or unreaped
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	var (
		pending *crashLine
		other   strings.Builder // anything that is not protocol, for the failure message
		lines   int
		acked   int
		bad     error
	)
	// Read to EOF even after the kill: lines the child wrote before it died
	// are still in the pipe, and they report writes that returned.
	br := bufio.NewReader(stdout)
	for {
		s, err := br.ReadString('\n')
		if err != nil {
			// EOF. A partial last line was cut by the kill mid-write: its
			// call had not started (try) or its write is covered by the
			// pending try (ok), so dropping it is exact.
			break
		}
		kind, payload, _ := strings.Cut(strings.TrimSuffix(s, "\n"), " ")
		if kind != "try" && kind != "ok" {
			other.WriteString(s)
			continue
		}
		var l crashLine
		if err := json.Unmarshal([]byte(payload), &l); err != nil && bad == nil {
			bad = fmt.Errorf("bad line %q: %v", s, err)
		}
		switch {
		case bad != nil:
		case kind == "try" && pending != nil:
			bad = fmt.Errorf("try #%d while #%d is unanswered", l.Seq, pending.Seq)
		case kind == "try":
			pending = &l
		case pending == nil || pending.Seq != l.Seq:
			bad = fmt.Errorf("ok #%d answers no try (pending %s)", l.Seq, crashOpName(pending))
		default:
			for _, r := range l.Recs {
				model[r.key()] = r
				writes[r.key()]++
			}
			pending = nil
			acked++
		}
		lines++
		if lines == 1 {
			first = time.Now()
		}
		if lines == kill {
			perWrite := time.Since(first) / time.Duration(lines/2) // two lines a write
			killTimer = time.AfterFunc(time.Duration(lag*float64(perWrite)), doKill)
		}
	}
	werr := cmd.Wait()
	waited = true
	if killTimer != nil {
		killTimer.Stop()
	}
	if err := killErr.Load(); err != nil {
		t.Fatalf("kill child: %v", *err)
	}
	if bad != nil {
		t.Fatalf("child protocol: %v\nchild output:\n%s%s", bad, other.String(), stderr.String())
	}
	var ws syscall.WaitStatus
	if cmd.ProcessState != nil {
		ws, _ = cmd.ProcessState.Sys().(syscall.WaitStatus)
	}
	if !killed.Load() || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended by itself after %d lines (kill planned after %d): %v\nchild output:\n%s%s",
			lines, kill, werr, other.String(), stderr.String())
	}
	return pending, acked
}

// crashVerify reopens the store and checks it holds exactly model, or model
// with all of pending applied. It updates model to what the store holds and
// returns whether pending landed, and the replica's ID.
func crashVerify(t *testing.T, dir string, model map[string]crashRec, pending *crashLine) (bool, string) {
	t.Helper()
	r, err := replica.Open(dir, nil)
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()

	got := crashReadAll(t, r)

	without := maps.Clone(model)
	with := maps.Clone(model)
	var unknown *crashRec // a Collection.Insert whose ID we learn from the store
	if pending != nil {
		for _, rec := range pending.Recs {
			if rec.ID == "" {
				unknown = &rec
				continue
			}
			with[rec.key()] = rec
		}
	}
	landed := false
	switch {
	case crashSame(got, without):
	case pending != nil && crashSameWith(got, with, unknown):
		landed = true
		for k, rec := range got { // with, plus the inserted record's real ID
			with[k] = rec
		}
		maps.Copy(model, with)
	default:
		msg := "store differs from the acknowledged writes:\n" + crashDiff(got, without)
		if pending != nil {
			msg += fmt.Sprintf("and from them plus in-flight %s:\n%s", crashOpName(pending), crashDiff(got, with))
		}
		t.Fatal(msg)
	}

	// Reads by ID agree with the scan: Get finds live records and gives
	// ErrNotFound for tombstones and for the records of an in-flight unit
	// that did not land.
	check := maps.Clone(got)
	if pending != nil && !landed {
		for _, rec := range pending.Recs {
			if _, ok := got[rec.key()]; !ok && rec.ID != "" {
				check[rec.key()] = crashRec{Coll: rec.Coll, ID: rec.ID, Del: true} // absent: must read as not found
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(check)) {
		rec := check[k]
		c := r.Collection(rec.Coll)
		var v crashView
		err = c.Get(rec.ID, &v)
		switch {
		case rec.Del && !errors.Is(err, replica.ErrNotFound):
			t.Errorf("Get(%s) of a deleted or absent record = %+v, %v; want ErrNotFound", k, v, err)
		case !rec.Del && err != nil:
			t.Errorf("Get(%s): %v", k, err)
		case !rec.Del && (v.V != rec.V || v.Note != rec.Note || rec.N != nil && v.N != *rec.N || rec.T != nil && v.T != *rec.T):
			t.Errorf("Get(%s) = %+v, scan says %s", k, v, rec)
		}
	}

	// Every record holds local changes nobody acknowledged: each is pending,
	// and nothing else is. The marker commits with the record.
	for _, name := range crashColls {
		c := r.Collection(name)
		ids, err := c.Pending()
		if err != nil {
			t.Fatalf("Pending(%s): %v", name, err)
		}
		var want []string
		for _, rec := range got {
			if rec.Coll == name {
				want = append(want, rec.ID)
			}
		}
		slices.Sort(want)
		if !slices.Equal(ids, want) {
			t.Errorf("Pending(%s) = %d IDs %v, want the %d records %v", name, len(ids), ids, len(want), want)
		}
	}
	colls, err := r.Collections()
	if err != nil {
		t.Fatalf("Collections: %v", err)
	}
	for _, rec := range got {
		if !slices.Contains(colls, rec.Coll) {
			t.Errorf("Collections() = %v, missing %s which holds %s", colls, rec.Coll, rec.ID)
		}
	}
	return landed, r.ID()
}

// crashSameWith reports whether got is want plus, if unknown is set, exactly
// one more record of its collection with its fields.
func crashSameWith(got, want map[string]crashRec, unknown *crashRec) bool {
	if unknown == nil {
		return crashSame(got, want)
	}
	extra := 0
	for k, rec := range got {
		if _, ok := want[k]; ok {
			continue
		}
		u := *unknown
		u.ID = rec.ID
		if !rec.equal(u) {
			return false
		}
		extra++
	}
	if extra != 1 || len(got) != len(want)+1 {
		return false
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || !g.equal(w) {
			return false
		}
	}
	return true
}

func crashSame(got, want map[string]crashRec) bool {
	return maps.EqualFunc(got, want, crashRec.equal)
}

func crashDiff(got, want map[string]crashRec) string {
	var b strings.Builder
	keys := slices.Sorted(maps.Keys(got))
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		g, gok := got[k]
		w, wok := want[k]
		switch {
		case !gok:
			fmt.Fprintf(&b, "  missing %s\n", w)
		case !wok:
			fmt.Fprintf(&b, "  extra   %s\n", g)
		case !g.equal(w):
			fmt.Fprintf(&b, "  got     %s\n  want    %s\n", g, w)
		}
	}
	return b.String()
}

// crashReadAll scans every collection, tombstones included, checks each
// record decodes and that a scan without tombstones lists the live ones,
// and returns the records by key.
func crashReadAll(t testing.TB, r *replica.Replica) map[string]crashRec {
	t.Helper()
	out := map[string]crashRec{}
	for _, name := range crashColls {
		c := r.Collection(name)
		all, err := collect(c.Scan(replica.ScanOptions{Deleted: true}))
		if err != nil {
			t.Fatalf("Scan(%s, with tombstones): %v", name, err)
		}
		var live []string
		for _, rec := range all {
			var v crashView
			if err := rec.Decode(&v); err != nil {
				t.Fatalf("%s/%s does not decode: %v (fields %v)", name, rec.ID, err, rec.Fields)
			}
			for f := range rec.Fields {
				if f != "v" && f != "note" && f != "n" && f != "t" {
					t.Errorf("%s/%s has unexpected field %q: %v", name, rec.ID, f, rec.Fields)
				}
			}
			cr := crashRec{Coll: name, ID: rec.ID, Del: rec.Deleted, V: v.V, Note: v.Note}
			if _, ok := rec.Fields["n"]; ok {
				cr.N = &v.N
			}
			if _, ok := rec.Fields["t"]; ok {
				cr.T = &v.T
			}
			out[cr.key()] = cr
			if !rec.Deleted {
				live = append(live, rec.ID)
			}
		}
		recs, err := collect(c.Scan(replica.ScanOptions{}))
		if err != nil {
			t.Fatalf("Scan(%s): %v", name, err)
		}
		var ids []string
		for _, rec := range recs {
			ids = append(ids, rec.ID)
		}
		if !slices.Equal(ids, live) {
			t.Errorf("Scan(%s) lists %v, want the live records %v", name, ids, live)
		}
	}
	return out
}

// TestCrashChild is the process TestCrashSafety kills. It skips itself
// unless started by it.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnvChildDir)
	if dir == "" {
		t.Skip("helper process for TestCrashSafety")
	}
	seed, err := strconv.ParseUint(os.Getenv(crashEnvChildSeed), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", crashEnvChildSeed, err)
	}
	r, err := replica.Open(dir, nil) // the defaults: durable
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w := &crashWriter{t: t, r: r, rng: rand.New(rand.NewPCG(seed, 0xc4a5)), recs: map[string]crashRec{}}
	for _, rec := range crashReadAll(t, r) {
		w.add(rec)
	}
	slices.Sort(w.keys) // the same store and seed make the same choices
	for range crashChildMaxOps {
		w.step()
	}
}

// crashWriter is the child: it knows what the store holds and chooses
// writes against it.
type crashWriter struct {
	t    *testing.T
	r    *replica.Replica
	rng  *rand.Rand
	seq  int
	recs map[string]crashRec
	keys []string // every record, in the order first seen
}

func (w *crashWriter) add(rec crashRec) {
	if _, ok := w.recs[rec.key()]; !ok {
		w.keys = append(w.keys, rec.key())
	}
	w.recs[rec.key()] = rec
}

func (w *crashWriter) coll(name string) *replica.Collection {
	c := w.r.Collection(name)
	return c
}

// pick returns a random record of coll, tombstones included, as view (the
// records as a unit of work has left them so far) or else the store has it.
func (w *crashWriter) pick(coll string, view map[string]crashRec) (crashRec, bool) {
	var cands []crashRec
	for _, k := range w.keys {
		rec, in := view[k]
		if !in {
			rec = w.recs[k]
		}
		if rec.Coll == coll {
			cands = append(cands, rec)
		}
	}
	for k, rec := range view { // records created earlier in this unit
		if _, known := w.recs[k]; !known && rec.Coll == coll {
			cands = append(cands, rec)
		}
	}
	if len(cands) == 0 {
		return crashRec{}, false
	}
	slices.SortFunc(cands, func(a, b crashRec) int { return strings.Compare(a.ID, b.ID) })
	if w.rng.IntN(100) < 60 {
		// A few hot records get enough writes to be folded into a
		// snapshot (Options.CompactAfter, 32 by default) several times.
		return cands[w.rng.IntN(min(len(cands), crashHot))], true
	}
	return cands[w.rng.IntN(len(cands))], true
}

func (w *crashWriter) count(coll string) int {
	n := 0
	for _, rec := range w.recs {
		if rec.Coll == coll {
			n++
		}
	}
	return n
}

func (w *crashWriter) emit(kind string, l crashLine) {
	b, err := json.Marshal(l)
	if err != nil {
		w.t.Fatal(err)
	}
	// One write call per line: a pipe write this small is atomic.
	if _, err := os.Stdout.Write(append([]byte(kind+" "), append(b, '\n')...)); err != nil {
		os.Exit(3) // the parent is gone
	}
}

const crashAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func (w *crashWriter) note() string {
	b := make([]byte, 16)
	for i := range b {
		b[i] = crashAlphabet[w.rng.IntN(len(crashAlphabet))]
	}
	return string(b)
}

func (w *crashWriter) fields() crashFields {
	return crashFields{V: w.rng.Int64N(1 << 40), Note: w.note()}
}

// textEdit chooses a splice of rec's text and returns it with the result.
func (w *crashWriter) textEdit(rec crashRec) (pos, del int, ins, after string) {
	var cur []rune
	if rec.T != nil {
		cur = []rune(*rec.T)
	}
	pos = w.rng.IntN(len(cur) + 1)
	maxDel := min(3, len(cur)-pos)
	if len(cur) > 40 {
		maxDel = min(12, len(cur)-pos)
	}
	del = w.rng.IntN(maxDel + 1)
	pieces := []string{"a", "b", "z", " ", "é", "字", "🙂"}
	for range w.rng.IntN(4) {
		ins += pieces[w.rng.IntN(len(pieces))]
	}
	if del == 0 && ins == "" {
		ins = "x"
	}
	after = string(cur[:pos]) + ins + string(cur[pos+del:])
	return pos, del, ins, after
}

func (w *crashWriter) counterEdit(rec crashRec) (int64, int64) {
	d := w.rng.Int64N(11) - 5
	if d == 0 {
		d = 7
	}
	n := d
	if rec.N != nil {
		n += *rec.N
	}
	return d, n
}

// step makes one write, announcing it before and confirming it after.
func (w *crashWriter) step() {
	w.seq++
	coll := crashColls[w.rng.IntN(len(crashColls))]
	c := w.coll(coll)
	full := w.count(coll) >= crashMaxPerColl
	l := crashLine{Seq: w.seq}
	var err error

	switch x := w.rng.IntN(100); {
	case x < 25:
		w.unit()
		return
	case x < 38 && !full:
		l.Op = "insert"
		f := w.fields()
		w.emit("try", crashLine{Seq: w.seq, Op: l.Op, Recs: []crashRec{{Coll: coll, V: f.V, Note: f.Note}}})
		var id string
		if id, err = c.Insert(f); err == nil {
			l.Recs = []crashRec{{Coll: coll, ID: id, V: f.V, Note: f.Note}}
		}
	case x < 43 && !full:
		l.Op = "create"
		f := w.fields()
		rec := crashRec{Coll: coll, ID: fmt.Sprintf("app-%d-%x", w.seq, w.rng.Uint32()), V: f.V, Note: f.Note}
		l.Recs = []crashRec{rec}
		w.emit("try", l)
		err = c.Create(rec.ID, f)
	default:
		rec, ok := w.pick(coll, nil)
		if !ok {
			w.seq--
			return // an empty collection: choose again
		}
		switch y := w.rng.IntN(100); {
		case y < 30 || rec.Del: // Put, which restores a tombstone
			l.Op = "put"
			f := w.fields()
			rec.V, rec.Note, rec.Del = f.V, f.Note, false
			l.Recs = []crashRec{rec}
			w.emit("try", l)
			err = c.Put(rec.ID, f)
		case y < 55:
			l.Op = "counter"
			d, n := w.counterEdit(rec)
			rec.N = &n
			l.Recs = []crashRec{rec}
			w.emit("try", l)
			err = c.Update(rec.ID, func(doc *crdt.Doc) error { return doc.Increment(crdt.Path{"n"}, d) })
		case y < 85:
			l.Op = "text"
			pos, del, ins, after := w.textEdit(rec)
			rec.T = &after
			l.Recs = []crashRec{rec}
			w.emit("try", l)
			err = c.Update(rec.ID, func(doc *crdt.Doc) error { return doc.SpliceText(crdt.Path{"t"}, pos, del, ins) })
		default:
			l.Op = "delete"
			rec.Del = true
			l.Recs = []crashRec{rec}
			w.emit("try", l)
			err = c.Delete(rec.ID)
		}
	}
	if err != nil {
		w.t.Fatalf("write #%d %s %v: %v", l.Seq, l.Op, l.Recs, err)
	}
	for _, rec := range l.Recs {
		w.add(rec)
	}
	w.emit("ok", l)
}

// unit makes two to five writes across both collections in one
// Replica.Write; some may touch the same record twice.
func (w *crashWriter) unit() {
	l := crashLine{Seq: w.seq, Op: "unit"}
	view := map[string]crashRec{}
	var order []string
	set := func(rec crashRec) {
		if _, ok := view[rec.key()]; !ok {
			order = append(order, rec.key())
		}
		view[rec.key()] = rec
	}
	err := w.r.Write(func(tx *replica.Tx) error {
		for range 2 + w.rng.IntN(4) {
			coll := crashColls[w.rng.IntN(len(crashColls))]
			rec, found := w.pick(coll, view)
			x := w.rng.IntN(100)
			if !found || x < 15 && w.count(coll) < crashMaxPerColl {
				f := w.fields()
				id, err := tx.Insert(coll, f)
				if err != nil {
					return err
				}
				l.Op += " insert"
				set(crashRec{Coll: coll, ID: id, V: f.V, Note: f.Note})
				continue
			}
			switch {
			case x < 40 || rec.Del:
				f := w.fields()
				rec.V, rec.Note, rec.Del = f.V, f.Note, false
				if err := tx.Put(coll, rec.ID, f); err != nil {
					return err
				}
				l.Op += " put"
			case x < 60:
				d, n := w.counterEdit(rec)
				rec.N = &n
				if err := tx.Update(coll, rec.ID, func(doc *crdt.Doc) error { return doc.Increment(crdt.Path{"n"}, d) }); err != nil {
					return err
				}
				l.Op += " counter"
			case x < 85:
				pos, del, ins, after := w.textEdit(rec)
				rec.T = &after
				if err := tx.Update(coll, rec.ID, func(doc *crdt.Doc) error { return doc.SpliceText(crdt.Path{"t"}, pos, del, ins) }); err != nil {
					return err
				}
				l.Op += " text"
			default:
				rec.Del = true
				if err := tx.Delete(coll, rec.ID); err != nil {
					return err
				}
				l.Op += " delete"
			}
			set(rec)
		}
		for _, k := range order {
			l.Recs = append(l.Recs, view[k])
		}
		// The writes are queued; they commit when this function returns.
		w.emit("try", l)
		return nil
	})
	if err != nil {
		w.t.Fatalf("write #%d %s %v: %v", l.Seq, l.Op, l.Recs, err)
	}
	for _, rec := range l.Recs {
		w.add(rec)
	}
	w.emit("ok", l)
}
