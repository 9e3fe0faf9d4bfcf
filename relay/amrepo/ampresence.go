package amrepo

import (
	"sync"

	"github.com/ferrysync/ferry/relay"
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
	out chan *relay.PresenceMessage

	mu   sync.Mutex
	sent map[string]relay.PresenceMessage // by record
}

func newAMPresence() *amPresence {
	return &amPresence{out: make(chan *relay.PresenceMessage, relay.PresenceQueue), sent: map[string]relay.PresenceMessage{}}
}

var _ relay.PresenceSink = (*amConn)(nil)

// DeliverPresence queues a device's presence for this client if it syncs
// the record (presence on a whole collection stays among devices).
func (c *amConn) DeliverPresence(m *relay.PresenceMessage) {
	if m.Presence.Record == "" || documentIDForRecord(m.Presence.Record) == "" || c.lookup(m.Presence.Record) == nil {
		return
	}
	select {
	case c.pres.out <- m:
		c.a.b.PresenceSent(true)
	default:
		c.a.b.PresenceSent(false)
	}
}

// sendPresence sends the queued presence until the connection ends.
func (c *amConn) sendPresence() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case m := <-c.pres.out:
			if !c.send(&amMessage{Type: amEphemeral, SenderID: m.Presence.Peer, TargetID: c.peer,
				DocumentID: documentIDForRecord(m.Presence.Record), Data: m.Presence.Data, SessionID: m.Session, Count: m.Count}) {
				return
			}
		}
	}
}

// ephemeralToDevices passes a client's ephemeral message on record to the
// device sessions subscribed to the collection.
func (c *amConn) ephemeralToDevices(record string, m *amMessage) {
	msg := &relay.PresenceMessage{Session: m.SessionID, Count: m.Count}
	msg.Presence.Collection, msg.Presence.Record, msg.Presence.Peer, msg.Presence.Data = c.coll.Collection, record, m.SenderID, m.Data
	if len(msg.Presence.Data) == 0 || len(msg.Presence.Data) > transport.MaxPresenceData {
		return // devices take presence within the wire's bound only
	}
	c.pres.mu.Lock()
	if c.pres.sent != nil && (len(c.pres.sent) < relay.PresenceRecords || c.pres.sent[record].Session != "") {
		c.pres.sent[record] = *msg
	}
	c.pres.mu.Unlock()
	c.a.b.PublishPresence(c.coll, msg, c)
}

// presenceGone says goodbye, to devices and to the other clients, for
// each record the client announced something on, once it has gone.
func (c *amConn) presenceGone() {
	c.pres.mu.Lock()
	sent := c.pres.sent
	c.pres.sent = nil
	c.pres.mu.Unlock()
	for _, last := range sent {
		c.a.b.PublishPresence(c.coll, last.Goodbye(), nil)
	}
}
