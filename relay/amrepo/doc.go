// Package amrepo serves automerge-repo's WebSocket sync protocol on a
// relay, so that JavaScript apps built on automerge-repo sync the same
// records as Ferry devices: each connection is a peer syncing the
// documents of one collection, each document a record whose ID is a UUID.
//
// The endpoint reaches the relay only through relay.Backend: its changes
// take the same validation and store path as a device's push, it answers
// from the documents of the relay's one document cache, and it never
// touches a store. Mount it on a Server before serving:
//
//	srv, err := relay.NewServer(opts)
//	err = amrepo.Mount(srv, nil) // /automerge and /automerge/COLLECTION
//	hs := &http.Server{Handler: srv.Handler()}
//
// The Server's Shutdown and Close stop it with the relay. An Endpoint is
// safe for concurrent use. docs/automerge-repo.md describes the protocol
// as the relay speaks it, and its limits.
package amrepo
