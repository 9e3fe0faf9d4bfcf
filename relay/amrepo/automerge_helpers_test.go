package amrepo

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/ferrysync/ferry/crdt"
)

// amURL is the automerge-repo URL of the test relay for path (after
// /automerge) with the query's credentials.
func (tr *testRelay) amURL(path string, q url.Values) string {
	return strings.Replace(tr.url, "/ws", "/automerge"+path, 1) + "?" + q.Encode()
}

// amCreds are a read/write-all user's credentials of app.
func (tr *testRelay) amCreds(app string) url.Values {
	return url.Values{"api_key": {tr.apps[app].APIKey}, "token": {tr.tokens[app]}}
}

// goPeer is an automerge-repo peer written in Go, for tests: it speaks the
// WebSocket protocol and syncs documents with crdt.SyncState, applying the
// changes it receives with Import (as the relay does).
type goPeer struct {
	t    testing.TB
	ws   *websocket.Conn
	id   string
	docs map[string]*goPeerDoc
	in   chan *amMessage
	errc chan error
}

type goPeerDoc struct {
	doc   *crdt.Doc
	state *crdt.SyncState
}

// dialAM connects and reads until the relay's answer to join, which it
// returns (peer, or error).
func dialAM(t testing.TB, u, peerID string) (*goPeer, *amMessage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	ws.SetReadLimit(64 << 20)
	p := &goPeer{t: t, ws: ws, id: peerID, docs: map[string]*goPeerDoc{}, in: make(chan *amMessage, 1024), errc: make(chan error, 1)}
	t.Cleanup(func() { ws.CloseNow() })
	go func() {
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				p.errc <- err
				close(p.in)
				return
			}
			m, err := decodeAMMessage(b)
			if err != nil {
				p.errc <- err
				close(p.in)
				return
			}
			p.in <- m
		}
	}()
	p.send(&amMessage{Type: amJoin, SenderID: peerID, PeerMetadata: &amPeerMetadata{}, SupportedProtocolVersions: []string{"1"}})
	return p, p.next()
}

func (p *goPeer) send(m *amMessage) {
	p.t.Helper()
	b, err := encodeAMMessage(m)
	if err != nil {
		p.t.Fatal(err)
	}
	p.sendRaw(b)
}

func (p *goPeer) sendRaw(b []byte) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		p.t.Fatalf("send: %v", err)
	}
}

// next returns the next message, or nil once the connection is closed.
func (p *goPeer) next() *amMessage {
	p.t.Helper()
	select {
	case m := <-p.in:
		return m
	case <-time.After(20 * time.Second):
		p.t.Fatal("no message from the relay")
		return nil
	}
}

// closed waits for the relay to close the connection and returns how.
func (p *goPeer) closed() error {
	p.t.Helper()
	for m := p.next(); m != nil; m = p.next() {
	}
	return <-p.errc
}

func (p *goPeer) doc(id string) *goPeerDoc {
	d := p.docs[id]
	if d == nil {
		nd, err := crdt.New("")
		if err != nil {
			p.t.Fatal(err)
		}
		d = &goPeerDoc{doc: nd, state: crdt.NewSyncState()}
		p.docs[id] = d
	}
	return d
}

// edit sets fields of a document and commits.
func (p *goPeer) edit(id string, fields map[string]any) {
	p.t.Helper()
	d := p.doc(id)
	if err := d.doc.Put(fields); err != nil {
		p.t.Fatal(err)
	}
	if _, err := d.doc.Commit("", time.Time{}); err != nil {
		p.t.Fatal(err)
	}
}

// sync sends the relay what it may lack of a document, as typ (request or
// sync); false if there was nothing to send.
func (p *goPeer) sync(id, typ string) bool {
	p.t.Helper()
	d := p.doc(id)
	msg, ok, err := d.state.Generate(d.doc)
	if err != nil {
		p.t.Fatal(err)
	}
	if ok {
		p.send(&amMessage{Type: typ, SenderID: p.id, TargetID: "ferry-relay", DocumentID: id, Data: msg})
	}
	return ok
}

// take applies a sync message from the relay and answers it.
func (p *goPeer) take(m *amMessage) {
	p.t.Helper()
	d := p.doc(m.DocumentID)
	sm, err := parseSyncMessage(m.Data)
	if err != nil {
		p.t.Fatal(err)
	}
	if len(sm.changes) > 0 {
		if _, err := d.doc.Import(sm.changeData()); err != nil {
			p.t.Fatal(err)
		}
	}
	if err := d.state.Receive(d.doc, sm.encodeV1()); err != nil {
		p.t.Fatal(err)
	}
	p.sync(m.DocumentID, amSync)
}

// until takes messages (answering sync messages) until cond holds for a
// message; it returns that message. Messages cond rejects are handled.
func (p *goPeer) until(cond func(*amMessage) bool) *amMessage {
	p.t.Helper()
	for {
		m := p.next()
		if m == nil {
			p.t.Fatalf("connection closed: %v", <-p.errc)
		}
		if m.Type == amSync {
			p.take(m)
		}
		if cond(m) {
			return m
		}
	}
}

// field reads a document's field as a plain Go value.
func (p *goPeer) field(id, name string) any {
	v, _, err := p.doc(id).doc.Lookup(crdt.Path{name})
	if err != nil {
		p.t.Fatal(err)
	}
	return v
}

// newDocID returns a fresh document ID and its record ID.
func newDocID(t testing.TB) (string, string) {
	u, err := uuid.NewV7()
	if err != nil {
		t.Fatal(err)
	}
	return documentIDForRecord(u.String()), u.String()
}

// relayHas reports whether m is the relay saying it holds everything the
// peer has of the document.
func (p *goPeer) relayHas(m *amMessage, id string) bool {
	sm, err := parseSyncMessage(m.Data)
	if err != nil || m.DocumentID != id {
		return false
	}
	return crdt.Heads(sm.heads).Equal(p.doc(id).doc.Heads())
}
