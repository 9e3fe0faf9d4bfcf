package main

import "testing"

// TestNodeClients runs test/node with the real automerge-repo in Node:
// create, find, live edits both ways with a Go replica, ephemeral
// messages, unknown documents, auth refusals, read-only tokens, and
// catching up after the relay restarts.
func TestNodeClients(t *testing.T) {
	requireNode(t)
	h := newHarness(t)
	// --test-force-exit: an adapter whose reconnect timer fires after
	// Repo.shutdown opens a new socket and would keep node running.
	runNode(t, h.env(h.control()), "--test", "--test-force-exit", "--test-reporter=spec", "test/node/relay.test.mjs")
}
