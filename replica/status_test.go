package replica

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/policy"
)

// statusLog records every status the listener is told of.
type statusLog struct {
	mu   sync.Mutex
	seen []SyncStatus
}

func (l *statusLog) add(st SyncStatus) { l.mu.Lock(); l.seen = append(l.seen, st); l.mu.Unlock() }

func (l *statusLog) states() []SyncState {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []SyncState
	for _, st := range l.seen {
		if len(out) == 0 || out[len(out)-1] != st.State {
			out = append(out, st.State)
		}
	}
	return out
}

func (l *statusLog) any(f func(SyncStatus) bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, st := range l.seen {
		if f(st) {
			return true
		}
	}
	return false
}

func TestStatusFollowsASync(t *testing.T) {
	e := newSyncEnv(t)
	log := &statusLog{}
	a := e.device(&Options{Listener: Listener{Status: log.add}})
	if st, err := a.Status("p"); err != nil || st.State != StateIdle || !st.LastSync.IsZero() {
		t.Fatalf("before any sync: %+v, %v", st, err)
	}
	if _, err := a.Status("nope"); !errors.Is(err, ErrNoProfile) {
		t.Fatalf("unknown profile: %v", err)
	}
	coll2(t, a, "c").Create("x", map[string]any{"v": 1})
	mustSync(t, a, "p")

	want := []SyncState{StateConnecting, StateWaitingForLease, StateSyncing, StateIdle}
	if got := log.states(); !equalStates(got, want) {
		t.Fatalf("states %v, want %v", got, want)
	}
	if !log.any(func(st SyncStatus) bool { return st.LeaseHeld && st.Collection == "c" }) {
		t.Fatal("a two-way sync never reported holding the lease")
	}
	if !log.any(func(st SyncStatus) bool { return st.Progress.Direction == ToRelay && st.Progress.Done == 1 }) {
		t.Fatal("no progress of the push")
	}
	st, _ := a.Status("p")
	if st.State != StateIdle || st.LastSync.IsZero() || st.LastError != nil || st.LeaseHeld || st.Collection != "" {
		t.Fatalf("after the sync: %+v", st)
	}
}

func TestStatusKeepsTheLastError(t *testing.T) {
	e := newSyncEnv(t)
	fail := errors.New("login service down")
	var broken sync.Mutex
	down := true
	tokens := func(ctx context.Context, profile string) (string, error) {
		broken.Lock()
		defer broken.Unlock()
		if down {
			return "", fail
		}
		return e.token, nil
	}
	a := e.device(&Options{TokenSource: tokens})
	if _, err := a.Sync(context.Background(), "p"); !errors.Is(err, fail) {
		t.Fatalf("sync without a token: %v", err)
	}
	st, _ := a.Status("p")
	if st.State != StateIdle || !errors.Is(st.LastError, fail) || st.LastErrorAt.IsZero() {
		t.Fatalf("after a failed sync: %+v", st)
	}
	broken.Lock()
	down = false
	broken.Unlock()
	mustSync(t, a, "p")
	if st, _ := a.Status("p"); st.LastError != nil || st.LastSync.IsZero() {
		t.Fatalf("a successful sync keeps the old error: %+v", st)
	}
}

func TestStatusShowsDeferredAndLive(t *testing.T) {
	e := newSyncEnv(t)
	log := &statusLog{}
	changed := make(chan SyncStatus, 64)
	a := e.device(&Options{Listener: Listener{Status: func(st SyncStatus) {
		log.add(st)
		select {
		case changed <- st:
		default:
		}
	}}})
	a.SetNetwork(policy.None)
	p, _ := a.Profile("p")
	p.Mode = policy.Live
	if err := a.UpdateProfile(p); err != nil {
		t.Fatal(err)
	}
	waitState := func(want SyncState) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			if st, _ := a.Status("p"); st.State == want {
				return
			}
			select {
			case <-changed:
			case <-deadline:
				st, _ := a.Status("p")
				t.Fatalf("state %s, want %s (seen %v)", st.State, want, log.states())
			}
		}
	}
	waitState(StateDeferred)
	a.SetNetwork(policy.WiFi)
	waitState(StateLive)
	if st, _ := a.Status("p"); st.LastSync.IsZero() {
		t.Fatalf("live and caught up, but no LastSync: %+v", st)
	}
}

func equalStates(a, b []SyncState) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
