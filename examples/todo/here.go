package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferrysync/ferry/examples/internal/devrelay"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// roomID is the record the list's presence is on: presence is per record
// (automerge-repo's is per document), so the list has one record for it,
// which no list view shows. examples/webtodo uses the same.
const roomID = "0193a000-0000-7000-8000-000000000001"

// liveProfile keeps a live connection while here runs.
const liveProfile = "live"

// here shows who else has the list open (Go devices and the web page), as
// they come and go, until ctx ends or for d if d > 0.
func (a *app) here(ctx context.Context, rf *devrelay.Flags, name string, d time.Duration) error {
	if _, err := a.r.Profile(liveProfile); errors.Is(err, replica.ErrNoProfile) {
		creds, err := rf.Credentials()
		if err != nil {
			return err
		}
		p := replica.Profile{Name: liveProfile, URL: creds.URL, APIKey: creds.APIKey,
			Mode: policy.Live, Type: policy.TwoWay, Collections: []string{collection}}
		if err := a.r.AddProfile(p); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if _, err := a.todos.Heads(roomID); errors.Is(err, replica.ErrNotFound) {
		if err := a.todos.Put(roomID, map[string]any{"kind": "presence-room"}); err != nil {
			return err
		}
	}
	w := a.todos.WatchPresence(64)
	defer w.Close()
	if err := a.todos.SetPresence(roomID, map[string]any{"user": name}); err != nil {
		return err
	}
	defer a.todos.ClearPresence(roomID)
	fmt.Fprintf(a.out, "%s is here; others come and go below (Ctrl-C to leave)\n", name)
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.C:
			if !ok {
				return w.Err()
			}
			if ev.Record != roomID {
				continue
			}
			fmt.Fprintf(a.out, "%s %s; here now: %s\n", userOf(ev.Peer), ev.Kind, a.hereNow(name))
		}
	}
}

// hereNow lists the users present, this one first.
func (a *app) hereNow(name string) string {
	users := []string{name + " (you)"}
	var others []string
	for _, p := range a.todos.Peers(roomID) {
		others = append(others, userOf(p))
	}
	slices.Sort(others)
	return strings.Join(append(users, others...), ", ")
}

// userOf is a peer's user name, or its ID if it gave none.
func userOf(p replica.Peer) string {
	if u, ok := p.State["user"].(string); ok && u != "" {
		return u
	}
	return p.ID
}
