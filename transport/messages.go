package transport

// MessageType names the body an envelope carries.
type MessageType string

// Message types. A request's response echoes its id; live and connection
// level errors use id 0.
const (
	TypeHello        MessageType = "hello"         // client → relay: Hello; answered by welcome
	TypeWelcome      MessageType = "welcome"       // relay → client: Welcome
	TypeAuth         MessageType = "auth"          // client → relay: Auth; answered by ok
	TypePull         MessageType = "pull"          // client → relay: Pull; answered by changes
	TypeChanges      MessageType = "changes"       // relay → client: Changes
	TypePush         MessageType = "push"          // client → relay: Push; answered by ack
	TypeAck          MessageType = "ack"           // relay → client: Ack
	TypeSubscribe    MessageType = "subscribe"     // client → relay: Subscribe; answered by ok, then live
	TypeUnsubscribe  MessageType = "unsubscribe"   // client → relay: Unsubscribe; answered by ok
	TypeLive         MessageType = "live"          // relay → client, id 0: Live
	TypeLeaseAcquire MessageType = "lease_acquire" // client → relay: LeaseAcquire; answered by lease
	TypeLeaseRenew   MessageType = "lease_renew"   // client → relay: LeaseRenew; answered by lease
	TypeLeaseRelease MessageType = "lease_release" // client → relay: LeaseRelease; answered by ok
	TypeLease        MessageType = "lease"         // relay → client: Lease
	TypeOK           MessageType = "ok"            // relay → client: OK
	TypeError        MessageType = "error"         // either way: *Error
	TypePresence     MessageType = "presence"      // client → relay: Presence, answered by ok; relay → client, id 0: a peer's Presence
)

// known reports whether t is a message type of this protocol version.
func (t MessageType) known() bool {
	switch t {
	case TypeHello, TypeWelcome, TypeAuth, TypePull, TypeChanges, TypePush,
		TypeAck, TypeSubscribe, TypeUnsubscribe, TypeLive, TypeLeaseAcquire,
		TypeLeaseRenew, TypeLeaseRelease, TypeLease, TypeOK, TypeError, TypePresence:
		return true
	}
	return false
}

// Body is a message body: one of the types below. The interface is sealed;
// its only use is to tie each body to its message type and its checks.
type Body interface {
	MessageType() MessageType
	validate(l *Limits) error
}

// newBody returns an empty body for t, or nil for an unknown type.
func newBody(t MessageType) Body {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeWelcome:
		return new(Welcome)
	case TypeAuth:
		return new(Auth)
	case TypePull:
		return new(Pull)
	case TypeChanges:
		return new(Changes)
	case TypePush:
		return new(Push)
	case TypeAck:
		return new(Ack)
	case TypeSubscribe:
		return new(Subscribe)
	case TypeUnsubscribe:
		return new(Unsubscribe)
	case TypeLive:
		return new(Live)
	case TypeLeaseAcquire:
		return new(LeaseAcquire)
	case TypeLeaseRenew:
		return new(LeaseRenew)
	case TypeLeaseRelease:
		return new(LeaseRelease)
	case TypeLease:
		return new(Lease)
	case TypeOK:
		return new(OK)
	case TypeError:
		return new(Error)
	case TypePresence:
		return new(Presence)
	}
	return nil
}

// Hello opens a session. Its envelope is decoded whatever its v, so that a
// relay can answer a client of another version with unsupported_version.
type Hello struct {
	APIKey    string   `msgpack:"api_key"`
	Token     string   `msgpack:"token"`
	ReplicaID string   `msgpack:"replica_id"`
	Versions  []uint16 `msgpack:"versions"` // every version the client speaks
}

// Welcome accepts a Hello.
type Welcome struct {
	Version uint16 `msgpack:"version"` // chosen by the relay from Hello.Versions
	RelayID string `msgpack:"relay_id"`
	// Incarnation changes when the relay's store is restored from a backup:
	// cursors and acknowledged heads from another incarnation may point past
	// the relay's log, so a client seeing a new one re-syncs slowly.
	Incarnation string `msgpack:"incarnation"`
	Limits      Limits `msgpack:"limits"` // what the relay accepts
}

// Auth replaces the token of a live session, before the old one expires.
type Auth struct {
	Token string `msgpack:"token"`
}

// Pull asks for a collection's changes after a cursor.
type Pull struct {
	Collection string `msgpack:"collection"`
	Cursor     uint64 `msgpack:"cursor"` // 0: a fresh pull, answered with snapshots
	Limit      uint32 `msgpack:"limit"`  // records wanted; 0 or above max_batch: max_batch
	// After pages through a fresh pull: the After of the previous page.
	After string `msgpack:"after,omitempty"`
}

// RecordChanges is one record's changes in changes, live and push.
type RecordChanges struct {
	Record string `msgpack:"record"`
	// Seq is the log position of the record's latest change here. Set by
	// the relay; ignored in push.
	Seq uint64 `msgpack:"seq"`
	// Snapshot is true when Data is a whole saved document rather than
	// incremental changes (a fresh device gets snapshots, not history).
	// Set by the relay; ignored in push.
	Snapshot bool     `msgpack:"snapshot"`
	Data     []byte   `msgpack:"data"`  // Automerge bytes
	Heads    [][]byte `msgpack:"heads"` // the record's heads after Data, HeadSize bytes each
}

func (r *RecordChanges) validate(l *Limits) error {
	if r.Record == "" {
		return errorf(CodeBadFrame, "empty record id")
	}
	if err := l.checkData(r.Record, len(r.Data)); err != nil {
		return err
	}
	return checkHeads(r.Record, r.Heads)
}

// Changes answers a Pull.
type Changes struct {
	Collection string          `msgpack:"collection"`
	Records    []RecordChanges `msgpack:"records"`
	Next       uint64          `msgpack:"next"` // cursor for the next pull
	More       bool            `msgpack:"more"` // more changes wait past Next
	// After is set on the pages of a fresh pull (snapshots): the last record
	// sent, to pass as Pull.After for the next page while More is true. The
	// cursor to continue from afterwards is the Next of the FIRST page.
	After string `msgpack:"after,omitempty"`
	// Early is set only on live messages to a subscription that asked for
	// them (Subscribe.Early): the records are checked changes the relay has
	// not made durable yet, with seq 0, and Next is the subscription's
	// cursor unchanged. The same changes come again, with their sequence
	// numbers, once durable.
	Early bool `msgpack:"early,omitempty"`
}

func (c *Changes) validate(l *Limits) error {
	if err := checkCollection(c.Collection); err != nil {
		return err
	}
	if err := l.checkRecords(len(c.Records)); err != nil {
		return err
	}
	for i := range c.Records {
		if err := c.Records[i].validate(l); err != nil {
			return err
		}
	}
	return nil
}

// Live is a server-sent batch for a subscription, with id 0. Same fields as
// Changes; convert with Changes(live).
type Live Changes

// Push sends local changes.
type Push struct {
	Collection string          `msgpack:"collection"`
	Fence      uint64          `msgpack:"fence"` // lease fence, 0 for none
	Records    []RecordChanges `msgpack:"records"`
}

// RecordAck is the relay's heads for one pushed record.
type RecordAck struct {
	Record string   `msgpack:"record"`
	Heads  [][]byte `msgpack:"heads"`
}

// Ack answers a Push once its changes are durable.
type Ack struct {
	Collection string `msgpack:"collection"`
	Seq        uint64 `msgpack:"seq"` // log position after this push
	// From is the log position of the first entry this push stored; its
	// entries are From to Seq. 0: it stored none (everything it carried
	// the relay held already), or a relay that does not say.
	From    uint64      `msgpack:"from,omitempty"`
	Records []RecordAck `msgpack:"records"`
}

// Subscribe asks for live messages of a collection after a cursor.
type Subscribe struct {
	Collection string `msgpack:"collection"`
	Cursor     uint64 `msgpack:"cursor"`
	// Early asks for each checked change as soon as the relay has it, in
	// an early live message, before it is durable (see Changes.Early).
	Early bool `msgpack:"early,omitempty"`
}

// Unsubscribe ends a subscription.
type Unsubscribe struct {
	Collection string `msgpack:"collection"`
}

// LeaseAcquire asks for a collection's lease, which one device at a time
// holds to sync the collection.
type LeaseAcquire struct {
	Collection string `msgpack:"collection"`
	TTLMS      uint32 `msgpack:"ttl_ms"`  // lease lifetime
	WaitMS     uint32 `msgpack:"wait_ms"` // how long to wait for a held lease; 0: fail at once
}

// LeaseRenew extends a held lease.
type LeaseRenew struct {
	Collection string `msgpack:"collection"`
	Fence      uint64 `msgpack:"fence"`
	TTLMS      uint32 `msgpack:"ttl_ms"`
}

// LeaseRelease gives a lease up before it expires.
type LeaseRelease struct {
	Collection string `msgpack:"collection"`
	Fence      uint64 `msgpack:"fence"`
}

// Lease answers LeaseAcquire and LeaseRenew.
type Lease struct {
	Collection string `msgpack:"collection"`
	Fence      uint64 `msgpack:"fence"`      // only grows, per collection
	ExpiresMS  int64  `msgpack:"expires_ms"` // Unix milliseconds, on the relay's lease clock (the database's on PostgreSQL)
	// TTLMS is the lifetime granted, which may be less than asked: renew
	// before half of it has passed. Clocks need not agree for this.
	TTLMS uint32 `msgpack:"ttl_ms,omitempty"`
}

// OK answers auth, subscribe, unsubscribe and lease_release. Its body is an
// empty map.
type OK struct{}

// MessageType implementations.
func (*Hello) MessageType() MessageType        { return TypeHello }
func (*Welcome) MessageType() MessageType      { return TypeWelcome }
func (*Auth) MessageType() MessageType         { return TypeAuth }
func (*Pull) MessageType() MessageType         { return TypePull }
func (*Changes) MessageType() MessageType      { return TypeChanges }
func (*Live) MessageType() MessageType         { return TypeLive }
func (*Push) MessageType() MessageType         { return TypePush }
func (*Ack) MessageType() MessageType          { return TypeAck }
func (*Subscribe) MessageType() MessageType    { return TypeSubscribe }
func (*Unsubscribe) MessageType() MessageType  { return TypeUnsubscribe }
func (*LeaseAcquire) MessageType() MessageType { return TypeLeaseAcquire }
func (*LeaseRenew) MessageType() MessageType   { return TypeLeaseRenew }
func (*LeaseRelease) MessageType() MessageType { return TypeLeaseRelease }
func (*Lease) MessageType() MessageType        { return TypeLease }
func (*OK) MessageType() MessageType           { return TypeOK }
func (*Presence) MessageType() MessageType     { return TypePresence }

func (h *Hello) validate(*Limits) error {
	if len(h.Versions) == 0 {
		return errorf(CodeBadFrame, "hello lists no versions")
	}
	return nil
}

func (w *Welcome) validate(*Limits) error {
	if w.Version == 0 {
		return errorf(CodeBadFrame, "welcome without a version")
	}
	if w.Limits.MaxFrame < 0 || w.Limits.MaxBatch < 0 || w.Limits.MaxRecord < 0 ||
		w.Limits.MaxDepth < 0 || w.Limits.MaxItems < 0 || w.Limits.MaxInflated < 0 || w.Limits.MaxRecordOps < 0 {
		return errorf(CodeBadFrame, "welcome has negative limits")
	}
	return nil
}

func (a *Auth) validate(*Limits) error {
	if a.Token == "" {
		return errorf(CodeBadFrame, "auth without a token")
	}
	return nil
}

func (p *Pull) validate(*Limits) error { return checkCollection(p.Collection) }

func (lv *Live) validate(l *Limits) error { return (*Changes)(lv).validate(l) }

func (p *Push) validate(l *Limits) error {
	if err := checkCollection(p.Collection); err != nil {
		return err
	}
	if len(p.Records) == 0 {
		return errorf(CodeBadFrame, "push without records")
	}
	if err := l.checkRecords(len(p.Records)); err != nil {
		return err
	}
	for i := range p.Records {
		r := &p.Records[i]
		if len(r.Data) == 0 {
			return errorf(CodeBadFrame, "record %q: push without data", r.Record)
		}
		if err := r.validate(l); err != nil {
			return err
		}
	}
	return nil
}

func (a *Ack) validate(l *Limits) error {
	if err := checkCollection(a.Collection); err != nil {
		return err
	}
	if a.From > a.Seq {
		return errorf(CodeBadFrame, "ack from %d is past its seq %d", a.From, a.Seq)
	}
	if err := l.checkRecords(len(a.Records)); err != nil {
		return err
	}
	for _, r := range a.Records {
		if r.Record == "" {
			return errorf(CodeBadFrame, "empty record id")
		}
		if err := checkHeads(r.Record, r.Heads); err != nil {
			return err
		}
	}
	return nil
}

func (s *Subscribe) validate(*Limits) error   { return checkCollection(s.Collection) }
func (u *Unsubscribe) validate(*Limits) error { return checkCollection(u.Collection) }

// A lease_acquire without ttl_ms (0) asks for the relay's default
// lifetime.
func (a *LeaseAcquire) validate(*Limits) error { return checkCollection(a.Collection) }

func (r *LeaseRenew) validate(*Limits) error {
	if r.Fence == 0 || r.TTLMS == 0 {
		return errorf(CodeBadFrame, "lease_renew needs fence and ttl_ms")
	}
	return checkCollection(r.Collection)
}

func (r *LeaseRelease) validate(*Limits) error {
	if r.Fence == 0 {
		return errorf(CodeBadFrame, "lease_release without fence")
	}
	return checkCollection(r.Collection)
}

func (ls *Lease) validate(*Limits) error {
	if ls.Fence == 0 {
		return errorf(CodeBadFrame, "lease without fence")
	}
	return checkCollection(ls.Collection)
}

func (*OK) validate(*Limits) error { return nil }
