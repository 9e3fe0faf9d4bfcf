package relay

import "testing"

// Checked changes are held and fanned out early only while a collection
// has a subscriber that takes them: subscribers that do not are not woken
// for them, once per group and once per push queued behind one.
func TestHubHoldsEarlyChangesOnlyForEarlySubscribers(t *testing.T) {
	h := newHub()
	c := Coll{Tenant: "shop", Collection: "c"}
	entries := []Entry{{Record: "r", Changes: []byte{1}}}
	plain := h.subscribed(c, false)
	if id := h.writing(c, entries); id != 0 {
		t.Fatalf("early group %d held with no subscriber taking it", id)
	}
	early := h.subscribed(c, true)
	id := h.writing(c, entries)
	if g, ok := h.earlyAfter(c, 0); id == 0 || !ok || g.id != id {
		t.Fatalf("early group %d not held for an early subscriber (%v, %v)", id, g.id, ok)
	}
	early()
	if id := h.writing(c, entries); id != 0 {
		t.Fatalf("early group %d held after the early subscriber left", id)
	}
	plain()
}
