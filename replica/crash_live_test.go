//go:build unix

package replica

// Crash tests of the live path, with real processes killed by SIGKILL at
// every step of an edit's way (docs/architecture.md, "Crash tests of the
// live path"):
//
//   - TestLiveCrashDevice kills a device while it edits live, pushing
//     each edit while the edit's fsync runs (liveearly.go), including
//     while that fsync is held with the edit already at the relay.
//   - TestLiveCrashRelay (crash_live_relay_test.go) kills the relay while
//     it fans checked changes out early to a subscriber (hub.writing),
//     including after the fan-out and before the group is written, and
//     after it is written and before anyone hears of it.
//
// Both take their choices from a seed, printed, and set by
// FERRY_LIVECRASH_SEED to replay a run's choices (the exact kill points
// also depend on timing). The children are this test binary, run again
// for one test function that skips itself unless the parent's environment
// says it is the child.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/relaytest"
)

const (
	lcEnvSeed = "FERRY_LIVECRASH_SEED" // replay a run's choices

	// Set only in a device child.
	lcEnvDevDir   = "FERRY_LIVECRASH_DEVICE_DIR"
	lcEnvDevURL   = "FERRY_LIVECRASH_DEVICE_URL"
	lcEnvDevKey   = "FERRY_LIVECRASH_DEVICE_KEY"
	lcEnvDevToken = "FERRY_LIVECRASH_DEVICE_TOKEN"
	lcEnvDevPlan  = "FERRY_LIVECRASH_DEVICE_PLAN" // "seed base pauseAt pauseMode"

	lcColl    = "c"
	lcRecords = 10 // records the edits spread over
)

// lcSeed returns the run's seed, from FERRY_LIVECRASH_SEED if set, and
// logs it.
func lcSeed(t *testing.T) uint64 {
	t.Helper()
	seed, ok := envSeed(t, lcEnvSeed)
	if !ok {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with %s=%d)", seed, lcEnvSeed, seed)
	return seed
}

// lcUseEarlyApply turns on the subscribers' side of early live messages
// for the test: off by default in the library, it is what these tests
// are about.
func lcUseEarlyApply(t *testing.T) { useEarlyApply(t) }

func lcRecord(i int) string { return fmt.Sprintf("d%d", i) }

// lcChild is this test binary run again as a child process for one test
// function. The parent reads its standard output line by line; its
// standard input stays open while the parent wants it alive, so that a
// child never outlives a parent that died.
type lcChild struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // whole lines of its stdout; closed at EOF
	stderr *lcTail
	done   bool // reaped
}

func lcStart(t *testing.T, test string, env []string, files ...*os.File) *lcChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), env...)
	cmd.ExtraFiles = files
	c := &lcChild{t: t, cmd: cmd, lines: make(chan string, 1024), stderr: &lcTail{}}
	cmd.Stderr = c.stderr
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.lines)
		br := bufio.NewReader(stdout)
		for {
			s, err := br.ReadString('\n')
			if err != nil {
				// EOF. A last line without its newline was cut by the
				// kill: the child never finished saying it.
				return
			}
			c.lines <- strings.TrimSuffix(s, "\n")
		}
	}()
	t.Cleanup(func() {
		if !c.done { // a t.Fatal: never leave the child running or unreaped
			cmd.Process.Kill()
			for range c.lines {
			}
			cmd.Wait()
		}
	})
	return c
}

// next returns the child's next line, failing the test if the child
// ended.
func (c *lcChild) next() string {
	c.t.Helper()
	l, ok := <-c.lines
	if !ok {
		c.kill()
		c.t.Fatalf("child ended early; stderr:\n%s", c.stderr)
	}
	return l
}

// nextWith returns the child's next line that starts with prefix,
// passing those before it to skip (which may be nil).
func (c *lcChild) nextWith(prefix string, skip func(string)) string {
	c.t.Helper()
	for {
		l := c.next()
		if strings.HasPrefix(l, prefix) {
			return l
		}
		if skip != nil {
			skip(l)
		}
	}
}

func (c *lcChild) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		c.t.Fatalf("writing to the child: %v; stderr:\n%s", err, c.stderr)
	}
}

// signal sends SIGKILL. It may be called from any goroutine, more than
// once, and after the child is reaped.
func (c *lcChild) signal() { c.cmd.Process.Kill() }

// kill sends SIGKILL, reads the child's output to its end and reaps it,
// and returns the lines not read yet. It fails the test unless the child
// died of the SIGKILL, so that a child that failed on its own is not
// taken for a crash.
func (c *lcChild) kill() []string {
	c.t.Helper()
	c.signal()
	var rest []string
	for l := range c.lines {
		rest = append(rest, l)
	}
	err := c.cmd.Wait()
	c.done = true
	ws, _ := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		c.t.Fatalf("child ended by itself (%v); output:\n%s\nstderr:\n%s", err, strings.Join(rest, "\n"), c.stderr)
	}
	return rest
}

// lcTail keeps the last 16 KiB written to it.
type lcTail struct {
	mu sync.Mutex
	b  []byte
}

func (w *lcTail) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if len(w.b) > 16<<10 {
		w.b = w.b[len(w.b)-16<<10:]
	}
	return len(p), nil
}

func (w *lcTail) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b)
}

// lcOut writes a child's protocol lines, one write each, from any
// goroutine.
var lcOut struct {
	mu sync.Mutex
}

func lcPrintf(format string, args ...any) {
	lcOut.mu.Lock()
	defer lcOut.mu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// lcExitWithParent ends the child when the parent closes its standard
// input, or dies.
func lcExitWithParent(onLine func(string)) {
	go func() {
		br := bufio.NewReader(os.Stdin)
		for {
			s, err := br.ReadString('\n')
			if err != nil {
				os.Exit(3)
			}
			if onLine != nil {
				onLine(strings.TrimSuffix(s, "\n"))
			}
		}
	}()
}

// lcLiveOptions are a device's options for these tests: back off
// briefly, since the relay comes back at once.
func lcLiveOptions(token string) *Options {
	return &Options{TokenSource: StaticToken(token), BackoffMin: 5 * time.Millisecond, BackoffMax: 100 * time.Millisecond}
}

// lcLiveProfile is the live profile of the devices. It runs only on
// Wi-Fi: a device opened on another network does nothing until the test
// has installed its hooks and says it is on Wi-Fi.
func lcLiveProfile(url, apiKey string) Profile {
	return Profile{Name: "live", URL: url, APIKey: apiKey, Mode: policy.Live, Type: policy.TwoWay,
		Collections: []string{lcColl}, Networks: policy.Networks{policy.WiFi}, Timeout: 10 * time.Second}
}

// lcDoc is a record's state as one device holds it.
type lcDoc struct {
	heads   crdt.Heads
	v       string // field v, as printed
	deleted bool
}

// lcDocs reads every record of the collection on r.
func lcDocs(t *testing.T, r *Replica) map[string]lcDoc {
	t.Helper()
	recs, err := collect(r.Collection(lcColl).Scan(ScanOptions{Deleted: true}))
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	out := map[string]lcDoc{}
	for _, rec := range recs {
		out[rec.ID] = lcDoc{heads: rec.Heads, v: fmt.Sprint(rec.Fields["v"]), deleted: rec.Deleted}
	}
	return out
}

// lcHasAll reports whether doc (a saved document) holds every change of
// heads.
func lcHasAll(t *testing.T, doc []byte, heads crdt.Heads) bool {
	t.Helper()
	d, err := crdt.Load(doc, "")
	if err != nil {
		t.Fatalf("loading the relay's document: %v", err)
	}
	for _, h := range heads {
		if !d.Has(h) {
			return false
		}
	}
	return true
}

// lcNoDuplicates checks that the relay's log holds each change once: a
// change pushed again (after a crash lost its acknowledgement, or by a
// device that applied it early) is acknowledged without being stored
// again.
func lcNoDuplicates(t *testing.T, s relay.Store, c relay.Coll) int {
	t.Helper()
	ctx := context.Background()
	// By record: two records' first changes are alike when made alike.
	type key struct {
		record string
		hash   crdt.Hash
	}
	seen := map[key]uint64{}
	after, n := uint64(0), 0
	for {
		es, err := s.Log(ctx, c, after, 1000)
		var te *relay.TruncatedError
		if errors.As(err, &te) {
			after = te.Horizon
			continue
		}
		if err != nil {
			t.Fatalf("reading the relay's log: %v", err)
		}
		if len(es) == 0 {
			return n
		}
		for _, e := range es {
			infos, err := crdt.ParseChanges(e.Changes)
			if err != nil {
				t.Fatalf("log entry %d: %v", e.Seq, err)
			}
			for _, ci := range infos {
				k := key{e.Record, ci.Hash}
				if first, ok := seen[k]; ok {
					t.Errorf("change %x of %s is stored twice: log entries %d and %d", ci.Hash[:6], e.Record, first, e.Seq)
				}
				seen[k] = e.Seq
				n++
			}
			after = e.Seq
		}
	}
}

// lcConverge waits until a and b hold no pending changes and the same
// documents as the relay (read by relayDocs), with the values want names,
// and fails the test with the difference if that does not happen within
// a minute: the devices are live, so they converge by themselves.
func lcConverge(t *testing.T, want map[string]string, relayDocs func() (map[string]lcDoc, error), reps ...*Replica) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		why := lcDiffer(t, want, relayDocs, reps)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for i, r := range reps {
				ids, err := r.Collection(lcColl).Pending()
				fmt.Fprintf(&b, "\ndevice %d: pending %v (%v), status %+v", i, ids, err, lcStatus(r))
				docs := lcDocs(t, r)
				for _, id := range slices.Sorted(maps.Keys(docs)) {
					fmt.Fprintf(&b, "\n  %s %+v", id, docs[id])
				}
			}
			if ref, err := relayDocs(); err == nil {
				b.WriteString("\nrelay:")
				for _, id := range slices.Sorted(maps.Keys(ref)) {
					fmt.Fprintf(&b, "\n  %s %+v", id, ref[id])
				}
			}
			t.Fatalf("devices and relay did not converge within a minute: %s%s", why, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lcStatus is r's live profile's status.
func lcStatus(r *Replica) SyncStatus {
	st, _ := r.Status("live")
	return st
}

// lcDiffer says how the replicas and the relay differ from each other and
// from want, or "" if they do not.
func lcDiffer(t *testing.T, want map[string]string, relayDocs func() (map[string]lcDoc, error), reps []*Replica) string {
	t.Helper()
	ref, err := relayDocs()
	if err != nil {
		return fmt.Sprintf("reading the relay: %v", err)
	}
	for id, v := range want {
		if ref[id].v != v {
			return fmt.Sprintf("relay: %s has v=%q, want %q (the last edit acknowledged to the app)", id, ref[id].v, v)
		}
	}
	for i, r := range reps {
		if ids, err := r.Collection(lcColl).Pending(); err != nil || len(ids) > 0 {
			return fmt.Sprintf("device %d: pending %v (%v)", i, ids, err)
		}
		got := lcDocs(t, r)
		for _, id := range slices.Sorted(maps.Keys(ref)) {
			if g, w := got[id], ref[id]; !g.heads.Equal(w.heads) || g.v != w.v || g.deleted != w.deleted {
				return fmt.Sprintf("device %d: %s = %+v, relay holds %+v", i, id, g, w)
			}
		}
		if len(got) != len(ref) {
			return fmt.Sprintf("device %d holds %d records, the relay %d", i, len(got), len(ref))
		}
	}
	return ""
}

// TestLiveCrashDevice kills a device (a child process) while it edits a
// live collection, at seeded points, some random and some exact: while
// the fsync of an edit it already sent to the relay is held, and after
// that fsync before the edit's call returns. After each kill the store is
// opened again and must hold every edit whose call returned (or that edit
// plus the one in flight), every record the device counts as
// acknowledged must be held by the relay, and the relay must hold no
// change twice. At the end the device, another live device that takes
// early live messages, and the relay must hold the same documents, with
// the last value of every record as the device's app last saw it.
func TestLiveCrashDevice(t *testing.T) {
	if os.Getenv(lcEnvDevDir) != "" {
		t.Skip("inside the device child")
	}
	seed := lcSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0xdec0de))
	lcUseEarlyApply(t)
	rounds := 10
	if testing.Short() {
		rounds = 3
	}

	st, err := badgerstore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	rl := relaytest.Start(t, &relaytest.Options{Store: st})
	c := relay.Coll{Tenant: rl.App.ID, Collection: lcColl}
	ctx := context.Background()
	relayDocs := func() (map[string]lcDoc, error) {
		out := map[string]lcDoc{}
		for i := range lcRecords {
			id := lcRecord(i)
			doc, heads, err := relay.Document(ctx, rl.Store, c, id)
			if errors.Is(err, relay.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			d, err := crdt.Load(doc, "")
			if err != nil {
				return nil, err
			}
			v, _, err := d.Lookup(crdt.Path{"v"})
			if err != nil {
				return nil, err
			}
			out[id] = lcDoc{heads: heads, v: fmt.Sprint(v), deleted: d.Deleted()}
		}
		return out, nil
	}

	// b watches live, taking early live messages.
	b := open(t, t.TempDir(), lcLiveOptions(rl.Token))
	if err := b.AddProfile(lcLiveProfile(rl.URL, rl.App.APIKey)); err != nil {
		t.Fatal(err)
	}
	b.SetNetwork(policy.WiFi)

	dir := t.TempDir()
	model := map[string]string{} // v of each record, as the device's last returned edit left it
	var early, beforeRounds int
	for round := range rounds {
		plan := lcDevicePlan{seed: rng.Uint64(), base: int64(round+1) * 1_000_000, pauseAt: 0}
		// Kill at random (after kill edits returned, lag edits' time
		// later), or hold an fsync and kill there.
		kill, lag := 1+rng.IntN(60), 2*rng.Float64()
		switch rng.IntN(3) {
		case 1:
			plan.pauseAt, plan.pauseMode = 1+rng.IntN(40), "before"
			beforeRounds++
		case 2:
			plan.pauseAt, plan.pauseMode = 1+rng.IntN(40), "after"
		}
		child := lcStart(t, "TestLiveCrashDeviceChild", []string{
			lcEnvDevDir + "=" + dir, lcEnvDevURL + "=" + rl.URL, lcEnvDevKey + "=" + rl.App.APIKey,
			lcEnvDevToken + "=" + rl.Token, lcEnvDevPlan + "=" + plan.String(),
		})
		var (
			inflight *lcEdit // the edit whose call has not returned
			returned int
			first    time.Time
			timer    *time.Timer
			proto    error
			how      string
		)
		apply := func(l string) {
			kind, rest, _ := strings.Cut(l, " ")
			switch kind {
			case "try":
				var e lcEdit
				if _, err := fmt.Sscan(rest, &e.seq, &e.id, &e.v); err != nil || inflight != nil {
					proto = cmpOr(proto, fmt.Errorf("line %q with %+v in flight (%v)", l, inflight, err))
				}
				inflight = &e
			case "ok":
				var seq int64
				if _, err := fmt.Sscan(rest, &seq); err != nil || inflight == nil || inflight.seq != seq {
					proto = cmpOr(proto, fmt.Errorf("line %q with %+v in flight (%v)", l, inflight, err))
					return
				}
				model[inflight.id] = strconv.FormatInt(inflight.v, 10)
				inflight = nil
				if returned++; returned == 1 {
					first = time.Now()
				}
				if timer == nil && plan.pauseAt == 0 && returned == kill {
					per := time.Since(first) / time.Duration(returned)
					timer = time.AfterFunc(time.Duration(lag*float64(per)), child.signal)
					how = fmt.Sprintf("killed %.2f edits' time after edit %d returned", lag, kill)
				}
			case "paused":
				// The child holds an fsync: kill it there.
				how = "killed holding fsync " + rest
				if rest == "before" && inflight != nil {
					// The edit was sent to the relay while its fsync
					// runs; wait until the relay holds it, so the kill
					// lands where the relay has an edit the device has
					// not made durable. An early push is a shortcut,
					// never certain: give up after a while.
					if lcRelayHas(relayDocs, inflight, 3*time.Second) {
						early++
						how += ", the relay holding the edit in flight"
					}
				}
				child.signal()
			default:
				proto = cmpOr(proto, fmt.Errorf("unexpected line %q", l))
			}
		}
		for l := range child.lines {
			apply(l)
		}
		for _, l := range child.kill() {
			apply(l)
		}
		if timer != nil {
			timer.Stop()
		}
		if proto != nil {
			t.Fatalf("round %d: child protocol: %v\nstderr:\n%s", round, proto, child.stderr)
		}
		if how == "" {
			t.Fatalf("round %d: the child was not killed by the test; stderr:\n%s", round, child.stderr)
		}
		landed := lcCheckDevice(t, dir, model, inflight, relayDocs, rl.Store, c)
		t.Logf("round %d: %s; %d edits returned, in flight %+v landed=%v", round, how, returned, inflight, landed)
		if t.Failed() {
			return
		}
	}
	t.Logf("%d of %d rounds held an fsync with the edit at the relay", early, beforeRounds)
	if beforeRounds >= 3 && early == 0 {
		t.Errorf("no edit reached the relay while its fsync was held, in %d rounds: early pushes are not tested", beforeRounds)
	}

	// The device comes back for good: everything converges.
	d := open(t, dir, lcLiveOptions(rl.Token))
	d.SetNetwork(policy.WiFi)
	lcConverge(t, model, relayDocs, d, b)
	n := lcNoDuplicates(t, rl.Store, c)
	t.Logf("converged: %d records, %d changes in the relay's log", len(model), n)
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// lcEdit is one edit of the device child: record id's v set to v.
type lcEdit struct {
	seq int64
	id  string
	v   int64
}

// lcRelayHas waits up to d for the relay to hold e.
func lcRelayHas(relayDocs func() (map[string]lcDoc, error), e *lcEdit, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		docs, err := relayDocs()
		if err == nil && docs[e.id].v == strconv.FormatInt(e.v, 10) {
			return true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}

// lcCheckDevice opens the killed device's store, without syncing, and
// checks it: each record has the value of its last edit that returned, or
// that of the edit in flight, which it then adds to model; and each
// record the device does not count as pending is held by the relay as the
// device holds it. It returns whether the edit in flight landed.
func lcCheckDevice(t *testing.T, dir string, model map[string]string, inflight *lcEdit, relayDocs func() (map[string]lcDoc, error), s relay.Store, c relay.Coll) bool {
	t.Helper()
	r, err := Open(dir, &Options{LocalOnly: true})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer r.Close()
	got := lcDocs(t, r)
	landed := false
	for id, doc := range got {
		switch want := model[id]; {
		case doc.v == want:
		case inflight != nil && inflight.id == id && doc.v == strconv.FormatInt(inflight.v, 10):
			landed = true
		default:
			t.Errorf("%s: v=%q after the kill, want %q (the last edit that returned), or %+v in flight", id, doc.v, want, inflight)
		}
	}
	for id, want := range model {
		if _, ok := got[id]; !ok {
			t.Errorf("%s: lost after the kill; its last edit that returned set v=%s", id, want)
		}
	}
	if landed {
		model[inflight.id] = strconv.FormatInt(inflight.v, 10)
	}
	pending, err := r.Collection(lcColl).Pending()
	if err != nil {
		t.Fatal(err)
	}
	for id, doc := range got {
		if slices.Contains(pending, id) {
			continue
		}
		// Acknowledged: the relay holds the record's changes, durably.
		rdoc, _, err := relay.Document(context.Background(), s, c, id)
		if err != nil {
			t.Errorf("%s: not pending on the device, so acknowledged, but the relay: %v", id, err)
			continue
		}
		if !lcHasAll(t, rdoc, doc.heads) {
			t.Errorf("%s: not pending on the device at heads %v, but the relay lacks some of them", id, doc.heads)
		}
	}
	lcNoDuplicates(t, s, c)
	return landed
}

// lcDevicePlan is what a device child does: its edits' choices (seed),
// the number its values start from (base), and the fsync it holds, if
// any: pauseAt counts the fsyncs of its edits, pauseMode says whether it
// is held before the fsync runs or after.
type lcDevicePlan struct {
	seed      uint64
	base      int64
	pauseAt   int
	pauseMode string
}

func (p lcDevicePlan) String() string {
	return fmt.Sprintf("%d %d %d %s", p.seed, p.base, p.pauseAt, cmpOrString(p.pauseMode, "-"))
}

func cmpOrString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestLiveCrashDeviceChild is the device TestLiveCrashDevice kills: it
// opens its store with the live profile, and sets records' v, one call
// at a time, saying on its standard output
//
//	try SEQ ID V   before the call
//	ok SEQ         after it returned nil
//	paused MODE    when it holds an fsync (before or after it ran)
func TestLiveCrashDeviceChild(t *testing.T) {
	dir := os.Getenv(lcEnvDevDir)
	if dir == "" {
		t.Skip("helper process for TestLiveCrashDevice")
	}
	lcExitWithParent(nil)
	var plan lcDevicePlan
	if _, err := fmt.Sscan(os.Getenv(lcEnvDevPlan), &plan.seed, &plan.base, &plan.pauseAt, &plan.pauseMode); err != nil {
		t.Fatalf("%s: %v", lcEnvDevPlan, err)
	}
	earlyApply = true
	live := make(chan struct{})
	var liveOnce sync.Once
	opts := lcLiveOptions(os.Getenv(lcEnvDevToken))
	opts.Listener.Status = func(st SyncStatus) {
		if st.Profile == "live" && st.State == StateLive {
			liveOnce.Do(func() { close(live) })
		}
	}
	// The stored profile runs only on Wi-Fi: nothing syncs before the
	// hook below is in place.
	r, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	var syncs atomic.Int64
	run := r.fsync.Run
	r.fsync.Run = func() error {
		n := syncs.Add(1)
		if n == int64(plan.pauseAt) && plan.pauseMode == "before" {
			lcPrintf("paused before")
			select {}
		}
		err := run()
		if n == int64(plan.pauseAt) && plan.pauseMode == "after" {
			lcPrintf("paused after")
			select {}
		}
		return err
	}
	if _, err := r.Profile("live"); errors.Is(err, ErrNoProfile) {
		if err := r.AddProfile(lcLiveProfile(os.Getenv(lcEnvDevURL), os.Getenv(lcEnvDevKey))); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	r.SetNetwork(policy.WiFi)
	// Edit once live, so that edits go out while their fsyncs run.
	select {
	case <-live:
	case <-time.After(time.Minute):
		t.Fatal("the live profile did not go live")
	}
	syncs.Store(0) // count the edits' fsyncs
	rng := rand.New(rand.NewPCG(plan.seed, 1))
	col := r.Collection(lcColl)
	for seq := int64(1); ; seq++ {
		id, v := lcRecord(rng.IntN(lcRecords)), plan.base+seq
		lcPrintf("try %d %s %d", seq, id, v)
		if err := col.Put(id, map[string]any{"v": v}); err != nil {
			t.Fatalf("put %s: %v", id, err)
		}
		lcPrintf("ok %d", seq)
	}
}
