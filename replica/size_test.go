package replica

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

var noiseRNG = struct {
	sync.Mutex
	*rand.Rand
}{Rand: rand.New(rand.NewPCG(7, 7))}

// noise returns n bytes of text that does not compress.
func noise(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	noiseRNG.Lock()
	defer noiseRNG.Unlock()
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[noiseRNG.IntN(len(letters))]
	}
	return string(b)
}

// savedSize is the size of a record's document as a relay would hold it.
func savedSize(t *testing.T, r *Replica, coll, id string) int {
	t.Helper()
	n := 0
	c := &Collection{r: r, name: coll}
	if err := c.read(id, func(d *crdt.Doc, _ meta) error { n = len(d.Save()); return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDefaultMaxRecordIsTheRelays(t *testing.T) {
	if got := (&Options{}).withDefaults().MaxRecordBytes; got != transport.DefaultMaxRecord {
		t.Errorf("default MaxRecordBytes %d, want the relay's max_record %d", got, transport.DefaultMaxRecord)
	}
}

// TestRecordLimitIsOnSavedSize: MaxRecordBytes bounds the saved document,
// like the relay's max_record, not the raw changes stored beside it: a
// record whose changes add up past the limit but whose document does not is
// compacted, not refused.
func TestRecordLimitIsOnSavedSize(t *testing.T) {
	const limit = 16 << 10
	r := open(t, "", &Options{InMemory: true, MaxRecordBytes: limit})
	c := coll(t, r, "c")
	// 40 KB of changes, a document of a few hundred bytes.
	for i := range 8 {
		if err := c.Put("a", map[string]any{"v": strings.Repeat(string(rune('a'+i)), 5000)}); err != nil {
			t.Fatalf("write %d of a small document: %v", i, err)
		}
	}
	if n := savedSize(t, r, "c", "a"); n > limit {
		t.Fatalf("document is %d bytes", n)
	}
	if err := c.Put("a", map[string]any{"v": noise(2 * limit)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("write past the limit: %v, want ErrTooLarge", err)
	}
	var m map[string]any
	if err := c.Get("a", &m); err != nil || m["v"] != strings.Repeat("h", 5000) {
		t.Fatalf("record after the refused write: %v", err)
	}
}

// TestSyncRecordUpToMaxRecord: a record grown to just under the relay's
// max_record syncs to a fresh device, among small records; an edit that
// takes it past is refused by the relay (too_large): the record is listed
// as failed, stays pending, and the relay keeps the last version that fit.
func TestSyncRecordUpToMaxRecord(t *testing.T) {
	const maxRecord = 64 << 10
	e := newSyncEnv(t)
	e.swapWith(memstore.New(), func(o *relay.Options) {
		o.Limits = transport.Limits{MaxRecord: maxRecord, MaxFrame: maxRecord + transport.FrameOverhead}
	})
	a := e.device(nil)
	ca := coll(t, a, "c")
	for i := range 20 {
		if err := ca.Put(fmt.Sprintf("s%02d", i), map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	const step = 2 << 10
	fields := map[string]any{}
	for i := 0; ; i++ {
		fields[fmt.Sprint("f", i)] = noise(step)
		if err := ca.Put("big", fields); err != nil {
			t.Fatal(err)
		}
		if savedSize(t, a, "c", "big") > maxRecord-2*step {
			break
		}
	}
	size := savedSize(t, a, "c", "big")
	// Its history, never pushed, is larger than its document and than
	// max_record: it goes in pieces.
	if history, _, _, err := ca.pendingChanges("big"); err != nil || len(history) <= maxRecord {
		t.Fatalf("history of %d bytes (%v); the test needs more than %d", len(history), err, maxRecord)
	}
	if got := mustSync(t, a, "p").Collections[0].ToRelay.Added; got != 21 {
		t.Errorf("sync counted %d records added, want 21", got)
	}

	b := e.device(nil)
	mustSync(t, b, "p")
	if got := getFields(t, b, "c", "big"); len(got) != len(fields) || got["f0"] != fields["f0"] {
		t.Fatalf("fresh device has %d fields of the %d-byte record", len(got), size)
	}
	if recs, err := collect(coll(t, b, "c").Scan(ScanOptions{})); err != nil || len(recs) != 21 {
		t.Errorf("fresh device has %d records (%v), want 21", len(recs), err)
	}

	// Past max_record: the relay refuses, the device says which record.
	fields["past"] = noise(4 * step)
	if err := ca.Put("big", fields); err != nil {
		t.Fatal(err)
	}
	st, err := a.Sync(context.Background(), "p")
	if !errors.Is(err, ErrSyncFailed) || len(st.Collections) != 1 || len(st.Collections[0].Failed) != 1 || st.Collections[0].Failed[0].ID != "big" || !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("sync past max_record: %v, stats %+v", err, st.Collections[0])
	}
	if ids, _ := ca.Pending(); !slices.Contains(ids, "big") {
		t.Errorf("refused record is not pending: %v", ids)
	}
	doc, _, err := relay.Document(context.Background(), e.store, relay.Coll{Tenant: e.app.ID, Collection: "c"}, "big")
	if err != nil || len(doc) > maxRecord {
		t.Fatalf("relay holds %d bytes (%v)", len(doc), err)
	}
	// Another fresh device still syncs the collection whole.
	c := e.device(nil)
	mustSync(t, c, "p")
	if got := getFields(t, c, "c", "big"); got["past"] != nil || len(got) != len(fields)-1 {
		t.Errorf("fresh device got %d fields", len(got))
	}
}

// conflictStore answers the first n Appends with ErrConflict, as a store
// shared with another relay process can.
type conflictStore struct {
	relay.Store
	mu      sync.Mutex
	n       int
	appends int
}

func (s *conflictStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	s.mu.Lock()
	s.appends++
	conflict := s.n > 0
	s.n--
	s.mu.Unlock()
	if conflict {
		return 0, &relay.ConflictError{Record: entries[0].Record}
	}
	return s.Store.Append(ctx, c, fence, now, entries)
}

// TestPushRetriesConflict: when the relay answers conflict (it merged the
// push again several times and the store still refused it), the replica
// pushes again, and the sync succeeds.
func TestPushRetriesConflict(t *testing.T) {
	e := newSyncEnv(t)
	// The relay merges a push at most 8 times: the first push is answered
	// conflict, the second goes through on its second merge.
	st := &conflictStore{Store: memstore.New(), n: 9}
	e.swapWith(st, func(*relay.Options) {})
	a := e.device(nil)
	if err := coll(t, a, "c").Put("r", map[string]any{"v": 1}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")
	st.mu.Lock()
	appends := st.appends
	st.mu.Unlock()
	if appends != 10 {
		t.Errorf("%d appends, want 10 (8 for the first push, 2 for the second)", appends)
	}
	if ids, _ := coll(t, a, "c").Pending(); len(ids) != 0 {
		t.Errorf("pending after sync: %v", ids)
	}
	b := e.device(nil)
	mustSync(t, b, "p")
	if got := getFields(t, b, "c", "r"); got["v"] != int64(1) {
		t.Errorf("other device got %v", got)
	}
}
