package relay

import (
	"testing"
	"testing/synctest"
	"time"
)

// A flusher waiting for the last group's devices to push again gives each
// groupWait from its ack going out, not from the group's write: under load
// the acks of a group take a while to go out, and a device cannot come
// back before its ack.
func TestGatherWaitsFromLastAck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const wait = 10 * time.Millisecond
		s := &Server{groupWait: wait}
		// A group of two was just written; neither device has pushed since.
		cm := &committer{lastGroup: 2, wroteAt: time.Now()}
		took := make(chan time.Duration)
		go func() {
			start := time.Now()
			cm.mu.Lock()
			cm.gather(s)
			cm.mu.Unlock()
			took <- time.Since(start)
		}()
		time.Sleep(8 * time.Millisecond)
		cm.acked(time.Now()) // the last ack goes out 8 ms after the write
		if got, want := <-took, 8*time.Millisecond+wait; got != want {
			t.Errorf("gather waited %v for devices that did not come back, want %v (groupWait from the last ack)", got, want)
		}

		// Acks after groupWait of the last one still count; a device that
		// came back ends the wait for it.
		cm.acked(time.Now().Add(time.Millisecond))
		time.Sleep(2 * time.Millisecond)
		if !cm.returning(s) {
			t.Error("not waiting for the devices 1 ms after an ack")
		}
		cm.begun = 2
		if cm.returning(s) {
			t.Error("still waiting for devices once as many pushes began as the group held")
		}
	})
}

// With no committer left for the collection (its pushes all ended before
// their acks went out), the ack time goes to the mark the next committer
// starts from.
func TestAckMovesDroppedCommittersMark(t *testing.T) {
	s := &Server{groupWait: time.Second, committers: map[Coll]*committer{}, lastGroups: map[Coll]groupMark{}}
	c := Coll{Tenant: "shop", Collection: "c"}
	written := time.Now().Add(-time.Minute)
	s.lastGroups[c] = groupMark{n: 3, at: written}
	s.acked(c)
	if m := s.lastGroups[c]; !m.at.After(written) || m.n != 3 {
		t.Fatalf("mark %+v after an ack, want the ack's time for the group of 3 written at %v", m, written)
	}
	if cm := s.committer(c); !cm.returning(s) {
		t.Error("the next committer does not wait for the group's devices acked just now")
	}
}
