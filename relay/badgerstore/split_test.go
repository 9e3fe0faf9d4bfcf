package badgerstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// Appends split across Badger transactions (appendSplit): readers see all
// of one or nothing, a stop between its transactions leaves nothing
// visible and nothing that later writes trip over.

// splitMemTable is the memtable of these tests' stores: a transaction
// takes 15% of it (307 KiB), so splitGroup's 640 KB go in three, and
// everything they write stays in one memtable (no flush runs while a test
// copies or kills a store).
const splitMemTable = 2 << 20

func splitOpen(t *testing.T, dir string) *Store {
	t.Helper()
	return bsOpen(t, dir, &Options{GCInterval: -1, memTableSize: splitMemTable})
}

// splitBase is what the split tests' stores hold before the large append:
// one small entry for each of 16 records.
func splitBase() []relay.Entry {
	var es []relay.Entry
	for i := range 16 {
		es = append(es, bsEntry(fmt.Sprintf("r%02d", i), nil, "1"))
	}
	return es
}

// splitGroup is a group commit onto splitBase too large for one
// transaction: an entry of 40 KB for each record, and a second one for
// r00, built on the first.
func splitGroup(seed uint64) []relay.Entry {
	rng := rand.New(rand.NewPCG(seed, 7))
	var es []relay.Entry
	for i, b := range splitBase() {
		e := relay.Entry{Record: b.Record, Base: b.Heads, Changes: make([]byte, 40<<10)}
		for j := range e.Changes {
			e.Changes[j] = byte(rng.Uint32())
		}
		e.Heads = crdt.Heads{crdt.Hash(sha256.Sum256(e.Changes))}
		es = append(es, e)
		if i == 0 {
			again := bsEntry(b.Record, e.Heads, "3")
			es = append(es, again)
		}
	}
	return es
}

// splitState is what a reader sees of the split tests' collection, each
// part read in one call.
type splitState struct {
	head    uint64
	log     []relay.LogEntry
	records []relay.Record
	usage   relay.Usage
}

func readSplitState(s relay.Store) (splitState, error) {
	ctx := context.Background()
	var st splitState
	var err error
	if st.head, err = s.Head(ctx, bsColl); err != nil {
		return st, err
	}
	if st.log, err = s.Log(ctx, bsColl, 0, 1000); err != nil {
		return st, err
	}
	if st.records, err = s.Records(ctx, bsColl, "", 1000); err != nil {
		return st, err
	}
	st.usage, err = s.Usage(ctx, bsColl.Tenant)
	return st, err
}

// checkSplitState fails unless the store holds the base alone (group
// false) or the base and the whole group, in each part a reader sees.
func checkSplitState(t *testing.T, s relay.Store, group bool) {
	t.Helper()
	st, err := readSplitState(s)
	if err == nil {
		err = st.check(group)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// check returns an error unless st is the base alone (group false) or the
// base and the whole group.
func (st splitState) check(group bool) error {
	for _, err := range st.parts(group) {
		if err != nil {
			return err
		}
	}
	return nil
}

// checkEach is check for a state read while the group is appended: each
// part is read in a call of its own, and so may be from before the group
// or after it, but each is all or nothing.
func (st splitState) checkEach() error {
	before, after := st.parts(false), st.parts(true)
	for i := range before {
		if before[i] != nil && after[i] != nil {
			return fmt.Errorf("neither before nor after the group: %v; %v", before[i], after[i])
		}
	}
	return nil
}

// parts checks each part of st (head, log, records, usage) against the
// base alone (group false) or the base and the whole group.
func (st splitState) parts(group bool) []error {
	base, g := splitBase(), splitGroup(1)
	want := map[string][]byte{}
	heads := map[string]crdt.Heads{}
	for _, e := range base {
		want[e.Record] = append(want[e.Record], e.Changes...)
		heads[e.Record] = e.Heads
	}
	entries := len(base)
	if group {
		for _, e := range g {
			want[e.Record] = append(want[e.Record], e.Changes...)
			heads[e.Record] = e.Heads
		}
		entries += len(g)
	}
	var bytes int64
	for _, d := range want {
		bytes += int64(len(d))
	}
	errs := make([]error, 4)
	if st.head != uint64(entries) {
		errs[0] = fmt.Errorf("head %d, want %d (group %v)", st.head, entries, group)
	}
	if len(st.log) != entries {
		errs[1] = fmt.Errorf("%d log entries, want %d (group %v)", len(st.log), entries, group)
	}
	for i, e := range st.log {
		if e.Seq != uint64(i+1) && errs[1] == nil {
			errs[1] = fmt.Errorf("log entry %d has seq %d", i, e.Seq)
		}
	}
	if len(st.records) != 16 {
		errs[2] = fmt.Errorf("%d records, want 16", len(st.records))
	}
	for _, r := range st.records {
		if (!r.Heads.Equal(heads[r.ID]) || string(r.Data()) != string(want[r.ID])) && errs[2] == nil {
			errs[2] = fmt.Errorf("record %s: %d bytes at %v; want %d bytes at %v (group %v)", r.ID, len(r.Data()), r.Heads, len(want[r.ID]), heads[r.ID], group)
		}
	}
	if st.usage != (relay.Usage{Bytes: bytes, Records: 16}) {
		errs[3] = fmt.Errorf("usage %+v, want %d bytes in 16 records (group %v)", st.usage, bytes, group)
	}
	return errs
}

// splitGarbage returns the keys of log entries past the head, tail keys
// past their record's last entry, and pending keys: what an append that
// was not published leaves.
func splitGarbage(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	err := s.db.View(func(txn *badger.Txn) error {
		head, err := getUint64(txn, collKey("head", bsColl))
		if err != nil {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().KeyCopy(nil)
			switch {
			case bytes.HasPrefix(k, prefixPending):
				out = append(out, fmt.Sprintf("%q", k))
			case bytes.HasPrefix(k, collPrefix("log", bsColl)):
				if seq := binary.BigEndian.Uint64(k[len(k)-8:]); seq > head {
					out = append(out, fmt.Sprintf("log entry %d", seq))
				}
			case bytes.HasPrefix(k, collPrefix("tail", bsColl)):
				_, rest, _ := splitCollKey(k)
				rec := rest[:len(rest)-9]
				seq := binary.BigEndian.Uint64(k[len(k)-8:])
				m, _, err := getRecMeta(txn, bsColl, rec)
				if err != nil {
					return err
				}
				if seq > m.seq {
					out = append(out, fmt.Sprintf("tail key %s@%d", rec, seq))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkSplitWorks checks that s, holding the base and the group if group,
// has no garbage and goes on working: new appends get the next sequence
// numbers, to a record of the group after another record's entry (which
// takes the sequence number an unpublished entry had).
func checkSplitWorks(t *testing.T, s *Store, group bool) {
	t.Helper()
	if g := splitGarbage(t, s); len(g) > 0 {
		t.Fatalf("left after the stop: %v", g)
	}
	st, err := readSplitState(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.check(group); err != nil {
		t.Fatal(err)
	}
	recs := map[string]relay.Record{}
	for _, r := range st.records {
		recs[r.ID] = r
	}
	a := bsEntry("r15", recs["r15"].Heads, "after")
	b := bsEntry("r00", recs["r00"].Heads, "after")
	if h := bsAppend(t, s, 0, time.Now(), a); h != st.head+1 {
		t.Fatalf("append after the stop got %d, want %d", h, st.head+1)
	}
	if h := bsAppend(t, s, 0, time.Now(), b); h != st.head+2 {
		t.Fatalf("append after the stop got %d, want %d", h, st.head+2)
	}
	for _, e := range []relay.Entry{a, b} {
		r, err := s.Record(context.Background(), bsColl, e.Record)
		if err != nil || !r.Heads.Equal(e.Heads) || !bytes.HasSuffix(r.Tail, e.Changes) {
			t.Fatalf("record %s after the stop: %v, %v", e.Record, r.Heads, err)
		}
	}
	log, err := s.Log(context.Background(), bsColl, st.head, 10)
	if err != nil || len(log) != 2 || log[0].Record != "r15" || log[1].Record != "r00" {
		t.Fatalf("log after the stop: %+v, %v", log, err)
	}
}

// A group commit split across transactions is seen by readers all or
// nothing: checked between each of its transactions (by the hook), and by
// a reader polling meanwhile.
func TestSplitAppendAllOrNothing(t *testing.T) {
	s := splitOpen(t, t.TempDir())
	bsAppend(t, s, 0, time.Now(), splitBase()...)
	// What the hook saw after each transaction: published or not.
	var seen []bool
	s.readsInHook = true
	s.splitHook = func(k int) error {
		st, err := readSplitState(s)
		if err != nil {
			return err
		}
		group := st.head > 16
		seen = append(seen, group)
		return st.check(group)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	polls, partial := 0, error(nil)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for partial == nil {
			select {
			case <-stop:
				return
			default:
			}
			st, err := readSplitState(s)
			if err == nil {
				err = st.checkEach()
			}
			partial = err
			polls++
		}
	}()
	g := splitGroup(1)
	h, err := s.Append(context.Background(), bsColl, 0, time.Now(), g)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if partial != nil {
		t.Fatalf("a reader polling meanwhile: %v", partial)
	}
	if want := uint64(16 + len(g)); h != want {
		t.Fatalf("Append = %d, want %d", h, want)
	}
	// Published by its last transaction, and by no earlier one.
	if len(seen) < 3 || slices.Contains(seen[:len(seen)-1], true) || !seen[len(seen)-1] {
		t.Fatalf("after each transaction, published: %v; want false, false, ..., true", seen)
	}
	t.Logf("%d transactions; %d polls meanwhile", len(seen), polls)
	checkSplitWorks(t, s, true)
}

// errStop stands for a process dying between two transactions.
var errStop = errors.New("stopped")

// A split append stopped after each of its transactions: by an error in
// the process (the next write clears what it wrote, and so does reopening
// the store), and by the process dying (envSplitCrash). What was
// acknowledged is there, the group is all there (stopped after it was
// published) or not at all, nothing of it is left behind, and the store
// goes on with the right sequence numbers.
func TestSplitAppendStopped(t *testing.T) {
	if dir := os.Getenv(envSplitCrash); dir != "" {
		splitCrashChild(t, dir)
		return
	}
	// How many transactions the group takes.
	s := splitOpen(t, t.TempDir())
	bsAppend(t, s, 0, time.Now(), splitBase()...)
	n := 0
	s.splitHook = func(k int) error { n = k; return nil }
	bsAppend(t, s, 0, time.Now(), splitGroup(1)...)
	if n < 3 {
		t.Fatalf("the group took %d transactions; want it split", n)
	}
	for k := 1; k <= n; k++ {
		published := k == n
		t.Run(fmt.Sprintf("error after %d of %d", k, n), func(t *testing.T) {
			dir := t.TempDir()
			s := splitOpen(t, dir)
			bsAppend(t, s, 0, time.Now(), splitBase()...)
			s.splitHook = func(i int) error {
				if i == k {
					return errStop
				}
				return nil
			}
			if _, err := s.Append(context.Background(), bsColl, 0, time.Now(), splitGroup(1)); !errors.Is(err, errStop) {
				t.Fatalf("Append = %v, want the hook's error", err)
			}
			s.splitHook = nil
			checkSplitState(t, s, published)
			if !published && len(splitGarbage(t, s)) == 0 {
				t.Fatal("the stopped append left nothing to clear: the test stops it too late")
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = splitOpen(t, dir)
			checkSplitWorks(t, s, published)
		})
		t.Run(fmt.Sprintf("error after %d of %d, same process", k, n), func(t *testing.T) {
			s := splitOpen(t, t.TempDir())
			bsAppend(t, s, 0, time.Now(), splitBase()...)
			s.splitHook = func(i int) error {
				if i == k {
					return errStop
				}
				return nil
			}
			if _, err := s.Append(context.Background(), bsColl, 0, time.Now(), splitGroup(1)); !errors.Is(err, errStop) {
				t.Fatalf("Append = %v, want the hook's error", err)
			}
			s.splitHook = nil
			checkSplitState(t, s, published)
			// The next write to the collection, whatever it is, clears
			// what the append left.
			if _, err := s.Acquire(context.Background(), bsColl, "dev", time.Minute, time.Now()); err != nil {
				t.Fatal(err)
			}
			checkSplitWorks(t, s, published)
		})
		t.Run(fmt.Sprintf("killed after %d of %d", k, n), func(t *testing.T) {
			dir := t.TempDir()
			s := splitOpen(t, dir)
			bsAppend(t, s, 0, time.Now(), splitBase()...)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestSplitAppendStopped$", "-test.count=1")
			cmd.Env = append(os.Environ(), envSplitCrash+"="+dir, envSplitCrashAt+"="+strconv.Itoa(k))
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != splitCrashCode {
				t.Fatalf("the child ended with %v, want exit code %d:\n%s", err, splitCrashCode, out)
			}
			s = splitOpen(t, dir)
			checkSplitWorks(t, s, published)
		})
	}
}

const (
	envSplitCrash   = "FERRY_TEST_SPLIT_CRASH_DIR"
	envSplitCrashAt = "FERRY_TEST_SPLIT_CRASH_AT"
	splitCrashCode  = 17
)

// splitCrashChild appends the group to the store in dir and exits, as a
// killed process would (no Close, nothing flushed), right after the
// transaction named by envSplitCrashAt.
func splitCrashChild(t *testing.T, dir string) {
	k, err := strconv.Atoi(os.Getenv(envSplitCrashAt))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, &Options{GCInterval: -1, memTableSize: splitMemTable})
	if err != nil {
		t.Fatal(err)
	}
	s.splitHook = func(i int) error {
		if i == k {
			os.Exit(splitCrashCode)
		}
		return nil
	}
	_, err = s.Append(context.Background(), bsColl, 0, time.Now(), splitGroup(1))
	t.Fatalf("the append ended (%v) before transaction %d", err, k)
}

// An append whose records' metas do not fit one transaction is refused
// with relay.ErrAppendTooLarge (the relay then writes the group in
// halves), after its entries, already written, are cleared.
func TestSplitAppendTooLarge(t *testing.T) {
	// Transactions of 38 KiB: the metas of 1,000 records do not fit one.
	s := bsOpen(t, t.TempDir(), &Options{GCInterval: -1, Relaxed: true, memTableSize: 256 << 10})
	bsAppend(t, s, 0, time.Now(), bsEntry("first", nil, "1"))
	var es []relay.Entry
	for i := range 1000 {
		es = append(es, bsEntry(fmt.Sprintf("many%04d", i), nil, "1"))
	}
	_, err := s.Append(context.Background(), bsColl, 0, time.Now(), es)
	if !errors.Is(err, relay.ErrAppendTooLarge) || !errors.Is(err, badger.ErrTxnTooBig) {
		t.Fatalf("err = %v, want relay.ErrAppendTooLarge wrapping badger.ErrTxnTooBig", err)
	}
	if g := splitGarbage(t, s); len(g) > 0 {
		t.Fatalf("left after the refused append: %d keys, %v", len(g), g[:min(len(g), 5)])
	}
	if h, _ := s.Head(context.Background(), bsColl); h != 1 {
		t.Fatalf("Head = %d after a refused Append", h)
	}
	// In quarters, it goes through.
	for i := 0; i < 750; i += 250 {
		bsAppend(t, s, 0, time.Now(), es[i:i+250]...)
	}
	if h := bsAppend(t, s, 0, time.Now(), es[750:]...); h != 1001 {
		t.Fatalf("Head = %d, want 1001", h)
	}
	if g := splitGarbage(t, s); len(g) > 0 {
		t.Fatalf("garbage: %v", g[:min(len(g), 5)])
	}
}

// A large append with a stale fence is refused before anything of it is
// written, and with the right fence it goes through. (The publishing
// transaction checks the fence again; the collection's lock keeps the
// lease from changing in between.)
func TestSplitAppendFence(t *testing.T) {
	s := splitOpen(t, t.TempDir())
	now := time.Now()
	l, err := s.Acquire(context.Background(), bsColl, "dev", time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	bsAppend(t, s, l.Fence, now, splitBase()...)
	if _, err := s.Append(context.Background(), bsColl, l.Fence+1, now, splitGroup(1)); !errors.Is(err, relay.ErrStaleFence) {
		t.Fatalf("Append with another fence = %v, want ErrStaleFence", err)
	}
	if _, err := s.Append(context.Background(), bsColl, l.Fence, now.Add(time.Minute), splitGroup(1)); !errors.Is(err, relay.ErrStaleFence) {
		t.Fatalf("Append with an expired fence = %v, want ErrStaleFence", err)
	}
	checkSplitState(t, s, false)
	if g := splitGarbage(t, s); len(g) > 0 {
		t.Fatalf("garbage: %v", g)
	}
	bsAppend(t, s, l.Fence, now, splitGroup(1)...)
	checkSplitState(t, s, true)
}

// A store whose memtable logs were written with larger memtables than
// this version's (64 MiB, by an older Ferry that was killed) opens with
// everything in them: replayed into today's smaller memtable, they would
// not fit.
func TestOpenAfterLargerMemtables(t *testing.T) {
	if dir := os.Getenv(envLargeMemChild); dir != "" {
		largeMemChild(t, dir)
		return
	}
	dir := filepath.Join(t.TempDir(), "store")
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenAfterLargerMemtables$", "-test.count=1")
	cmd.Env = append(os.Environ(), envLargeMemChild+"="+dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != splitCrashCode {
		t.Fatalf("the child ended with %v, want exit code %d:\n%s", err, splitCrashCode, out)
	}
	mems := 0
	for _, n := range dirNames(t, dir) {
		if filepath.Ext(n) == ".mem" {
			mems++
		}
	}
	if mems == 0 {
		t.Fatalf("the killed store left no memtable log: %v", dirNames(t, dir))
	}
	s := bsOpen(t, dir, &Options{GCInterval: -1})
	for i, e := range largeMemEntries() {
		r, err := s.Record(context.Background(), bsColl, e.Record)
		if err != nil || !bytes.Equal(r.Tail, e.Changes) {
			t.Fatalf("record %d after reopening: %d bytes, %v", i, len(r.Tail), err)
		}
	}
}

const envLargeMemChild = "FERRY_TEST_LARGE_MEMTABLE_DIR"

// largeMemEntries are 12 MiB of entries under Badger's value threshold,
// which a 64 MiB memtable keeps in its log.
func largeMemEntries() []relay.Entry {
	var es []relay.Entry
	for i := range 24 {
		e := bsEntry(fmt.Sprintf("big%02d", i), nil, "1")
		e.Changes = bytes.Repeat([]byte{byte(i)}, 512<<10)
		es = append(es, e)
	}
	return es
}

// largeMemChild is TestOpenAfterLargerMemtables' process that is killed:
// it writes largeMemEntries to the store in dir with 64 MiB memtables and
// exits without closing it.
func largeMemChild(t *testing.T, dir string) {
	s, err := Open(dir, &Options{GCInterval: -1, memTableSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range largeMemEntries() {
		if _, err := s.Append(context.Background(), bsColl, 0, time.Now(), []relay.Entry{e}); err != nil {
			t.Fatal(err)
		}
	}
	os.Exit(splitCrashCode)
}

// A compaction that drops more tail entries than one transaction deletes
// goes through: the snapshot first, then the rest of the deletes.
func TestCompactLongTail(t *testing.T) {
	// Transactions of 38 KiB: about 600 deletes each.
	s := bsOpen(t, t.TempDir(), &Options{GCInterval: -1, Relaxed: true, memTableSize: 256 << 10})
	var heads crdt.Heads
	for i := range 2000 {
		e := bsEntry("hot", heads, strconv.Itoa(i))
		bsAppend(t, s, 0, time.Now(), e)
		heads = e.Heads
	}
	bsAppend(t, s, 0, time.Now(), bsEntry("other", nil, "1"))
	snap := bytes.Repeat([]byte{'s'}, 1000)
	if err := s.Compact(context.Background(), bsColl, "hot", snap, 1990); err != nil {
		t.Fatal(err)
	}
	r, err := s.Record(context.Background(), bsColl, "hot")
	if err != nil {
		t.Fatal(err)
	}
	var tail []byte
	for i := 1990; i < 2000; i++ {
		tail = append(tail, bsEntry("hot", nil, strconv.Itoa(i)).Changes...)
	}
	if r.SnapSeq != 1990 || !bytes.Equal(r.Snapshot, snap) || !bytes.Equal(r.Tail, tail) || r.TailEntries != 10 || !r.Heads.Equal(heads) {
		t.Fatalf("after compacting: snapshot to %d, %d bytes, tail %d bytes in %d entries", r.SnapSeq, len(r.Snapshot), len(r.Tail), r.TailEntries)
	}
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: tailPrefix(bsColl, "hot")})
		defer it.Close()
		n := 0
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		if n != 10 {
			return fmt.Errorf("%d tail keys left, want 10", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	u, err := s.Usage(context.Background(), bsColl.Tenant)
	if err != nil || u.Bytes != int64(len(snap)+len(tail)+len(bsEntry("other", nil, "1").Changes)) {
		t.Fatalf("usage %+v, %v", u, err)
	}
	// Truncation drops the log entries the snapshot holds.
	if h, err := s.Truncate(context.Background(), bsColl, 1990); err != nil || h != 1990 {
		t.Fatalf("Truncate = %d, %v", h, err)
	}
}
