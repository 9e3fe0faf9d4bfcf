package transport

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/vmihailenco/msgpack/v5"
)

// ProtocolVersion is the protocol version this package speaks. The
// envelope's shape never changes across versions; anything else may.
const ProtocolVersion uint16 = 1

// SupportedVersions returns the versions this package speaks, lowest first,
// for Hello.Versions.
func SupportedVersions() []uint16 { return []uint16{ProtocolVersion} }

// Negotiate picks the highest version that both this package and a peer
// offering offered speak. ok is false when there is none; the relay then
// answers unsupported_version.
func Negotiate(offered []uint16) (v uint16, ok bool) {
	for _, s := range SupportedVersions() {
		if s > v && slices.Contains(offered, s) {
			v, ok = s, true
		}
	}
	return v, ok
}

// Envelope is one WebSocket message: a msgpack map with these four keys.
type Envelope struct {
	V    uint16             `msgpack:"v"`
	Type MessageType        `msgpack:"type"`
	ID   uint64             `msgpack:"id"` // request id, echoed by its response; 0 for live and connection errors
	Body msgpack.RawMessage `msgpack:"body"`

	// limits are those the envelope was decoded under, applied again to its
	// body; nil means DefaultLimits.
	limits *Limits
}

// NewEnvelope encodes body into an envelope of the current version.
func NewEnvelope(id uint64, body Body) (*Envelope, error) {
	raw, err := marshal(body)
	if err != nil {
		return nil, fmt.Errorf("transport: encode %s body: %w", body.MessageType(), err)
	}
	return &Envelope{V: ProtocolVersion, Type: body.MessageType(), ID: id, Body: raw}, nil
}

// Encode returns the wire bytes of e. A nil Body is sent as nil, which
// decodes as an empty body.
func Encode(e *Envelope) ([]byte, error) {
	if len(e.Body) == 0 {
		e2 := *e
		e2.Body = msgpack.RawMessage{0xc0}
		e = &e2
	}
	b, err := marshal(e)
	if err != nil {
		return nil, fmt.Errorf("transport: encode %s envelope: %w", e.Type, err)
	}
	return b, nil
}

// EncodeBody returns the wire bytes of body in a new envelope with id:
// Encode(NewEnvelope(id, body)), with a body of the hand-encoded types
// (push, ack, changes, live) written in place rather than encoded and
// copied.
func EncodeBody(id uint64, body Body) ([]byte, error) {
	return appendBody(nil, id, body)
}

// appendBody is EncodeBody appending to dst, which it grows to fit if it
// is short.
func appendBody(dst []byte, id uint64, body Body) ([]byte, error) {
	e := Envelope{V: ProtocolVersion, Type: body.MessageType(), ID: id}
	if n := fastSize(&e) + fastSize(body); cap(dst)-len(dst) < n {
		dst = append(make([]byte, 0, len(dst)+n), dst...)
	}
	b := appendEnvelope(dst, &e)
	// appendEnvelope wrote a nil body's 0xc0 after "body": the body goes
	// there instead.
	b = b[:len(b)-1]
	if out, ok := fastMarshal(b, body); ok {
		return out, nil
	}
	full, err := NewEnvelope(id, body)
	if err != nil {
		return nil, err
	}
	return Encode(full)
}

func marshal(v any) ([]byte, error) {
	if b, ok := fastMarshal(make([]byte, 0, fastSize(v)), v); ok {
		return b, nil
	}
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true) // small ids and cursors in 1 byte, not 9
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Decode checks frame against DefaultLimits and decodes its envelope.
func Decode(frame []byte) (*Envelope, error) {
	return DefaultLimits().Decode(frame)
}

// Decode checks frame against l (zero fields meaning defaults) and decodes
// its envelope; the body stays raw until DecodeBody or Message. Errors are
// *Error: CodeTooLarge past MaxFrame, MaxDepth or MaxItems, CodeBadFrame for
// anything malformed or an unknown type, CodeUnsupportedVersion for a v
// other than ProtocolVersion on anything but hello. A peer whose frame fails
// Decode is broken or hostile: Conn.Recv closes the connection.
func (l Limits) Decode(frame []byte) (*Envelope, error) {
	return l.decode(frame, false)
}

// decode is Decode; with owned, the caller gives frame up, and the
// envelope's body may share its bytes rather than copy them.
func (l Limits) decode(frame []byte, owned bool) (*Envelope, error) {
	l = l.WithDefaults()
	if len(frame) > l.MaxFrame {
		return nil, errorf(CodeTooLarge, "frame of %d bytes exceeds max_frame %d", len(frame), l.MaxFrame)
	}
	// Check the shape before msgpack sees it: its decoder trusts lengths.
	if err := scan(frame, l.MaxDepth, l.MaxItems); err != nil {
		return nil, err
	}
	if !isMap(frame[0]) {
		return nil, errorf(CodeBadFrame, "envelope is not a map")
	}
	e := &Envelope{limits: &l}
	r := mpReader{b: frame, alias: owned}
	if !r.envelopeInto(e) {
		if err := slowUnmarshal(frame, e); err != nil {
			return nil, errorf(CodeBadFrame, "envelope: %w", err)
		}
	}
	if !e.Type.known() {
		return nil, errorf(CodeBadFrame, "unknown message type %q", e.Type)
	}
	// Hello is exempt: version negotiation happens inside it.
	if e.Type != TypeHello && e.V != ProtocolVersion {
		return nil, errorf(CodeUnsupportedVersion, "envelope version %d, want %d", e.V, ProtocolVersion)
	}
	if len(e.Body) == 0 {
		return nil, errorf(CodeBadFrame, "%s envelope without body", e.Type)
	}
	return e, nil
}

func isMap(c byte) bool { return c&0xf0 == 0x80 || c == 0xde || c == 0xdf }

// unmarshal decodes b into v, refusing integers out of their field's range
// (see checkInts), which msgpack itself would truncate.
func unmarshal(b []byte, v any) error {
	if fastUnmarshal(b, v) {
		return nil
	}
	return slowUnmarshal(b, v)
}

// slowUnmarshal is unmarshal by msgpack's reflection, for any type and
// any input.
func slowUnmarshal(b []byte, v any) error {
	if err := checkInts(b, v); err != nil {
		return err
	}
	dec := msgpack.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	return nil
}

// DecodeBody decodes and validates e's body as a T, which must be the body
// type of e.Type (ErrUnexpectedType otherwise). Validation uses the limits e
// was decoded under. Errors other than ErrUnexpectedType are *Error
// (CodeBadFrame, CodeTooLarge), meant for an error reply with e.ID.
//
//	push, err := transport.DecodeBody[transport.Push](env)
func DecodeBody[T any, P interface {
	*T
	Body
}](e *Envelope) (*T, error) {
	p := P(new(T))
	if p.MessageType() != e.Type {
		return nil, fmt.Errorf("%w: %s body in a %s envelope", ErrUnexpectedType, p.MessageType(), e.Type)
	}
	if err := e.decodeInto(p); err != nil {
		return nil, err
	}
	return p, nil
}

// Message decodes and validates e's body as the type e.Type names, for a
// type switch:
//
//	switch m := body.(type) {
//	case *transport.Push: ...
//	}
func (e *Envelope) Message() (Body, error) {
	b := newBody(e.Type)
	if b == nil {
		return nil, errorf(CodeBadFrame, "unknown message type %q", e.Type)
	}
	if err := e.decodeInto(b); err != nil {
		return nil, err
	}
	return b, nil
}

func (e *Envelope) decodeInto(b Body) error {
	l := DefaultLimits()
	if e.limits != nil {
		l = *e.limits
	}
	// The hand decoder keeps within the limits scan checks, so a body it
	// takes is decoded without a scan first.
	if l.MaxDepth >= fastDepth && fastUnmarshalWithin(e.Body, b, l.MaxItems) {
		return b.validate(&l)
	}
	// Scan again: an Envelope may have been built by hand, not by Decode.
	if err := scan(e.Body, l.MaxDepth, l.MaxItems); err != nil {
		return err
	}
	if len(e.Body) > 0 && !isMap(e.Body[0]) && e.Body[0] != 0xc0 {
		return errorf(CodeBadFrame, "%s body is not a map", e.Type)
	}
	if err := slowUnmarshal(e.Body, b); err != nil {
		return errorf(CodeBadFrame, "%s body: %w", e.Type, err)
	}
	return b.validate(&l)
}
