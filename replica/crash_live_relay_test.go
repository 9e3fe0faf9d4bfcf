//go:build unix

package replica

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
)

const (
	// Set only in a relay child.
	lcEnvRelayDir = "FERRY_LIVECRASH_RELAY_DIR"
	lcEnvRelayApp = "FERRY_LIVECRASH_RELAY_APP" // the app, as JSON
)

// TestLiveCrashRelay kills the relay (a child process over a Badger store)
// while device a edits live and device b takes the relay's early live
// messages, at seeded points: at random, and exactly at a group of pushes
// the relay has fanned out early and not written yet, or has written and
// not acknowledged. It restarts the relay on the same store and checks:
//
//   - each record a counts as acknowledged (not pending) is held by the
//     restarted relay as a holds it;
//   - b's cursor names no entry the restarted relay lacks;
//   - a change b applied early and the relay lost reaches the relay again
//     with a shut down: b pushes it;
//   - at the end, a, b and the relay hold the same documents, with a's
//     last edits, b's cursor is the relay's head, and the relay's log
//     holds each change once.
func TestLiveCrashRelay(t *testing.T) {
	if os.Getenv(lcEnvRelayDir) != "" {
		t.Skip("inside the relay child")
	}
	seed := lcSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x4e1a7))
	lcUseEarlyApply(t)
	rounds := 10
	if testing.Short() {
		rounds = 3
	}

	// One listening socket for every relay process, passed to each: the
	// devices' URL stays, and a device that connects while no relay runs
	// waits in the backlog for the next one.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	url := "ws://" + ln.Addr().String() + "/ws"
	app := relay.NewApp("test")
	appJSON, err := json.Marshal(app)
	if err != nil {
		t.Fatal(err)
	}
	token, err := relay.IssueToken(app, relay.TokenRequest{Subject: "crash", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	relayDir := t.TempDir()
	startRelay := func() (*lcChild, uint64) {
		t.Helper()
		child := lcStart(t, "TestLiveCrashRelayChild", []string{lcEnvRelayDir + "=" + relayDir, lcEnvRelayApp + "=" + string(appJSON)}, lf)
		var head uint64
		if _, err := fmt.Sscanf(child.nextWith("ready ", nil), "ready %d", &head); err != nil {
			t.Fatalf("relay child: %v", err)
		}
		return child, head
	}

	// c reads what the relay holds, by pulling it.
	c := open(t, "", &Options{InMemory: true, TokenSource: StaticToken(token)})
	cp := lcLiveProfile(url, app.APIKey)
	cp.Name, cp.Mode, cp.Type, cp.Networks = "p", policy.Manual, policy.OneWayFromServer, nil
	if err := c.AddProfile(cp); err != nil {
		t.Fatal(err)
	}
	relayDocs := func() (map[string]lcDoc, error) {
		if _, err := c.Sync(context.Background(), "p"); err != nil {
			return nil, err
		}
		return lcDocs(t, c), nil
	}

	dirA := t.TempDir()
	openA := func() *Replica {
		a := open(t, dirA, lcLiveOptions(token))
		a.SetNetwork(policy.WiFi)
		return a
	}
	a := open(t, dirA, lcLiveOptions(token))
	b := open(t, t.TempDir(), lcLiveOptions(token))
	for _, r := range []*Replica{a, b} {
		if err := r.AddProfile(lcLiveProfile(url, app.APIKey)); err != nil {
			t.Fatal(err)
		}
		r.SetNetwork(policy.WiFi)
	}
	for i := range lcRecords {
		if err := a.Collection(lcColl).Create(lcRecord(i), map[string]any{"v": int64(0)}); err != nil {
			t.Fatal(err)
		}
	}
	model := map[string]string{} // v of each record, as a's last returned edit left it
	for i := range lcRecords {
		model[lcRecord(i)] = "0"
	}

	var (
		ackedA   map[string]crdt.Heads // records a counted as acknowledged at the last kill
		cursorB  uint64                // b's cursor at the last kill
		lost     *lcEarly              // a change b applied early and the relay lost, a shut down
		seq      int64
		stats    = map[string]int{}
		relayNow *lcChild
	)
	for round := 0; ; round++ {
		child, head := startRelay()
		relayNow = child
		// What held before the kill holds after the restart.
		if cursorB > head {
			t.Fatalf("round %d: b's cursor is %d, but the restarted relay's log ends at %d: it names entries the relay lost", round, cursorB, head)
		}
		if ackedA != nil {
			docs, err := relayDocs()
			if err != nil {
				t.Fatalf("round %d: pulling from the restarted relay: %v", round, err)
			}
			for _, id := range slices.Sorted(maps.Keys(ackedA)) {
				if !lcHolds(docs[id].heads, ackedA[id], c, id) {
					t.Errorf("round %d: %s was acknowledged to a at heads %v, the restarted relay holds %v without them", round, id, ackedA[id], docs[id].heads)
				}
			}
		}
		if lost != nil {
			// Only b holds it now: b pushes it again.
			start := time.Now()
			if !lcWaitRelay(relayDocs, c, lost) {
				t.Fatalf("round %d: %s at heads %v, applied early by b and lost by the relay, never reached the relay again with a shut down", round, lost.id, lost.heads)
			}
			t.Logf("round %d: b pushed %s again, %v after the relay's restart", round, lost.id, time.Since(start).Round(time.Millisecond))
			a = openA()
			lost = nil
		}
		if t.Failed() {
			child.kill()
			return
		}
		if round == rounds {
			break
		}

		// Arm the relay's hook, and edit until it is killed.
		mode, at := "none", 1+rng.IntN(15)
		switch rng.IntN(3) {
		case 1:
			mode = "before"
		case 2:
			mode = "after"
		}
		lag := 2 * rng.Float64()
		child.send(fmt.Sprintf("arm %d %s", at, mode))
		ed := lcStartEditor(t, a, rng.Uint64(), &seq)
		start := time.Now()
		how, early := lcKillRelay(t, child, b, ed, mode, at, lag)
		ed.stop()
		maps.Copy(model, ed.returned)
		kind := strings.SplitN(how, ",", 2)[0]
		if early != nil {
			kind += ", b applied it early"
		}
		stats[kind]++

		// What a counts as acknowledged, and b's cursor, now that the
		// relay is gone: neither can grow until it is back.
		pending, err := a.Collection(lcColl).Pending()
		if err != nil {
			t.Fatal(err)
		}
		ackedA = map[string]crdt.Heads{}
		for i := range lcRecords {
			id := lcRecord(i)
			if slices.Contains(pending, id) {
				continue
			}
			h, err := a.Collection(lcColl).Heads(id)
			if err != nil {
				t.Fatal(err)
			}
			ackedA[id] = h
		}
		st, err := b.loadSyncState("live", lcColl)
		if err != nil {
			t.Fatal(err)
		}
		cursorB = st.Cursor
		if early != nil && rng.IntN(2) == 0 {
			// The relay lost a group b applied early: with a shut down,
			// only b can bring it back.
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			lost = early
			stats["a shut down, b pushes what it applied early"]++
		}
		t.Logf("round %d: %s, %v after arming it; a: %d edits returned, %d of %d records acknowledged; b's cursor %d", round, how, time.Since(start).Round(time.Millisecond), ed.edits, len(ackedA), lcRecords, cursorB)
	}

	// The relay stays: everything converges, b's cursor reaches the
	// relay's head, and no change is stored twice.
	start := time.Now()
	lcConverge(t, model, relayDocs, a, b)
	t.Logf("converged %v after the last restart", time.Since(start).Round(time.Millisecond))
	stB, err := b.loadSyncState("live", lcColl)
	if err != nil {
		t.Fatal(err)
	}
	relayNow.send("head")
	var head uint64
	if _, err := fmt.Sscanf(relayNow.nextWith("head ", nil), "head %d", &head); err != nil {
		t.Fatal(err)
	}
	// b's own pushes, sent back to it, move only its cursor, after the
	// documents agree.
	for deadline := time.Now().Add(time.Minute); stB.Cursor != head && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if stB, err = b.loadSyncState("live", lcColl); err != nil {
			t.Fatal(err)
		}
	}
	if stB.Cursor != head {
		t.Errorf("b's cursor is %d after converging, the relay's head %d", stB.Cursor, head)
	}
	relayNow.kill()
	st, err := badgerstore.Open(relayDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n := lcNoDuplicates(t, st, relay.Coll{Tenant: app.ID, Collection: lcColl})
	t.Logf("converged: %d changes in the relay's log, head %d; kills: %v", n, head, stats)
}

// lcHolds reports whether heads, as a puller holds a record, hold every
// change of want: c's document of record id, pulled, has them.
func lcHolds(heads, want crdt.Heads, c *Replica, id string) bool {
	if heads.Equal(want) {
		return true
	}
	ok := false
	c.Collection(lcColl).read(id, func(d *crdt.Doc, _ meta) error {
		ok = true
		for _, h := range want {
			ok = ok && d.Has(h)
		}
		return nil
	})
	return ok
}

// lcEarly is a record's heads as a group of pushes leaves it, which b
// applied from an early live message.
type lcEarly struct {
	id    string
	heads crdt.Heads
}

// lcWaitRelay waits until the relay holds e (c pulls it), for up to a
// minute.
func lcWaitRelay(relayDocs func() (map[string]lcDoc, error), c *Replica, e *lcEarly) bool {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if docs, err := relayDocs(); err == nil && lcHolds(docs[e.id].heads, e.heads, c, e.id) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// lcKillRelay waits for the armed relay child to reach its kill point and
// kills it. In mode before, the relay holds a group it fanned out early and
// has not written: it waits (a while at most: b takes an early message
// only when caught up) until b has applied it, which it returns.
func lcKillRelay(t *testing.T, child *lcChild, b *Replica, ed *lcEditor, mode string, at int, lag float64) (string, *lcEarly) {
	t.Helper()
	if mode == "none" {
		// At random: lag appends' time after append at.
		var first time.Time
		for n := 1; ; n++ {
			child.nextWith("appended ", nil)
			if n == 1 {
				first = time.Now()
			}
			if n == at {
				per := time.Since(first) / time.Duration(max(n-1, 1))
				time.Sleep(time.Duration(lag * float64(per)))
				child.kill()
				return fmt.Sprintf("killed at random, %.2f appends' time after append %d", lag, at), nil
			}
		}
	}
	l := child.nextWith("paused ", nil)
	// The relay takes nothing more: edits would only pile up.
	ed.stop()
	f := strings.Fields(l)
	if len(f) < 2 || f[1] != mode {
		child.kill()
		t.Fatalf("relay child said %q, armed for %s", l, mode)
	}
	if mode == "after" {
		child.kill()
		return "killed after writing a group before acknowledging or publishing it", nil
	}
	var group []lcEarly
	for _, rec := range f[3:] {
		id, hs, _ := strings.Cut(rec, "=")
		var heads crdt.Heads
		for _, h := range strings.Split(hs, ",") {
			raw, err := hex.DecodeString(h)
			if err != nil || len(raw) != len(crdt.Hash{}) {
				child.kill()
				t.Fatalf("relay child said %q: %v", l, err)
			}
			heads = append(heads, crdt.Hash(raw))
		}
		group = append(group, lcEarly{id: id, heads: heads})
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range group {
			if h, err := b.Collection(lcColl).Heads(e.id); err == nil && h.Equal(e.heads) {
				child.kill()
				return "killed after the early fan-out before the write, b applied it early", &e
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	child.kill()
	return "killed after the early fan-out before the write, b had not applied it", nil
}

// lcEditor sets records' v on a device, one call at a time, until
// stopped, and keeps the values of the calls that returned.
type lcEditor struct {
	once     sync.Once
	quit     chan struct{}
	done     chan struct{}
	returned map[string]string // read after stop
	edits    int               // read after stop
}

func lcStartEditor(t *testing.T, r *Replica, seed uint64, seq *int64) *lcEditor {
	e := &lcEditor{quit: make(chan struct{}), done: make(chan struct{}), returned: map[string]string{}}
	rng := rand.New(rand.NewPCG(seed, 2))
	col := r.Collection(lcColl)
	go func() {
		defer close(e.done)
		for {
			select {
			case <-e.quit:
				return
			default:
			}
			*seq++
			id, v := lcRecord(rng.IntN(lcRecords)), *seq
			err := col.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"v"}, v) })
			if err != nil {
				t.Errorf("update %s: %v", id, err)
				return
			}
			e.returned[id] = strconv.FormatInt(v, 10)
			e.edits++
		}
	}()
	t.Cleanup(e.stop) // before the replica closes, on a failure
	return e
}

func (e *lcEditor) stop() {
	e.once.Do(func() { close(e.quit) })
	<-e.done
}

// TestLiveCrashRelayChild is the relay TestLiveCrashRelay kills: a relay
// over a Badger store, serving on the socket the parent passes it, with a
// hook on the store's appends. It says on its standard output
//
//	ready HEAD                 once serving, with the collection's head
//	appended N SEQ             after the Nth append since armed
//	paused before N ID=H,...   holding the Nth append before writing it
//	                           (its group was fanned out early), with
//	                           each record's heads as the group leaves them
//	paused after N             holding it after writing it
//	head SEQ                   answering "head"
//
// and reads "arm N MODE" (MODE before, after or none) and "head" on its
// standard input.
func TestLiveCrashRelayChild(t *testing.T) {
	dir := os.Getenv(lcEnvRelayDir)
	if dir == "" {
		t.Skip("helper process for TestLiveCrashRelay")
	}
	var app relay.App
	if err := json.Unmarshal([]byte(os.Getenv(lcEnvRelayApp)), &app); err != nil {
		t.Fatalf("%s: %v", lcEnvRelayApp, err)
	}
	st, err := badgerstore.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	hs := &lcHookStore{Store: st}
	auth, err := relay.NewAuth([]relay.App{app}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.NewServer(&relay.Options{Store: hs, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		t.Fatal(err)
	}
	c := relay.Coll{Tenant: app.ID, Collection: lcColl}
	head, err := st.Head(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	go (&http.Server{Handler: srv.Handler()}).Serve(ln)
	lcPrintf("ready %d", head)
	commands := make(chan string)
	lcExitWithParent(func(l string) { commands <- l })
	for l := range commands {
		switch f := strings.Fields(l); {
		case len(f) == 3 && f[0] == "arm":
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("command %q: %v", l, err)
			}
			hs.arm(n, f[2])
		case len(f) == 1 && f[0] == "head":
			head, err := st.Head(context.Background(), c)
			if err != nil {
				t.Fatal(err)
			}
			lcPrintf("head %d", head)
		default:
			t.Fatalf("command %q", l)
		}
	}
}

// lcHookStore is a Badger store whose appends the relay child counts and
// holds where armed to.
type lcHookStore struct {
	*badgerstore.Store
	mu   sync.Mutex
	n    int
	at   int
	mode string
}

func (s *lcHookStore) arm(at int, mode string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n, s.at, s.mode = 0, at, mode
}

// Append is called by the relay's committer once the group's changes are
// checked and fanned out to early subscribers (committer.flush).
func (s *lcHookStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	s.mu.Lock()
	s.n++
	n, mode, hold := s.n, s.mode, ""
	if s.at == n {
		hold = s.mode
	}
	s.mu.Unlock()
	if hold == "before" {
		var recs []string
		for _, e := range entries {
			var hs []string
			for _, h := range e.Heads {
				hs = append(hs, hex.EncodeToString(h[:]))
			}
			recs = append(recs, e.Record+"="+strings.Join(hs, ","))
		}
		lcPrintf("paused before %d %s", n, strings.Join(recs, " "))
		select {}
	}
	seq, err := s.Store.Append(ctx, c, fence, now, entries)
	if hold == "after" {
		lcPrintf("paused after %d %v", n, err)
		select {}
	}
	if mode == "none" {
		lcPrintf("appended %d %d", n, seq)
	}
	return seq, err
}
