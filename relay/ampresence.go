package relay

import (
	"sync"

	"github.com/ferrysync/ferry/transport"
)

// The automerge-repo side of presence. automerge-repo clients send their
// presence (its Presence class, or any ephemeral message) to the peers
// syncing the document; the relay passes it on to the other clients (see
// amConn.ephemeral) and to the device sessions subscribed to the
// collection, and a device's presence reaches the clients syncing its
// record as an ephemeral message from the device's replica ID.

// amPresence is a connection's side of presence: devices' messages queued
// for the client, and the records the client announced something on, with
// its session and last count there, to say goodbye for them when it goes.
type amPresence struct {
	out chan *presenceMsg

	mu   sync.Mutex
	sent map[string]presenceMsg // by record
}

func newAMPresence() *amPresence {
	return &amPresence{out: make(chan *presenceMsg, presenceQueue), sent: map[string]presenceMsg{}}
}

func (c *amConn) fromAutomergeRepo() bool { return true }

// deliverPresence queues a device's presence for this client if it syncs
// the record (presence on a whole collection stays among devices).
func (c *amConn) deliverPresence(m *presenceMsg) {
	if m.p.Record == "" || documentIDForRecord(m.p.Record) == "" || c.lookup(m.p.Record) == nil {
		return
	}
	select {
	case c.pres.out <- m:
		c.a.b.presenceSent(true)
	default:
		c.a.b.presenceSent(false)
	}
}

// sendPresence sends the queued presence until the connection ends.
func (c *amConn) sendPresence() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case m := <-c.pres.out:
			if !c.send(&amMessage{Type: amEphemeral, SenderID: m.p.Peer, TargetID: c.peer,
				DocumentID: documentIDForRecord(m.p.Record), Data: m.p.Data, SessionID: m.session, Count: m.count}) {
				return
			}
		}
	}
}

// ephemeralToDevices passes a client's ephemeral message on record to the
// device sessions subscribed to the collection.
func (c *amConn) ephemeralToDevices(record string, m *amMessage) {
	msg := &presenceMsg{session: m.SessionID, count: m.Count}
	msg.p.Collection, msg.p.Record, msg.p.Peer, msg.p.Data = c.coll.Collection, record, m.SenderID, m.Data
	if len(msg.p.Data) == 0 || len(msg.p.Data) > transport.MaxPresenceData {
		return // devices take presence within the wire's bound only
	}
	c.pres.mu.Lock()
	if c.pres.sent != nil && (len(c.pres.sent) < presenceRecords || c.pres.sent[record].session != "") {
		c.pres.sent[record] = *msg
	}
	c.pres.mu.Unlock()
	c.a.b.publishPresence(c.coll, msg, c)
}

// presenceGone says goodbye, to devices and to the other clients, for
// each record the client announced something on, once it has gone.
func (c *amConn) presenceGone() {
	c.pres.mu.Lock()
	sent := c.pres.sent
	c.pres.sent = nil
	c.pres.mu.Unlock()
	for _, last := range sent {
		bye := last
		bye.p.Data, bye.count = goodbye, last.count+1
		c.a.b.publishPresence(c.coll, &bye, nil)
	}
}
