// Package relay is the server devices sync through: per tenant (app) and
// collection, a durable log of accepted Automerge changes and each record's
// document, access control by API key and signed token, leases with fencing
// (one device at a time syncs a collection), live fan-out to subscribers,
// and per-app quotas (connections, push rate, stored bytes) for a relay
// shared by several apps.
//
// A Server speaks the protocol of package transport on /ws, over a Store:
// relay/badgerstore (embedded, the default), relay/pgstore (shared by
// several relays) or relay/memstore (tests); relay/storetest is the
// contract each passes. Running one:
//
//	store, err := badgerstore.Open(dir, nil)
//	auth, err := relay.NewAuth(apps, nil)
//	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: auth})
//	hs := &http.Server{Addr: ":8080", Handler: srv.Handler()}
//	go hs.ListenAndServe()
//	...
//	srv.Shutdown(ctx) // each session ends after its current request...
//	srv.Close()       // ...and those still running when ctx ends are cut off
//	hs.Shutdown(ctx)
//	store.Close()
//	auth.Close()
//
// An Auth verifies each app's tokens with its keys: HMAC secrets, PEM
// public keys, and identity providers' JWKS URLs, which it fetches and
// refreshes until Close. Reload replaces the apps while sessions go on;
// each session's token is checked again at its next request.
//
// Another protocol is served beside /ws by an Endpoint mounted on the
// Server (Mount), which reaches the relay only through Backend: package
// relay/amrepo serves automerge-repo's this way, at /automerge.
//
// Every push is validated (each change must frame, checksum and load, with
// its dependencies held) before it is stored, stored atomically with its
// lease fence checked in the same step, and acknowledged only once durable.
// A change the relay already holds is acknowledged, not stored again.
//
// Concurrency: a Server, an Auth, a Backend and every Store
// are safe for concurrent use. The other types (App, Claims, Lease,
// Record, Entry, Options, Quota, ...) are plain values: any number of
// goroutines may read one, none may modify one another is reading.
package relay
