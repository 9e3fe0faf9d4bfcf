package relay_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

// A relay with one app, in memory, behind an httptest server. A device with
// a read-write token pushes a record; one with a read-only token pulls it,
// and is refused when it pushes.
func ExampleNewServer() {
	ctx := context.Background()
	app := relay.NewApp("shop")
	auth, _ := relay.NewAuth([]relay.App{app}, nil)
	store := memstore.New()
	srv, _ := relay.NewServer(&relay.Options{Store: store, Auth: auth})
	hs := httptest.NewServer(srv.Handler())
	defer func() {
		srv.Shutdown(ctx)
		srv.Close()
		hs.Close()
		store.Close()
	}()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"

	// The app's login service issues tokens; it alone holds the secret.
	writer, _ := relay.IssueToken(app, relay.TokenRequest{Subject: "alice", TTL: time.Hour, Write: []string{"orders"}}, time.Now())
	reader, _ := relay.IssueToken(app, relay.TokenRequest{Subject: "bob", TTL: time.Hour, Read: []string{"orders"}}, time.Now())

	connect := func(token, replica string) *transport.Client {
		conn, err := transport.Dial(ctx, url, nil)
		if err != nil {
			panic(err)
		}
		c := transport.NewClient(conn, nil)
		var w transport.Welcome
		if err := c.Call(ctx, &transport.Hello{APIKey: app.APIKey, Token: token, ReplicaID: replica,
			Versions: transport.SupportedVersions()}, &w); err != nil {
			panic(err)
		}
		return c
	}

	doc, _ := crdt.New("aa01")
	defer doc.Free()
	_ = doc.Set(crdt.Path{"item"}, "lamp")
	_, _ = doc.Commit("", time.Now())
	changes, _ := doc.ChangesSince(nil)
	push := &transport.Push{Collection: "orders", Records: []transport.RecordChanges{{Record: "o1", Data: changes}}}

	alice := connect(writer, "aa01")
	defer alice.Close()
	var ack transport.Ack
	err := alice.Call(ctx, push, &ack)
	fmt.Println("alice pushes:", err)

	bob := connect(reader, "bb02")
	defer bob.Close()
	var got transport.Changes
	_ = bob.Call(ctx, &transport.Pull{Collection: "orders"}, &got)
	for _, r := range got.Records {
		fmt.Println("bob pulls:", r.Record, r.Snapshot)
	}
	err = bob.Call(ctx, push, &ack)
	fmt.Println("bob pushes:", errors.Is(err, transport.ErrForbidden))
	// Output:
	// alice pushes: <nil>
	// bob pulls: o1 true
	// bob pushes: true
}
