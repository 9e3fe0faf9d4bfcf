package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fxamacker/cbor/v2"
)

// The dev relay prints an automerge-repo URL on a line of its own that
// works as printed, from a page on localhost too.
func TestRelayDevPrintsAutomergeURL(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"relay", "--dev", "--data", t.TempDir(), "--addr", "127.0.0.1:0", "--log-level", "error"}, out, out)
	}()
	var amURL string
	for amURL == "" {
		select {
		case err := <-done:
			t.Fatalf("relay exited: %v\n%s", err, out.String())
		case <-out.changed():
		}
		for _, line := range strings.Split(out.String(), "\n") {
			if strings.HasPrefix(line, "ws://") && strings.Contains(line, "/automerge/todos?") {
				amURL = line
			}
		}
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	hdr := http.Header{"Origin": {"http://localhost:5173"}}
	ws, _, err := websocket.Dial(dctx, amURL, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatalf("dial %s: %v", amURL, err)
	}
	join, _ := cbor.Marshal(map[string]any{"type": "join", "senderId": "page", "peerMetadata": map[string]any{}, "supportedProtocolVersions": []string{"1"}})
	if err := ws.Write(dctx, websocket.MessageBinary, join); err != nil {
		t.Fatal(err)
	}
	_, b, err := ws.Read(dctx)
	var answer map[string]any
	if err == nil {
		err = cbor.Unmarshal(b, &answer)
	}
	if err != nil || answer["type"] != "peer" {
		t.Fatalf("join answered %v, %v", answer, err)
	}
	ws.CloseNow()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
}
