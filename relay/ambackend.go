package relay

import (
	"context"
	"errors"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// amBackend is all the automerge-repo endpoint uses of the relay: auth,
// the push path (the only way its changes reach the store), and reads of
// stored documents and of the log. Keeping it this narrow lets the
// relay's storage change under it.
type amBackend interface {
	verify(apiKey, token string) (App, *Claims, error)
	// push validates, stores and fans out changes exactly as a device's
	// push; it returns once they are durable.
	push(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error)
	// document returns a record's stored document and heads, or
	// ErrNotFound.
	document(ctx context.Context, c Coll, record string) ([]byte, crdt.Heads, error)
	// snapshots pages through a collection's records in ID order.
	snapshots(ctx context.Context, c Coll, after string, limit int) ([]Snapshot, error)
	// head is the collection's log head.
	head(ctx context.Context, c Coll) (uint64, error)
	// changed returns which records changed in log entries after cursor
	// (at most limit entries), with their heads, and the cursor to go on
	// from.
	changed(ctx context.Context, c Coll, after uint64, limit int) ([]amChanged, uint64, error)
	// wait returns a channel closed at the collection's next append.
	wait(c Coll) <-chan struct{}
	now() time.Time
	incarnation() string
}

// amChanged is one log entry, as the endpoint sees it.
type amChanged struct {
	record string
	heads  crdt.Heads
}

// serverBackend is amBackend over a Server's auth, store and hub.
type serverBackend struct{ s *Server }

func (b serverBackend) verify(apiKey, token string) (App, *Claims, error) {
	return b.s.auth.Verify(apiKey, token)
}

func (b serverBackend) push(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error) {
	for _, r := range p.Records {
		b.s.metrics.bytesIn.Add(float64(len(r.Data)))
	}
	return b.s.push(ctx, c, p)
}

func (b serverBackend) document(ctx context.Context, c Coll, record string) ([]byte, crdt.Heads, error) {
	return b.s.store.Document(ctx, c, record)
}

func (b serverBackend) snapshots(ctx context.Context, c Coll, after string, limit int) ([]Snapshot, error) {
	return b.s.store.Snapshots(ctx, c, after, limit)
}

func (b serverBackend) head(ctx context.Context, c Coll) (uint64, error) {
	return b.s.store.Head(ctx, c)
}

func (b serverBackend) changed(ctx context.Context, c Coll, after uint64, limit int) ([]amChanged, uint64, error) {
	entries, err := b.s.store.Log(ctx, c, after, limit)
	if err != nil {
		return nil, after, err
	}
	out := make([]amChanged, len(entries))
	for i, e := range entries {
		out[i] = amChanged{record: e.Record, heads: e.Heads}
		after = e.Seq
	}
	return out, after, nil
}

func (b serverBackend) wait(c Coll) <-chan struct{} { return b.s.hub.wait(c) }
func (b serverBackend) now() time.Time              { return b.s.now() }
func (b serverBackend) incarnation() string         { return b.s.store.Incarnation() }

// isNotFound reports whether err is the store's "no such record".
func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
