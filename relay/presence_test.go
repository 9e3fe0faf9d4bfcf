package relay_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// dialDevice connects a raw device session with token as replica id.
func dialDevice(t testing.TB, rl *relaytest.Relay, token, id string) *transport.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, rl.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewClient(conn, nil)
	t.Cleanup(func() { c.Close() })
	if err := c.Call(ctx, &transport.Hello{APIKey: rl.App.APIKey, Token: token, ReplicaID: id, Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		t.Fatal(err)
	}
	return c
}

func presenceData(t testing.TB, msg map[string]any) []byte {
	t.Helper()
	b, err := cbor.Marshal(map[string]any{"__presence": msg})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// callOK sends req and waits for its ok.
func callOK(t testing.TB, c *transport.Client, req transport.Body) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Call(ctx, req, &transport.OK{})
}

func TestPresenceReachesReadersOfTheCollectionOnly(t *testing.T) {
	rl := relaytest.Start(t, nil)
	now := time.Now()
	outsider := rl.IssueToken(t, relay.TokenRequest{Subject: "o", TTL: time.Hour, Read: []string{"elsewhere"}}, now)

	ann := dialDevice(t, rl, rl.Token, "ann-device")
	bob := dialDevice(t, rl, rl.Token, "bob-device")
	eve := dialDevice(t, rl, outsider, "eve-device")
	for _, c := range []*transport.Client{bob} {
		if err := callOK(t, c, &transport.Subscribe{Collection: "docs"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := callOK(t, eve, &transport.Subscribe{Collection: "elsewhere"}); err != nil {
		t.Fatal(err)
	}
	// A token that may not read the collection can neither subscribe to
	// it nor send presence there.
	var perr *transport.Error
	if err := callOK(t, eve, &transport.Subscribe{Collection: "docs"}); !errors.As(err, &perr) || perr.Code != transport.CodeForbidden {
		t.Fatalf("eve subscribing to docs: %v, want forbidden", err)
	}
	if err := callOK(t, eve, &transport.Presence{Collection: "docs", Record: "r1", Data: presenceData(t, map[string]any{"type": "heartbeat"})}); !errors.As(err, &perr) || perr.Code != transport.CodeForbidden {
		t.Fatalf("eve's presence on docs: %v, want forbidden", err)
	}

	state := presenceData(t, map[string]any{"type": "snapshot", "state": map[string]any{"user": "ann"}})
	if err := callOK(t, ann, &transport.Presence{Collection: "docs", Record: "r1", Data: state}); err != nil {
		t.Fatal(err)
	}
	got := <-bob.Presence()
	if got.Peer != "ann-device" || got.Record != "r1" || string(got.Data) != string(state) {
		t.Fatalf("bob got %+v", got)
	}
	// The sender gets nothing back, and eve, on another collection,
	// nothing at all.
	select {
	case p := <-eve.Presence():
		t.Fatalf("eve, who may not read docs, got %+v", p)
	case p := <-ann.Presence():
		t.Fatalf("ann got her own presence back: %+v", p)
	default:
	}

	// ann's connection ends: bob hears her goodbye from the relay.
	ann.Close()
	bye := <-bob.Presence()
	var env struct {
		P struct {
			Type string `cbor:"type"`
		} `cbor:"__presence"`
	}
	if err := cbor.Unmarshal(bye.Data, &env); err != nil || bye.Peer != "ann-device" || env.P.Type != "goodbye" {
		t.Fatalf("after ann left bob got %+v (%v)", bye, err)
	}
	select {
	case p := <-eve.Presence():
		t.Fatalf("eve got %+v", p)
	default:
	}
}

func TestPresenceLimits(t *testing.T) {
	rl := relaytest.Start(t, nil)
	ann := dialDevice(t, rl, rl.Token, "ann-device")
	var perr *transport.Error
	// Not CBOR: refused, nothing passed on.
	if err := callOK(t, ann, &transport.Presence{Collection: "docs", Data: []byte{0xff, 0x00}}); !errors.As(err, &perr) || perr.Code != transport.CodeBadFrame {
		t.Fatalf("malformed presence: %v, want bad_frame", err)
	}
	// Over the size bound: the client refuses to send it.
	big := make([]byte, transport.MaxPresenceData+1)
	if err := callOK(t, ann, &transport.Presence{Collection: "docs", Data: big}); !errors.As(err, &perr) || perr.Code != transport.CodeTooLarge {
		t.Fatalf("oversized presence: %v, want too_large", err)
	}
	// Faster than the rate: refused with a time to wait.
	hb := presenceData(t, map[string]any{"type": "heartbeat"})
	var limited bool
	for i := 0; i < 200 && !limited; i++ {
		err := callOK(t, ann, &transport.Presence{Collection: "docs", Record: "r1", Data: hb})
		if errors.As(err, &perr) && perr.Code == transport.CodeRateLimited && perr.RetryMS > 0 {
			limited = true
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if !limited {
		t.Fatal("200 presence messages in a row were never rate limited")
	}
}
