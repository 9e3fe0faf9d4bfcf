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
	// connect counts a connection of app against its quota, or refuses
	// it; each nil return is matched by one disconnect.
	connect(app string) error
	disconnect(app string)
	// push validates, stores and fans out changes exactly as a device's
	// push; it returns once they are durable.
	push(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error)
	// document returns a record's stored document and heads, or
	// ErrNotFound.
	document(ctx context.Context, c Coll, record string) ([]byte, crdt.Heads, error)
	// records pages through a collection's record IDs in order.
	records(ctx context.Context, c Coll, after string, limit int) ([]string, error)
	// head is the collection's log head.
	head(ctx context.Context, c Coll) (uint64, error)
	// changed returns which records changed in log entries after cursor
	// (at most limit entries), with their heads, and the cursor to go on
	// from. If entries after cursor were truncated it returns
	// errAMTruncated: read every record again.
	changed(ctx context.Context, c Coll, after uint64, limit int) ([]amChanged, uint64, error)
	// wait returns a channel closed at the collection's next append, and
	// done, to call once when no longer waiting.
	wait(c Coll) (<-chan struct{}, func())
	now() time.Time
	incarnation() string
	// joinPresence makes sink receive the collection's presence from
	// devices until leave is called; publishPresence passes a client's
	// presence to the collection's other sinks (from, if not nil, is
	// the sender); presenceSent counts a message queued or dropped.
	joinPresence(c Coll, sink presenceSink) (leave func())
	publishPresence(c Coll, m *presenceMsg, from presenceSink)
	presenceSent(queued bool)
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

func (b serverBackend) connect(app string) error {
	if e := b.s.quotas.connect(app); e != nil {
		return e
	}
	return nil
}

func (b serverBackend) disconnect(app string) {
	b.s.quotas.disconnect(app)
	if h := b.s.hooks.sessionEnded; h != nil {
		h()
	}
}

func (b serverBackend) push(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error) {
	for _, r := range p.Records {
		b.s.metrics.bytesIn.Add(float64(len(r.Data)))
	}
	return b.s.pushCounted(ctx, c, p)
}

func (b serverBackend) document(ctx context.Context, c Coll, record string) ([]byte, crdt.Heads, error) {
	rec, err := b.s.store.Record(ctx, c, record)
	if err != nil {
		return nil, nil, err
	}
	return rec.Data(), rec.Heads, nil
}

func (b serverBackend) records(ctx context.Context, c Coll, after string, limit int) ([]string, error) {
	recs, err := b.s.store.Records(ctx, c, after, limit)
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.ID
	}
	return ids, err
}

func (b serverBackend) head(ctx context.Context, c Coll) (uint64, error) {
	return b.s.store.Head(ctx, c)
}

func (b serverBackend) changed(ctx context.Context, c Coll, after uint64, limit int) ([]amChanged, uint64, error) {
	entries, err := b.s.store.Log(ctx, c, after, limit)
	var trunc *TruncatedError
	if errors.As(err, &trunc) {
		return nil, after, errAMTruncated
	}
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

func (b serverBackend) wait(c Coll) (<-chan struct{}, func()) { return b.s.hub.wait(c) }
func (b serverBackend) now() time.Time                        { return b.s.now() }
func (b serverBackend) incarnation() string                   { return b.s.store.Incarnation() }

func (b serverBackend) joinPresence(c Coll, sink presenceSink) func() { return b.s.pres.join(c, sink) }
func (b serverBackend) publishPresence(c Coll, m *presenceMsg, from presenceSink) {
	b.s.pres.publish(c, m, from)
}
func (b serverBackend) presenceSent(queued bool) {
	if queued {
		b.s.pres.sent.Inc()
	} else {
		b.s.pres.dropped.Inc()
	}
}

var errAMTruncated = errors.New("relay: log truncated past the cursor")

// isNotFound reports whether err is the store's "no such record".
func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
