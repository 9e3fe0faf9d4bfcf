package transport

import (
	"bytes"

	"github.com/vmihailenco/msgpack/v5"
)

// head returns a distinct HeadSize-byte change hash.
func head(b byte) []byte { return bytes.Repeat([]byte{b}, HeadSize) }

// sampleBodies returns one valid body of every message type.
func sampleBodies() []Body {
	recs := []RecordChanges{
		{Record: "r1", Seq: 3, Snapshot: true, Data: []byte("saved doc"), Heads: [][]byte{head(1)}},
		{Record: "r2", Seq: 4, Data: []byte("chunk"), Heads: [][]byte{head(2), head(3)}},
	}
	return []Body{
		&Hello{APIKey: "key", Token: "tok", ReplicaID: "rep-1", Versions: []uint16{1}},
		&Welcome{Version: 1, RelayID: "relay-1", Incarnation: "inc-1", Limits: DefaultLimits()},
		&Auth{Token: "fresh"},
		&Pull{Collection: "todos", Cursor: 10, Limit: 100},
		&Changes{Collection: "todos", Records: recs, Next: 12, More: true},
		&Push{Collection: "todos", Fence: 7, Records: []RecordChanges{{Record: "r1", Data: []byte("chg"), Heads: [][]byte{head(4)}}}},
		&Ack{Collection: "todos", Seq: 13, Records: []RecordAck{{Record: "r1", Heads: [][]byte{head(4)}}}},
		&Subscribe{Collection: "todos", Cursor: 13},
		&Unsubscribe{Collection: "todos"},
		&Live{Collection: "todos", Records: recs[1:], Next: 14},
		&LeaseAcquire{Collection: "todos", TTLMS: 30000, WaitMS: 5000},
		&LeaseRenew{Collection: "todos", Fence: 7, TTLMS: 30000},
		&LeaseRelease{Collection: "todos", Fence: 7},
		&Lease{Collection: "todos", Fence: 7, ExpiresMS: 1767225600000},
		&OK{},
		&Error{Code: CodeRateLimited, Message: "slow down", RetryMS: 250},
		&Presence{Collection: "todos", Record: "r1", Peer: "rep-2", Data: []byte{0xa1, 0x61, 0x78, 0x01}},
	}
}

// mustFrame encodes body in an envelope with id.
func mustFrame(id uint64, body Body) []byte {
	e, err := NewEnvelope(id, body)
	if err != nil {
		panic(err)
	}
	b, err := Encode(e)
	if err != nil {
		panic(err)
	}
	return b
}

// rawFrame builds an envelope from parts that need not be valid: body is
// spliced in as raw msgpack, and v, typ or id may be of any type.
func rawFrame(v, typ, id any, body []byte) []byte {
	type env struct {
		V    any                `msgpack:"v"`
		Type any                `msgpack:"type"`
		ID   any                `msgpack:"id"`
		Body msgpack.RawMessage `msgpack:"body"`
	}
	b, err := msgpack.Marshal(env{v, typ, id, body})
	if err != nil {
		panic(err)
	}
	return b
}

// mustMarshal encodes v with the msgpack defaults, map keys sorted so that
// corpus entries are stable.
func mustMarshal(v any) []byte {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(v); err != nil {
		panic(err)
	}
	return buf.Bytes()
}
