package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/transport"
)

// pullAs pulls the relay's changes the way a sync of type typ does, after
// retrying the records whose merge hook failed last time (unless the
// relay's copy replaces this device's anyway).
func (s *collSync) pullAs(ctx context.Context, typ policy.Type) error {
	if typ.Pulls() && typ != policy.RefreshFromServer {
		if err := s.retryQuarantined(ctx); err != nil {
			return err
		}
	}
	switch typ {
	case policy.TwoWay, policy.OneWayFromServer:
		return s.pull(ctx, s.state.Cursor, s.merges())
	case policy.Slow:
		return s.pullAll(ctx, s.merges())
	case policy.RefreshFromServer:
		since, err := s.r.readTs()
		if err != nil {
			return err
		}
		s.refreshSince = since
		return s.pullAll(ctx, applier{op: s.r.replaceSince(since)})
	case policy.RefreshFromClient:
		return s.pullAll(ctx, applier{op: s.r.forceOp})
	}
	return nil
}

// applier is how a pull applies the relay's records: op on each; merging
// says op is mergeOp, whose work a batch does for several records at once.
type applier struct {
	op      remoteOp
	merging bool
}

func (s *collSync) merges() applier { return applier{op: s.r.mergeOp, merging: true} }

// retryQuarantined applies again the relay's changes held back by a
// failed merge hook, now that the hook may succeed.
func (s *collSync) retryQuarantined(ctx context.Context) error {
	held, err := s.r.idSet('q', s.coll)
	if err != nil || len(held) == 0 {
		return err
	}
	var recs []remoteRec
	for id := range held {
		recs = append(recs, remoteRec{id: id})
	}
	return s.apply(ctx, recs, s.merges())
}

// apply applies a batch of the relay's records with op in one store
// transaction, then settles the conflicts it found by the policy.
func (s *collSync) apply(ctx context.Context, recs []remoteRec, a applier) error {
	var settle *settling
	if a.merging {
		settle = newSettling(s.coll, recs, s.res, s.r.opts.Clock())
	}
	res, err := s.r.applyHolding(s.coll, recs, a.op, a.merging, settle)
	if err != nil {
		freeMerged(res.conflicted)
		return err
	}
	if len(res.conflicted) > 0 {
		more, err := s.r.resolveConflicted(ctx, s.coll, res.conflicted, s.res)
		res.add(more)
		if err != nil {
			return err
		}
	}
	s.tally(res)
	return nil
}

// pull applies the relay's changes after cursor, page by page, and
// advances the stored cursor as it goes.
func (s *collSync) pull(ctx context.Context, cursor uint64, apply applier) error {
	if cursor == 0 {
		return s.pullAll(ctx, apply)
	}
	total, done := 0, 0
	var ahead *pageAhead
	defer func() { ahead.drop() }()
	for {
		ch, err := s.page(ctx, &ahead, &transport.Pull{Collection: s.coll, Cursor: cursor})
		if errors.Is(err, transport.ErrTruncated) {
			// The relay truncated its log past this cursor (the device was
			// away longer than it keeps entries): catch up from the
			// records' snapshots, merging as a slow sync does.
			s.r.log.Info("relay log truncated past the cursor; catching up from snapshots", "profile", s.p.Name, "collection", s.coll, "cursor", cursor)
			return s.pullAll(ctx, apply)
		}
		if err != nil {
			return fmt.Errorf("ferry: pull %s: %w", s.coll, err)
		}
		if ch.More {
			ahead = s.fetch(ctx, &transport.Pull{Collection: s.coll, Cursor: max(cursor, ch.Next)})
		}
		total += len(ch.Records)
		if err := s.applyAll(ctx, ch.Records, apply, total, &done); err != nil {
			return err
		}
		cursor = max(cursor, ch.Next)
		s.state.Cursor = cursor
		if !ch.More {
			return nil
		}
		if err := s.lease.keep(ctx); err != nil {
			return err
		}
	}
}

// pullAll reads every record's snapshot (a fresh pull), applies each, and
// returns with the cursor at the log position the snapshots cover. Records
// this device holds that the relay lacks are handled per sync type.
func (s *collSync) pullAll(ctx context.Context, apply applier) error {
	seen := map[string]bool{}
	total, done := 0, 0
	after := ""
	var next uint64
	var ahead *pageAhead
	defer func() { ahead.drop() }()
	for page := 0; ; page++ {
		ch, err := s.page(ctx, &ahead, &transport.Pull{Collection: s.coll, After: after})
		if err != nil {
			return fmt.Errorf("ferry: pull %s: %w", s.coll, err)
		}
		if page == 0 {
			next = ch.Next
		}
		for _, rc := range ch.Records {
			seen[rc.Record] = true
		}
		if ch.More && ch.After != "" {
			ahead = s.fetch(ctx, &transport.Pull{Collection: s.coll, After: ch.After})
		}
		total += len(ch.Records)
		if err := s.applyAll(ctx, ch.Records, apply, total, &done); err != nil {
			return err
		}
		if !ch.More || ch.After == "" {
			break
		}
		after = ch.After
		if err := s.lease.keep(ctx); err != nil {
			return err
		}
	}
	s.state.Cursor = next
	ids, err := s.r.recordIDs(s.coll)
	if err != nil {
		return err
	}
	var unsynced []string
	for _, id := range ids {
		if seen[id] {
			continue
		}
		switch s.cs.Type {
		case policy.RefreshFromServer:
			a, kept, err := s.r.purgeRecord(s.coll, id, s.refreshSince)
			if err != nil {
				return err
			}
			if kept {
				// Written while the refresh ran: the relay holds
				// nothing of it, so it is pushed whole.
				unsynced = append(unsynced, id)
				continue
			}
			s.count(FromRelay, a)
		case policy.Slow, policy.RefreshFromClient, policy.TwoWay:
			// The relay holds nothing of it: push it whole.
			unsynced = append(unsynced, id)
		}
	}
	// In batches, so a store with many local records does not hold one
	// huge transaction.
	for len(unsynced) > 0 {
		n := min(len(unsynced), 1000)
		if err := s.r.markUnsynced(s.coll, unsynced[:n]); err != nil {
			return err
		}
		unsynced = unsynced[n:]
	}
	return nil
}

// pageAhead is a page of a pull requested before the device is done with
// the one before it: the relay reads the next page, and the connection
// carries and decodes it, while the device stores the records of this one.
// A pull so waits for the relay only for its first page, not for each.
type pageAhead struct {
	done   chan struct{}
	cancel context.CancelFunc
	ch     transport.Changes
	err    error
}

// fetch requests a page of a pull, answered in the background.
func (s *collSync) fetch(ctx context.Context, req *transport.Pull) *pageAhead {
	ctx, cancel := context.WithCancel(ctx)
	a := &pageAhead{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(a.done)
		a.err = s.conn.call(ctx, req, &a.ch)
	}()
	return a
}

// page returns the page *ahead holds, fetched ahead for this request,
// and clears it; with none, it asks for req now.
func (s *collSync) page(ctx context.Context, ahead **pageAhead, req *transport.Pull) (*transport.Changes, error) {
	if a := *ahead; a != nil {
		*ahead = nil
		return a.wait()
	}
	ch := new(transport.Changes)
	return ch, s.conn.call(ctx, req, ch)
}

// wait returns the page once it is answered.
func (a *pageAhead) wait() (*transport.Changes, error) {
	<-a.done
	a.cancel()
	return &a.ch, a.err
}

// drop gives up a page not waited for (the pull failed before it) and
// waits for its request to end, so that nothing outlives the pull.
func (a *pageAhead) drop() {
	if a != nil {
		a.cancel()
		<-a.done
	}
}

// batchBytes bounds the data applied in one store transaction, well
// under Badger's transaction limit.
const batchBytes = 512 << 10

// applyAll applies a page of records in transactions of up to batchBytes.
func (s *collSync) applyAll(ctx context.Context, recs []transport.RecordChanges, apply applier, total int, done *int) error {
	var batch []remoteRec
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.apply(ctx, batch, apply); err != nil {
			return err
		}
		*done += len(batch)
		s.progress(FromRelay, total, *done)
		batch, size = nil, 0
		return nil
	}
	for _, rc := range recs {
		heads, err := crdt.HeadsFromSlices(rc.Heads)
		if err != nil {
			return fmt.Errorf("ferry: relay sent bad heads for %s: %w", rc.Record, err)
		}
		if size+len(rc.Data) > batchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		batch = append(batch, remoteRec{id: rc.Record, data: rc.Data, relay: heads})
		size += len(rc.Data)
	}
	return flush()
}

// tally adds a batch's outcome to the collection's statistics.
func (s *collSync) tally(res batchResult) {
	for _, ev := range res.events {
		s.count(FromRelay, applied{ev: ev, changed: true})
	}
	s.cs.Conflicts += res.conflicts
	s.cs.Failed = append(s.cs.Failed, res.failed...)
}
