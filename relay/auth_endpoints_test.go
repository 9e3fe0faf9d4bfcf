package relay

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
	"github.com/golang-jwt/jwt/v5"

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
	tr := newTestRelay(t, NewMemStore(), func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	})
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	shop, rival := tr.apps["shop"], tr.apps["rival"]
	shop.Keys = []Key{{ID: "ec-1", PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}}
	if err := tr.srv.auth.Reload([]App{shop, rival}); err != nil {
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
	peer, m := dialAM(t, tr.amURL("/todos", url.Values{"api_key": {shop.APIKey}, "token": {tok}}), "peer")
	if m == nil || m.Type != amPeer {
		t.Fatalf("automerge-repo join answered %+v", m)
	}
	hmac := tr.client("shop") // its token is signed with the app's secret

	shop.Keys = nil
	if err := tr.srv.auth.Reload([]App{shop, rival}); err != nil {
		t.Fatal(err)
	}
	_, err = call[transport.Changes](t, req, &transport.Pull{Collection: "todos"})
	if !errors.Is(err, transport.ErrTokenExpired) || !strings.Contains(err.Error(), "no longer configured") {
		t.Fatalf("request after the key was removed: %v, want token_expired", err)
	}
	expectEnd(t, sub, transport.ErrTokenExpired)
	// The peer's next message finds it, unless its live loop has already
	// checked since the reload: either way the connection ends so.
	if b, err := encodeAMMessage(&amMessage{Type: amEphemeral, SenderID: "peer", TargetID: "ferry-relay", Data: []byte{0xa0}}); err == nil {
		peer.ws.Write(context.Background(), websocket.MessageBinary, b) // it may be closed already
	}
	var last *amMessage
	for m := peer.next(); m != nil; m = peer.next() {
		last = m
	}
	if last == nil || last.Type != amError || !strings.Contains(last.Message, "no longer configured") {
		t.Fatalf("automerge-repo after the key was removed: %+v", last)
	}
	mustCall[transport.Changes](t, hmac, &transport.Pull{Collection: "todos"})
	// The token is refused at hello now, on both endpoints.
	if _, _, err := tr.dial(shop.APIKey, tok, "r3"); !errors.Is(err, transport.ErrUnauthenticated) {
		t.Fatalf("hello with the removed key's token: %v", err)
	}
	if _, m := dialAM(t, tr.amURL("/todos", url.Values{"api_key": {shop.APIKey}, "token": {tok}}), "peer2"); m == nil || m.Type != amError {
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
