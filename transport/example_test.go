package transport_test

import (
	"errors"
	"fmt"

	"github.com/ferrysync/ferry/transport"
)

// An envelope carries one message body. The receiver decodes the frame
// (checked against its limits before msgpack sees it), then the body.
func ExampleEncode() {
	env, _ := transport.NewEnvelope(7, &transport.Pull{Collection: "todos", Cursor: 42})
	frame, _ := transport.Encode(env)

	got, err := transport.Decode(frame)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(got.V, got.ID, got.Type)
	msg, err := got.Message() // an error here gets an error reply
	if err != nil {
		fmt.Println(err)
		return
	}
	switch m := msg.(type) {
	case *transport.Pull:
		fmt.Println("pull", m.Collection, "after", m.Cursor)
	}

	// DecodeBody asks for one type; any other is ErrUnexpectedType.
	_, err = transport.DecodeBody[transport.Push](got)
	fmt.Println(errors.Is(err, transport.ErrUnexpectedType))
	// Output:
	// 1 7 pull
	// pull todos after 42
	// true
}

// Limits bound what a peer may send. A frame past them is refused before
// it is decoded; a body past them gets an error reply naming the code, and
// the connection stays usable.
func ExampleLimits() {
	lim := transport.Limits{MaxBatch: 2} // zero fields are defaults
	fmt.Println(lim.WithDefaults().MaxRecord == transport.DefaultMaxRecord)

	push := &transport.Push{Collection: "todos", Records: []transport.RecordChanges{
		{Record: "a", Data: []byte{1}}, {Record: "b", Data: []byte{1}}, {Record: "c", Data: []byte{1}},
	}}
	err := lim.Validate(push)
	fmt.Println(transport.AsError(err).Code, errors.Is(err, transport.ErrTooLarge))

	env, _ := transport.NewEnvelope(1, push)
	frame, _ := transport.Encode(env)
	_, err = transport.Limits{MaxFrame: 16}.Decode(frame)
	fmt.Println(transport.AsError(err).Code)
	_, err = transport.Decode(frame[:len(frame)-1])
	fmt.Println(transport.AsError(err).Code)

	// A frame must hold the largest record alone.
	fmt.Println(transport.Limits{MaxRecord: 8 << 20}.Check() != nil)
	// Output:
	// true
	// too_large true
	// too_large
	// bad_frame
	// true
}

// Record IDs are a wire rule: devices and relays check them alike.
func ExampleValidateRecordID() {
	for _, id := range []string{"order-1042", "", "a\x00b"} {
		fmt.Printf("%q: %v\n", id, transport.ValidateRecordID(id))
	}
	// Output:
	// "order-1042": <nil>
	// "": record ID must be 1 to 256 bytes, got 0
	// "a\x00b": record ID "a\x00b" holds control character U+0000
}
