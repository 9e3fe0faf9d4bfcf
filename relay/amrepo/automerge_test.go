package amrepo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fxamacker/cbor/v2"
	"golang.org/x/time/rate"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

func TestDocumentIDs(t *testing.T) {
	// Vectors from automerge-repo's bs58check.
	for _, v := range []struct{ id, record string }{
		{"1Bhh3pU9gLXZiNDL6PEa1Gs9fh", "00010203-0405-0607-0809-0a0b0c0d0e0f"},
		{"11111111111111114Ki9Gx", "00000000-0000-0000-0000-000000000000"},
		{"4ZrjxJnU1LA5xSyrWMNuXTozYEvA", "ffffffff-ffff-ffff-ffff-ffffffffffff"},
	} {
		r, err := recordForDocumentID(v.id)
		if err != nil || r != v.record {
			t.Errorf("recordForDocumentID(%q) = %q, %v; want %q", v.id, r, err, v.record)
		}
		if id := documentIDForRecord(v.record); id != v.id {
			t.Errorf("documentIDForRecord(%q) = %q, want %q", v.record, id, v.id)
		}
	}
	for _, bad := range []string{"", "0OIl", "1Bhh3pU9gLXZiNDL6PEa1Gs9fi", "11111111111111111111111111111", "3vQB7B6MrGQZaxCuFg4oh"} {
		if _, err := recordForDocumentID(bad); !errors.Is(err, errDocumentID) {
			t.Errorf("recordForDocumentID(%q) = %v, want errDocumentID", bad, err)
		}
	}
	for _, r := range []string{"p1", "00010203-0405-0607-0809-0A0B0C0D0E0F", "{00010203-0405-0607-0809-0a0b0c0d0e0f}"} {
		if id := documentIDForRecord(r); id != "" {
			t.Errorf("record %q has document ID %q; only canonical UUIDs have one", r, id)
		}
	}
}

func TestAutomergeCreateFindAndLive(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	docID, record := newDocID(t)

	// An automerge-repo peer creates a document: it becomes a record.
	a, hello := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "peer-a")
	// The relay is a peer of its own per collection: automerge-repo
	// routes by peer ID.
	if hello.Type != amPeer || hello.SelectedProtocolVersion != "1" || hello.TargetID != "peer-a" || hello.SenderID != "ferry-relay/todos" {
		t.Fatalf("join answered %+v", hello)
	}
	a.edit(docID, map[string]any{"title": "buy milk", "done": false})
	a.sync(docID, amSync)
	// Once stored, the relay says so: its heads are the peer's.
	a.until(func(m *amMessage) bool { return m.Type == amSync && a.relayHas(m, docID) })

	dev := tr.client("shop")
	ch := mustCall[transport.Changes](t, dev, &transport.Pull{Collection: "todos"})
	if len(ch.Records) != 1 || ch.Records[0].Record != record {
		t.Fatalf("device pulled %+v", ch)
	}
	if f := storetest.FieldsAfter(t, ch.Records[0].Data); f["title"] != "buy milk" || f["done"] != false {
		t.Fatalf("device sees %v", f)
	}
	heads, _ := crdt.HeadsFromSlices(ch.Records[0].Heads)
	if !heads.Equal(a.doc(docID).doc.Heads()) {
		t.Fatalf("stored heads %v, peer has %v", heads, a.doc(docID).doc.Heads())
	}

	// A second peer finds it.
	b, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "peer-b")
	b.sync(docID, amRequest)
	b.until(func(m *amMessage) bool { return m.Type == amSync && b.field(docID, "title") == "buy milk" })

	// A device's edit reaches both peers live.
	ed := storetest.NewEditor(t, "dd01")
	if _, err := ed.Doc.Import(ch.Records[0].Data); err != nil {
		t.Fatal(err)
	}
	ed.At = ed.Doc.Heads()
	mustCall[transport.Ack](t, dev, pushOf("todos", 0, rec(record, ed.Edit(map[string]any{"done": true}))))
	for _, p := range []*goPeer{a, b} {
		p.until(func(m *amMessage) bool { return p.field(docID, "done") == true })
	}

	// A peer's edit reaches the other peer and the device.
	mustCall[transport.OK](t, dev, &transport.Subscribe{Collection: "todos", Cursor: ch.Next + 1})
	b.edit(docID, map[string]any{"title": "buy oat milk"})
	b.sync(docID, amSync)
	// b answers the relay until the relay holds its edit, as a real peer
	// does: its message may name its new heads without the change (its
	// sync state's choice), and the relay then asks for it.
	b.until(func(m *amMessage) bool { return m.Type == amSync && b.relayHas(m, docID) })
	a.until(func(m *amMessage) bool { return a.field(docID, "title") == "buy oat milk" })
	lv := nextLive(t, dev)
	if _, err := ed.Doc.Import(lv.Records[0].Data); err != nil {
		t.Fatal(err)
	}
	if v, _ := ed.Doc.Get(crdt.Path{"title"}); v != "buy oat milk" {
		t.Fatalf("device sees title %v", v)
	}
}

func TestAutomergeUnknownDocument(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "peer")
	docID, _ := newDocID(t)
	p.sync(docID, amRequest)
	if m := p.next(); m.Type != amUnavailable || m.DocumentID != docID {
		t.Fatalf("request of an unknown document answered %+v", m)
	}
}

func TestAutomergeAnnounce(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	dev := tr.client("shop")
	_, r1 := newDocID(t)
	ed := storetest.NewEditor(t, "ee01")
	mustCall[transport.Ack](t, dev, pushOf("todos", 0, rec(r1, ed.Edit(map[string]any{"title": "one"})), rec("not-a-uuid", storetest.NewEditor(t, "ee03").Edit(map[string]any{"title": "x"}))))

	q := tr.amCreds("shop")
	q.Set("announce", "1")
	p, _ := dialAM(t, tr.amURL("/todos", q), "peer")
	id1 := documentIDForRecord(r1)
	m := p.until(func(m *amMessage) bool { return m.Type == amSync && p.field(m.DocumentID, "title") == "one" })
	if m.DocumentID != id1 || len(p.docs) != 1 {
		t.Fatalf("announced %s, want only %s", m.DocumentID, id1)
	}
	// A record created later is announced too.
	_, r2 := newDocID(t)
	ed2 := storetest.NewEditor(t, "ee02")
	mustCall[transport.Ack](t, dev, pushOf("todos", 0, rec(r2, ed2.Edit(map[string]any{"title": "two"}))))
	p.until(func(m *amMessage) bool {
		return m.DocumentID == documentIDForRecord(r2) && p.field(m.DocumentID, "title") == "two"
	})
}

func TestAutomergeReadOnlyChangesRefused(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	ro := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: time.Hour, Read: []string{"todos"}})
	q := url.Values{"api_key": {tr.apps["shop"].APIKey}, "token": {ro}}
	// The collection comes from the token, which names one.
	p, hello := dialAM(t, tr.amURL("", q), "viewer")
	if hello.Type != amPeer || hello.SenderID != "ferry-relay/todos" {
		t.Fatalf("join answered %+v", hello)
	}
	docID, _ := newDocID(t)
	p.edit(docID, map[string]any{"title": "sneaky"})
	p.sync(docID, amSync)
	m := p.until(func(m *amMessage) bool { return m.Type == amError })
	if !strings.Contains(m.Message, "does not grant write") {
		t.Fatalf("read-only change answered %+v", m)
	}
	// The viewer stays connected.
	p.sync(docID, amRequest)
	if h, _ := tr.store.Head(context.Background(), relay.Coll{Tenant: "shop", Collection: "todos"}); h != 0 {
		t.Fatalf("a read-only peer's change was stored (head %d)", h)
	}
}

func TestAutomergeAuthRefusals(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	other := tr.token("shop", relay.TokenRequest{Subject: "u", TTL: time.Hour, Read: []string{"other"}})
	multi := tr.token("shop", relay.TokenRequest{Subject: "u", TTL: time.Hour, Write: []string{"a", "b"}})
	expired := tr.token("shop", relay.TokenRequest{Subject: "u", TTL: time.Minute, Write: []string{"*"}})
	tr.clock.Advance(2 * time.Minute)
	key := tr.apps["shop"].APIKey
	for _, c := range []struct {
		name, path string
		q          url.Values
		want       string
	}{
		{"no credentials", "/todos", url.Values{}, "unauthenticated"},
		{"unknown key", "/todos", url.Values{"api_key": {"nope"}, "token": {tr.tokens["shop"]}}, "unknown API key"},
		{"other app's token", "/todos", url.Values{"api_key": {key}, "token": {tr.tokens["rival"]}}, "unauthenticated"},
		{"expired", "/todos", url.Values{"api_key": {key}, "token": {expired}}, "expired"},
		{"no read right", "/todos", url.Values{"api_key": {key}, "token": {other}}, "does not grant read"},
		{"no collection", "", url.Values{"api_key": {key}, "token": {multi}}, "name the collection"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, m := dialAM(t, tr.amURL(c.path, c.q), "peer")
			if m == nil || m.Type != amError || !strings.Contains(m.Message, c.want) {
				t.Fatalf("join answered %+v, want an error with %q", m, c.want)
			}
			if s := websocket.CloseStatus(p.closed()); s != websocket.StatusPolicyViolation {
				t.Fatalf("closed with %v, want policy violation", s)
			}
		})
	}
	// Cookies work where the URL has no credentials.
	ctx := context.Background()
	hdr := http.Header{}
	hdr.Add("Cookie", "ferry_api_key="+key+"; ferry_token="+tr.tokens["shop"])
	ws, _, err := websocket.Dial(ctx, tr.amURL("/todos", nil), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	b, _ := encodeAMMessage(&amMessage{Type: amJoin, SenderID: "c"})
	ws.Write(ctx, websocket.MessageBinary, b)
	_, b, err = ws.Read(ctx)
	if m, _ := decodeAMMessage(b); err != nil || m.Type != amPeer {
		t.Fatalf("cookie credentials: %+v, %v", m, err)
	}
}

func TestAutomergeEphemeral(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	docID, _ := newDocID(t)
	var peers []*goPeer
	for _, id := range []string{"a", "b", "c"} {
		p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), id)
		p.edit(docID, map[string]any{"x": 1})
		p.sync(docID, amSync)
		p.until(func(m *amMessage) bool { return m.Type == amSync })
		peers = append(peers, p)
	}
	// A peer that has not opened the document gets nothing.
	outsider, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "d")
	peers[0].send(&amMessage{Type: amEphemeral, SenderID: "a", TargetID: "ferry-relay", DocumentID: docID, Count: 7, SessionID: "s1", Data: []byte{0xa1, 0x61, 0x78, 0x01}})
	for _, p := range peers[1:] {
		m := p.until(func(m *amMessage) bool { return m.Type == amEphemeral })
		if m.SenderID != "a" || m.TargetID != p.id || m.Count != 7 || m.SessionID != "s1" || !bytes.Equal(m.Data, []byte{0xa1, 0x61, 0x78, 0x01}) || m.DocumentID != docID {
			t.Fatalf("%s got %+v", p.id, m)
		}
	}
	// automerge-repo passes on what it receives to its other peers, the
	// relay included: that copy, sent under another peer's ID, is dropped,
	// not taken as an impostor (which closed the client's connection).
	peers[1].send(&amMessage{Type: amEphemeral, SenderID: "a", TargetID: "ferry-relay/todos", DocumentID: docID, Count: 7, SessionID: "s1", Data: []byte{0xa1, 0x61, 0x78, 0x01}})
	// The sender does not get its own message back, nor does the outsider,
	// nor does anyone get the copy: a sync round trip after it shows
	// nothing came before, and the copy's sender is still connected.
	for _, p := range []*goPeer{peers[0], peers[1], peers[2], outsider} {
		p.send(&amMessage{Type: amRequest, SenderID: p.id, DocumentID: "11111111111111114Ki9Gx", Data: []byte{0x42, 0, 0, 0, 0}})
		if m := p.until(func(m *amMessage) bool { return m.Type != amSync }); m.Type != amUnavailable {
			t.Fatalf("%s got %+v before its answer", p.id, m)
		}
	}
}

func TestAutomergeHostileInput(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *testOptions) { o.Limits.MaxFrame, o.Limits.MaxRecord = 1<<20, 512<<10 })
	docID, _ := newDocID(t)
	deep := bytes.Repeat([]byte{0x81}, 10_000) // arrays in arrays
	huge := []byte{0xa1, 0x64, 't', 'y', 'p', 'e', 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	wrongType, _ := cbor.Marshal(map[string]any{"type": "sync", "senderId": "p", "documentId": docID, "data": "not bytes"})
	notMap, _ := cbor.Marshal([]any{"type", "sync"})
	tag, _ := cbor.Marshal(cbor.Tag{Number: 64, Content: []byte{1}})
	dup := []byte{0xa2, 0x64, 't', 'y', 'p', 'e', 0x64, 's', 'y', 'n', 'c', 0x64, 't', 'y', 'p', 'e', 0x64, 's', 'y', 'n', 'c'}
	indef := []byte{0xbf, 0x64, 't', 'y', 'p', 'e', 0x64, 's', 'y', 'n', 'c', 0xff}
	badSync := func(data []byte) []byte {
		b, _ := encodeAMMessage(&amMessage{Type: amSync, SenderID: "p", DocumentID: docID, Data: data})
		return b
	}
	bloom := []byte{0x42, 0, 0, 1, 0, 4, 5, 0, 0, 0, 0, 0} // 5 entries, 0 bits each: automerge would divide by zero
	manyHeads := []byte{0x42, 0xff, 0xff, 0xff, 0xff, 0x0f}
	badChange := append([]byte{0x42, 0, 0, 0, 1, 5}, 1, 2, 3, 4, 5)
	for name, frame := range map[string][]byte{
		"deep nesting":       deep,
		"huge declared size": huge,
		"wrong field type":   wrongType,
		"not a map":          notMap,
		"tag":                tag,
		"duplicate key":      dup,
		"indefinite length":  indef,
		"garbage":            {0xff, 0x00, 0x13},
		"bad document ID": func() []byte {
			b, _ := encodeAMMessage(&amMessage{Type: amSync, SenderID: "p", DocumentID: "nope", Data: []byte{0x42}})
			return b
		}(),
		"sync: zero-bit bloom":  badSync(bloom),
		"sync: too many heads":  badSync(manyHeads),
		"sync: corrupt change":  badSync(badChange),
		"sync: wrong type byte": badSync([]byte{0x41, 0, 0, 0, 0}),
		"over max frame":        bytes.Repeat([]byte{0}, 2<<20),
	} {
		t.Run(name, func(t *testing.T) {
			p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "p")
			p.ws.Write(context.Background(), websocket.MessageBinary, frame) // may fail: the relay closes mid-frame
			err := p.closed()
			if s := websocket.CloseStatus(err); s != websocket.StatusPolicyViolation && s != websocket.StatusMessageTooBig {
				t.Fatalf("closed with %v (%v)", s, err)
			}
		})
	}
	// The relay still serves.
	p, m := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "after")
	if m.Type != amPeer {
		t.Fatalf("after hostile input: %+v", m)
	}
	p.edit(docID, map[string]any{"ok": true})
	p.sync(docID, amSync)
	p.until(func(m *amMessage) bool { return m.Type == amSync })
}

func TestAutomergeMaxDocs(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *testOptions) { o.Automerge.MaxDocs = 2 })
	p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "p")
	for i := 0; i < 2; i++ {
		id, _ := newDocID(t)
		p.sync(id, amRequest)
		if m := p.next(); m.Type != amUnavailable {
			t.Fatal(m)
		}
	}
	id, _ := newDocID(t)
	p.sync(id, amRequest)
	if m := p.next(); m.Type != amError || !strings.Contains(m.Message, "at most 2 documents") {
		t.Fatalf("third document answered %+v", m)
	}
}

func TestOriginsAllowedExplicitly(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	tr := newTestRelay(t, memstore.New(), func(o *testOptions) {
		o.AllowedOrigins = []string{"app.example.com", "http://localhost:*"}
		o.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	})
	for _, c := range []struct {
		path, origin string
		ok           bool
	}{
		{"/ws", "https://evil.example.org", false},
		{"/automerge/todos", "https://evil.example.org", false},
		{"/automerge/todos", "https://app.example.com", true},
		{"/ws", "https://app.example.com", true},
		{"/automerge/todos", "http://localhost:5173", true},
		{"/automerge/todos", "https://localhost:5173", false},
		{"/automerge/todos", "", true},
	} {
		hdr := http.Header{}
		if c.origin != "" {
			hdr.Set("Origin", c.origin)
		}
		u := strings.Replace(tr.url, "/ws", c.path, 1) + "?" + tr.amCreds("shop").Encode()
		ws, resp, err := websocket.Dial(context.Background(), u, &websocket.DialOptions{HTTPHeader: hdr})
		if c.ok != (err == nil) {
			t.Errorf("%s from %q: err %v, want ok=%v", c.path, c.origin, err, c.ok)
		}
		if err == nil {
			ws.CloseNow()
		} else if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s from %q: response %v, want 403", c.path, c.origin, resp)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "refused a cross-origin WebSocket") || !strings.Contains(logs.String(), "evil.example.org") {
		t.Fatalf("no clear log line for the refusal:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), tr.tokens["shop"]) || strings.Contains(logs.String(), tr.apps["shop"].APIKey) {
		t.Fatalf("credentials logged:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func TestScrubURL(t *testing.T) {
	u, _ := url.Parse("ws://relay/automerge/todos?api_key=fk_secret&token=eyJ.secret&announce=1")
	s := scrubURL(u)
	if strings.Contains(s, "secret") || !strings.Contains(s, "announce=1") {
		t.Fatal(s)
	}
}

// The connection's limiter holds MessageBurst messages, then one per
// 1/MessageRate s.
func TestRateLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := rate.NewLimiter(10, 3)
	reserve := func() time.Duration { return l.ReserveN(now, 1).DelayFrom(now) }
	for i := 0; i < 3; i++ {
		if d := reserve(); d != 0 {
			t.Fatalf("burst message %d waits %v", i, d)
		}
	}
	if d := reserve(); d != 100*time.Millisecond {
		t.Fatalf("past the burst: wait %v, want 100ms", d)
	}
	now = now.Add(time.Second) // refills 10, capped at 3, less the one owed
	for i := 0; i < 2; i++ {
		if d := reserve(); d != 0 {
			t.Fatalf("after refill, message %d waits %v", i, d)
		}
	}
}

// A peer skips a change the relay's bloom filter wrongly claims, and sends
// only the one after it: the relay keeps that one, asks for the missing one
// in its need list, and stores both once it arrives.
func TestAutomergeMissingDependencyIsAskedFor(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	docID, record := newDocID(t)
	p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "p")
	p.edit(docID, map[string]any{"n": 1})
	first, _ := p.doc(docID).doc.ChangesSince(nil)
	at := p.doc(docID).doc.Heads()
	p.edit(docID, map[string]any{"n": 2})
	second, _ := p.doc(docID).doc.ChangesSince(at)
	heads := p.doc(docID).doc.Heads()

	send := func(changes []byte) {
		msg := (&syncMessage{heads: heads, have: []syncHave{{}}}).encodeV1()
		msg = msg[:len(msg)-1]
		msg = append(msg, 1)
		msg = binary.AppendUvarint(msg, uint64(len(changes)))
		msg = append(msg, changes...)
		p.send(&amMessage{Type: amSync, SenderID: "p", DocumentID: docID, Data: msg})
	}
	send(second)
	m := p.next()
	sm, err := parseSyncMessage(m.Data)
	if err != nil || m.Type != amSync {
		t.Fatalf("answer %+v, %v", m, err)
	}
	infos, _ := crdt.ParseChanges(first)
	wantNeed := infos[0].Hash
	if !slices.Contains(sm.need, wantNeed) {
		t.Fatalf("relay needs %v, want %v", sm.need, wantNeed)
	}
	if _, err := tr.store.Record(context.Background(), relay.Coll{Tenant: "shop", Collection: "todos"}, record); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("a change with a missing dependency was stored: %v", err)
	}
	send(first)
	m = p.until(func(m *amMessage) bool {
		sm, _ := parseSyncMessage(m.Data)
		return m.Type == amSync && crdt.Heads(sm.heads).Equal(heads)
	})
	stored, err := tr.store.Record(context.Background(), relay.Coll{Tenant: "shop", Collection: "todos"}, record)
	if err != nil || !stored.Heads.Equal(heads) {
		t.Fatalf("stored heads %v (%v), want %v", stored.Heads, err, heads)
	}
}

// A peer's sync message may name new heads without their changes (its
// sync state's choice, when it awaits an answer): the relay asks for them
// (need), or neither side would speak again and the edit would never
// arrive.
func TestAutomergeHeadsWithoutChangesAreAskedFor(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	docID, _ := newDocID(t)
	a, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "peer-a")
	a.edit(docID, map[string]any{"title": "buy milk"})
	a.sync(docID, amSync)
	a.until(func(m *amMessage) bool { return m.Type == amSync && a.relayHas(m, docID) })

	// A device's edit reaches the peer live; the peer takes it, with
	// nothing to answer.
	dev := tr.client("shop")
	ch := mustCall[transport.Changes](t, dev, &transport.Pull{Collection: "todos"})
	ed := storetest.NewEditor(t, "dd01")
	if _, err := ed.Doc.Import(ch.Records[0].Data); err != nil {
		t.Fatal(err)
	}
	ed.At = ed.Doc.Heads()
	mustCall[transport.Ack](t, dev, pushOf("todos", 0, rec(ch.Records[0].Record, ed.Edit(map[string]any{"done": true}))))
	a.until(func(m *amMessage) bool { return a.field(docID, "done") == true })

	// Then the peer edits, and names its new heads alone.
	a.edit(docID, map[string]any{"title": "buy oat milk"})
	heads := a.doc(docID).doc.Heads()
	msg := (&syncMessage{heads: heads}).encodeV1()
	a.send(&amMessage{Type: amSync, SenderID: "peer-a", TargetID: "ferry-relay", DocumentID: docID, Data: msg})
	for {
		m := a.next()
		if m == nil {
			t.Fatal("connection closed")
		}
		if m.Type != amSync || m.DocumentID != docID {
			continue
		}
		sm, err := parseSyncMessage(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if crdt.Heads(sm.need).Equal(heads) {
			return
		}
	}
}

// A connection whose token expires while it is open is ended at its next
// message, with a message saying so, as /ws ends a session.
func TestAutomergeTokenExpiresWhileConnected(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	q := url.Values{"api_key": {tr.apps["shop"].APIKey}, "token": {tr.token("shop", relay.TokenRequest{Subject: "u", TTL: time.Minute, Write: []string{"*"}})}}
	p, hello := dialAM(t, tr.amURL("/todos", q), "peer")
	if hello == nil || hello.Type != amPeer {
		t.Fatalf("join answered %+v", hello)
	}
	docID, _ := newDocID(t)
	p.sync(docID, amRequest)
	if m := p.next(); m.Type != amUnavailable {
		t.Fatalf("request answered %+v", m)
	}
	tr.clock.Advance(time.Minute)
	other, _ := newDocID(t)
	p.sync(other, amRequest)
	if m := p.next(); m == nil || m.Type != amError || !strings.Contains(m.Message, "token expired") {
		t.Fatalf("request after the token expired answered %+v", m)
	}
	if err := p.closed(); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("connection closed with %v, want policy violation", err)
	}
}

// The documents the endpoint answers from are the relay's, in its one
// document cache: with room for about one, peers syncing several
// documents at once get each whole, the cache evicting and freeing them
// as they go, never while one is read.
func TestAutomergeSmallDocCache(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *testOptions) { o.DocCacheBytes = 200 << 10 })
	dev := tr.client("shop")
	ids := make([]string, 6)
	for i := range ids {
		var record string
		ids[i], record = newDocID(t)
		mustCall[transport.Ack](t, dev, pushOf("todos", 0, rec(record, storetest.NewEditor(t, "").Edit(map[string]any{"n": int64(i), "pad": strings.Repeat("x", 2000)}))))
	}
	peers := make([]*goPeer, 3)
	for i := range peers {
		peers[i], _ = dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), fmt.Sprintf("peer-%d", i))
	}
	// Every peer asks for every document before any answer is read, so
	// the relay loads, evicts and reads them on several connections at
	// once.
	for _, p := range peers {
		for _, id := range ids {
			p.sync(id, amRequest)
		}
	}
	for _, p := range peers {
		p.until(func(*amMessage) bool {
			for _, id := range ids {
				if p.field(id, "pad") == nil {
					return false
				}
			}
			return true
		})
	}
	for _, p := range peers {
		for i, id := range ids {
			if n := p.field(id, "n"); n != int64(i) {
				t.Fatalf("%s has n = %v in document %d", p.id, n, i)
			}
		}
	}
}
