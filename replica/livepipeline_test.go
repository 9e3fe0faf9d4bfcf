package replica

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/transport"
)

// pushWatch counts a device's pushes of record "r" as its session sends
// them (Replica.pushFault), by the value of qty they carry.
type pushWatch struct {
	mu   sync.Mutex
	sent map[string]chan struct{} // closed once a push of r is sent with the heads named
}

// pipelineEnv is earlyEnv with a's pushes of r watched.
func pipelineEnv(t *testing.T) (*earlyEnv, *pushWatch) {
	w := &pushWatch{sent: map[string]chan struct{}{}}
	env := newEarlyEnv(t, func(a *Replica) {
		a.pushFault = func(p *transport.Push) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			for _, r := range p.Records {
				if r.Record != "r" {
					continue
				}
				h, err := crdt.HeadsFromSlices(r.Heads)
				if err != nil {
					return err
				}
				w.ch(fmt.Sprint(h))
			}
			return nil
		}
	})
	return env, w
}

// ch returns the channel of heads h (as printed), closing it if close.
func (w *pushWatch) ch(h string) chan struct{} {
	c := w.sent[h]
	if c == nil {
		c = make(chan struct{})
		w.sent[h] = c
	}
	select {
	case <-c:
	default:
		close(c)
	}
	return c
}

// waitSent waits until a push of r with heads h is sent.
func (w *pushWatch) waitSent(t *testing.T, h crdt.Heads) {
	t.Helper()
	w.mu.Lock()
	c := w.sent[fmt.Sprint(h)]
	if c == nil {
		c = make(chan struct{})
		w.sent[fmt.Sprint(h)] = c
	}
	w.mu.Unlock()
	select {
	case <-c:
	case <-time.After(20 * time.Second):
		t.Fatalf("a never pushed r at heads %v while its last push was unanswered", h)
	}
}

// A live device sends its next early push while the relay is still making
// the last one durable (pipelined pushes), rather than waiting for its
// acknowledgement; no acknowledgement is recorded for either before the
// relay's append is durable; then both are, and every device converges.
// If the relay's write of the first fails, the second (which carries the
// first's changes too, as the first was never acknowledged) still lands,
// and nothing a's app was told is durable is lost.
func TestLivePipelinedPushes(t *testing.T) {
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("first-write-fails=%v", fail), func(t *testing.T) {
			env, w := pipelineEnv(t)
			ca := env.a.Collection("c")
			set := func(v int64) crdt.Heads {
				t.Helper()
				if err := ca.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, v) }); err != nil {
					t.Fatal(err)
				}
				h, err := ca.Heads("r")
				if err != nil {
					t.Fatal(err)
				}
				return h
			}
			env.gate.close()
			set(1)
			<-env.gate.waiting // the relay's append of qty 1 is held
			h2 := set(2)
			w.waitSent(t, h2) // sent with the first one unanswered
			if n, _ := ca.PendingCount(); n != 1 {
				t.Fatalf("a has %d pending while the relay's append is held, want 1: an ack recorded before the relay's write", n)
			}
			if fail {
				env.gate.open(false, errors.New("the store refused the group"))
			} else {
				env.gate.open(true, nil)
			}
			waitValue(t, env.b, env.feedB, "r", "qty", 2)
			deadline := time.Now().Add(20 * time.Second)
			for {
				n, _ := ca.PendingCount()
				doc, _, err := relay.Document(context.Background(), env.base, env.coll, "r")
				if err != nil {
					t.Fatal(err)
				}
				d, err := crdt.Load(doc, "")
				if err != nil {
					t.Fatal(err)
				}
				rh := d.Heads()
				d.Free()
				if n == 0 && rh.Equal(h2) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("a has %d pending, the relay heads %v; want 0 and a's %v", n, rh, h2)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if c, h := env.cursor(), env.head(t); c > h {
				t.Fatalf("b's cursor %d is past the relay's head %d", c, h)
			}
		})
	}
}
