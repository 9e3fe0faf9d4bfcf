package relay

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// hub wakes the goroutines waiting on a collection: live subscribers when
// the log grows, lease waiters when a lease is released. A wake-up is only
// a hint to look again at the store, which stays the truth: a waiter takes
// the channel before it reads the store, so no change slips between the
// read and the wait.
//
// The hub holds an entry only while someone waits on the collection, so
// its size follows the waiters, not every collection ever waited on.
type hub struct {
	mu    sync.Mutex
	waits map[Coll]*hubWait

	// recent holds, per collection with live subscribers, the entries the
	// last appends made, so subscribers send them without reading the
	// store back. It is a cache of the log's tail, never the truth: a
	// subscriber whose cursor it does not cover reads the store.
	subs        map[Coll]int
	recent      map[Coll]*recentLog
	recentTotal int // bytes in every recent log

	// early holds, per collection with live subscribers, the group of
	// checked entries its committer is writing, not yet durable, for the
	// subscriptions that take changes early (see committer.flush). A
	// committer writes one group at a time, and a push queued behind it
	// replaces it (committer.join), so there is one at most.
	early map[Coll]earlyGroup
	// earlySubs counts, per collection, the live subscribers that take
	// changes early: with none, nothing is fanned out early (writing).
	earlySubs map[Coll]int
	earlySeq  uint64 // the last group's id

	// writes counts the appends this relay made, per stripe of records
	// (see publish and writeMark): a reader that read a record from the
	// store with no lock held tells by it whether the record may have
	// been written since.
	writes [writeStripes]atomic.Uint64
	seed   maphash.Seed
}

// earlyGroup is a group of entries being written, numbered so that a
// subscription sends each one once; the entries have no sequence numbers
// yet.
type earlyGroup struct {
	id      uint64
	entries []LogEntry
}

// writeStripes is how many counters the records share: two records on
// one stripe only make a reader of one think the other's write was its.
const writeStripes = 1024

// writeMark returns the count of appends to the record's stripe.
func (h *hub) writeMark(k recordKey) uint64 {
	return h.writes[h.stripe(k)].Load()
}

func (h *hub) stripe(k recordKey) uint64 {
	var m maphash.Hash
	m.SetSeed(h.seed)
	m.WriteString(k.c.Tenant)
	m.WriteByte(0)
	m.WriteString(k.c.Collection)
	m.WriteByte(0)
	m.WriteString(k.record)
	return m.Sum64() % writeStripes
}

// recentLog is a collection's latest log entries, consecutive, bounded.
type recentLog struct {
	entries []LogEntry
	bytes   int
	// live is the last live message made from these entries, encoded:
	// subscribers at the same cursor send it as it is, rather than each
	// encoding the same entries again. Its bytes count in recentTotal.
	live *liveFrame
}

// liveFrame is an encoded live message of a collection's entries after
// cursor, up to the entry at last, read with limit.
type liveFrame struct {
	cursor, last uint64
	limit        int
	frame        []byte // the envelope, as transport.Encode writes it
	next         uint64 // the message's Next: the cursor after it
	more         bool
	changes      int64 // the change bytes it carries
}

// Bounds of the recent entries: per collection, and for all together, so
// that memory stays bounded however many collections have subscribers.
const (
	recentEntries = 256
	recentBytes   = 1 << 20
	recentTotal   = 64 << 20
)

type hubWait struct {
	ch      chan struct{} // closed by notify
	waiters int
}

func newHub() *hub {
	return &hub{waits: map[Coll]*hubWait{}, subs: map[Coll]int{}, recent: map[Coll]*recentLog{}, early: map[Coll]earlyGroup{}, earlySubs: map[Coll]int{}, seed: maphash.MakeSeed()}
}

// subscribed counts a live subscriber of c in, one that takes changes
// early if early says so; the returned function counts it out. Recent
// entries are kept while a collection has subscribers.
func (h *hub) subscribed(c Coll, early bool) (done func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs[c]++
	if early {
		h.earlySubs[c]++
	}
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if early {
			if h.earlySubs[c]--; h.earlySubs[c] == 0 {
				delete(h.earlySubs, c)
			}
		}
		if h.subs[c]--; h.subs[c] == 0 {
			delete(h.subs, c)
			h.dropRecentLocked(c)
			delete(h.early, c)
		}
	}
}

// publish records entries a durable append made to c, counting them in
// writes, then wakes c's waiters. entries are consecutive; a gap (an append by another relay
// process, say) starts the recent log afresh.
func (h *hub) publish(c Coll, entries []LogEntry) {
	for _, e := range entries {
		h.writes[h.stripe(recordKey{c, e.Record})].Add(1)
	}
	h.mu.Lock()
	if h.subs[c] > 0 && len(entries) > 0 {
		r := h.recent[c]
		if r == nil || len(r.entries) > 0 && r.entries[len(r.entries)-1].Seq+1 != entries[0].Seq {
			h.dropRecentLocked(c)
			r = &recentLog{}
			h.recent[c] = r
		}
		for _, e := range entries {
			r.entries = append(r.entries, e)
			r.bytes += len(e.Changes)
			h.recentTotal += len(e.Changes)
		}
		for len(r.entries) > recentEntries || r.bytes > recentBytes && len(r.entries) > 1 {
			r.bytes -= len(r.entries[0].Changes)
			h.recentTotal -= len(r.entries[0].Changes)
			r.entries[0] = LogEntry{}
			r.entries = r.entries[1:]
		}
		if h.recentTotal > recentTotal {
			h.dropRecentLocked(c) // its subscribers read the store
		}
	}
	h.wakeLocked(c)
	h.mu.Unlock()
}

// writing records the entries of a group c's committer is about to write,
// checked and not yet durable, and wakes c's waiters, if c has
// subscribers that take changes early. It returns the group's id, for settled (0: not recorded).
// The log entries are made only then: most collections have no such
// subscriber, and a group is written for every few pushes.
func (h *hub) writing(c Coll, entries []Entry) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.earlySubs[c] == 0 || len(entries) == 0 {
		return 0
	}
	h.earlySeq++
	h.early[c] = earlyGroup{id: h.earlySeq, entries: earlyEntries(entries)}
	h.wakeLocked(c)
	return h.earlySeq
}

// settled forgets group id of c: durable (published) or refused.
func (h *hub) settled(c Coll, id uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if g, ok := h.early[c]; ok && g.id == id {
		delete(h.early, c)
	}
}

// earlyAfter returns the group of c being written if its id is past
// sent.
func (h *hub) earlyAfter(c Coll, sent uint64) (earlyGroup, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g, ok := h.early[c]
	return g, ok && g.id > sent
}

// since returns up to limit recent entries of c after cursor, and whether
// the recent log covers cursor (if not, read the store). If the live
// message kept for those entries (keepLive) is still there, it returns
// that instead of the entries: the subscribers at one cursor share it,
// and copying the entries for each would be wasted.
func (h *hub) since(c Coll, cursor uint64, limit int) (entries []LogEntry, live *liveFrame, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.recent[c]
	if r == nil || len(r.entries) == 0 || cursor+1 < r.entries[0].Seq {
		return nil, nil, false
	}
	last := r.entries[len(r.entries)-1].Seq
	if cursor >= last {
		return nil, nil, true // up to date: appends elsewhere come by notify
	}
	i := int(cursor + 1 - r.entries[0].Seq)
	out := r.entries[i:min(len(r.entries), i+limit)]
	if f := r.live; f != nil && f.cursor == cursor && f.last == out[len(out)-1].Seq && f.limit == limit {
		return nil, f, true
	}
	return append([]LogEntry(nil), out...), nil, true
}

// keepLive keeps f as c's live message, in place of the one before, if c
// still has recent entries and the bound on their bytes leaves room.
func (h *hub) keepLive(c Coll, f *liveFrame) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.recent[c]
	if r == nil {
		return
	}
	if r.live != nil {
		h.recentTotal -= len(r.live.frame)
		r.live = nil
	}
	if h.recentTotal+len(f.frame) <= recentTotal {
		r.live = f
		h.recentTotal += len(f.frame)
	}
}

// wait returns a channel closed at the next notify of c, and done, which
// the caller must call once when it stops waiting on the channel.
func (h *hub) wait(c Coll) (ch <-chan struct{}, done func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.waits[c]
	if w == nil {
		w = &hubWait{ch: make(chan struct{})}
		h.waits[c] = w
	}
	w.waiters++
	return w.ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		w.waiters--
		if w.waiters == 0 && h.waits[c] == w {
			delete(h.waits, c)
		}
	}
}

// notify wakes c's waiters: the log grew by some other way than publish
// (another relay process appended, say), so the recent entries, which
// may now miss some, are dropped and subscribers read the store.
func (h *hub) notify(c Coll) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropRecentLocked(c)
	h.wakeLocked(c)
}

func (h *hub) dropRecentLocked(c Coll) {
	if r := h.recent[c]; r != nil {
		h.recentTotal -= r.bytes
		if r.live != nil {
			h.recentTotal -= len(r.live.frame)
		}
		delete(h.recent, c)
	}
}

func (h *hub) wakeLocked(c Coll) {
	if w := h.waits[c]; w != nil {
		close(w.ch)
		delete(h.waits, c)
	}
}

// size is the number of collections waited on, for tests.
func (h *hub) size() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.waits)
}
