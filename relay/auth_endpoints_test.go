package relay_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fxamacker/cbor/v2"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

// A token signed with an app's public key is accepted on /ws and on
// /automerge alike. Once a reload removes the key, each connection holding
// such a token is refused at its next check: a request gets
// token_expired, an idle live subscription wakes and ends with
// token_expired, an automerge-repo connection ends at its next message.
// Sessions whose tokens another key signed go on. The log names the
// check that failed, never the token.
func TestRemovedKeyRefusedOnBothEndpoints(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	var auth *relay.Auth
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logWriter{w: &logs, mu: &mu}, nil))
		auth = o.Auth
	})
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	shop, rival := tr.apps["shop"], tr.apps["rival"]
	shop.Keys = []relay.Key{{ID: "ec-1", PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}}
	if err := auth.Reload([]relay.App{shop, rival}); err != nil {
		t.Fatal(err)
	}
	ecTok := func(sub string) string {
		tk := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": sub, "aud": "shop", "exp": tr.clock.Now().Add(time.Hour).Unix(), "write": []string{"*"}})
		tk.Header["kid"] = "ec-1"
		s, err := tk.SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tok := ecTok("ann")
	req, _, err := tr.dial(shop.APIKey, tok, "r1")
	if err != nil {
		t.Fatalf("hello with the EC token: %v", err)
	}
	mustCall[transport.Changes](t, req, &transport.Pull{Collection: "todos"})
	sub, _, err := tr.dial(shop.APIKey, ecTok("bob"), "r2")
	if err != nil {
		t.Fatal(err)
	}
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "todos"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	amURL := strings.Replace(tr.url, "/ws", "/automerge/todos", 1) + "?" + url.Values{"api_key": {shop.APIKey}, "token": {tok}}.Encode()
	joinAM := func(peer string) (*websocket.Conn, amAnswer) {
		ws, _, err := websocket.Dial(ctx, amURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.CloseNow() })
		join, _ := cbor.Marshal(map[string]any{"type": "join", "senderId": peer, "peerMetadata": map[string]any{}, "supportedProtocolVersions": []string{"1"}})
		if err := ws.Write(ctx, websocket.MessageBinary, join); err != nil {
			t.Fatal(err)
		}
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("no answer to join: %v", err)
		}
		var m amAnswer
		if err := cbor.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return ws, m
	}
	peer, m := joinAM("peer")
	if m.Type != "peer" {
		t.Fatalf("automerge-repo join answered %+v", m)
	}
	hmac := tr.client("shop") // its token is signed with the app's secret

	shop.Keys = nil
	if err := auth.Reload([]relay.App{shop, rival}); err != nil {
		t.Fatal(err)
	}
	_, err = call[transport.Changes](t, req, &transport.Pull{Collection: "todos"})
	if !errors.Is(err, transport.ErrTokenExpired) || !strings.Contains(err.Error(), "no longer configured") {
		t.Fatalf("request after the key was removed: %v, want token_expired", err)
	}
	expectEnd(t, sub, transport.ErrTokenExpired)
	// The peer's next message finds it, unless its live loop has already
	// checked since the reload: either way the connection ends so.
	eph, _ := cbor.Marshal(map[string]any{"type": "ephemeral", "senderId": "peer", "targetId": "ferry-relay", "data": []byte{0xa0}})
	peer.Write(ctx, websocket.MessageBinary, eph) // it may be closed already
	var last amAnswer
	for {
		_, b, err := peer.Read(ctx)
		if err != nil {
			break
		}
		cbor.Unmarshal(b, &last)
	}
	if last.Type != "error" || !strings.Contains(last.Message, "no longer configured") {
		t.Fatalf("automerge-repo after the key was removed: %+v", last)
	}
	mustCall[transport.Changes](t, hmac, &transport.Pull{Collection: "todos"})
	// The token is refused at hello now, on both endpoints.
	if _, _, err := tr.dial(shop.APIKey, tok, "r3"); !errors.Is(err, transport.ErrUnauthenticated) {
		t.Fatalf("hello with the removed key's token: %v", err)
	}
	if _, m := joinAM("peer2"); m.Type != "error" {
		t.Fatalf("automerge-repo join with the removed key's token: %+v", m)
	}

	mu.Lock()
	defer mu.Unlock()
	log := logs.String()
	for _, want := range []string{"in=ws app=shop check=key_removed", "in=automerge app=shop check=key_removed", "in=hello app=shop check=algorithm"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, tok) || strings.Contains(log, strings.Split(tok, ".")[2]) {
		t.Errorf("log holds the token:\n%s", log)
	}
}
