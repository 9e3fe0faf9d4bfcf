// Package transport is the wire between devices and the relay: msgpack
// envelopes in binary WebSocket messages, with the protocol's version,
// message types, error codes and limits.
//
// Every message is an Envelope {v, type, id, body} whose body is one of the
// Body types (Hello, Pull, Push, ...); docs/protocol.md specifies them for
// implementers in other languages. Frames from the network are hostile:
// Decode runs Scan, a bounded walk of the msgpack tokens, before the msgpack
// decoder sees a byte, and checks the Limits.
//
// A Conn (Dial, Accept) sends and receives envelopes and keeps the
// connection alive with pings. A server's loop:
//
//	conn, err := transport.Accept(w, r, nil)
//	...
//	defer conn.Close()
//	for {
//		env, err := conn.Recv(ctx)
//		if err != nil {
//			return err // closed; a bad frame was already answered
//		}
//		msg, err := env.Message()
//		if err != nil {
//			conn.SendBody(ctx, env.ID, transport.AsError(err))
//			continue
//		}
//		switch m := msg.(type) {
//		case *transport.Pull:
//			conn.SendBody(ctx, env.ID, &transport.Changes{...})
//		...
//		}
//	}
//
// A Client layers requests on a Conn: Call matches responses by id, and
// live messages arrive on a channel.
//
//	conn, err := transport.Dial(ctx, "wss://relay.example/sync", nil)
//	...
//	c := transport.NewClient(conn, nil)
//	defer c.Close()
//	var w transport.Welcome
//	err = c.Call(ctx, &transport.Hello{APIKey: key, Token: token,
//		ReplicaID: id, Versions: transport.SupportedVersions()}, &w)
//
// Concurrency: [Conn] and [Client] say which of their methods may run at
// once. Everything else (Envelope, the message bodies, Limits, Options,
// *Error) is a plain value: any number of goroutines may read one, and
// decoding an Envelope's body only reads it, but none may modify a value
// another is reading. The Err* sentinels are shared: never modify them.
package transport
