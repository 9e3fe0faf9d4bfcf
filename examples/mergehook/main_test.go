package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/relay/relaytest"
)

func TestMergeHookAddsUpTheChanges(t *testing.T) {
	rl := relaytest.Start(t, nil)
	var out bytes.Buffer
	if err := run(context.Background(), append(tokenArgs(rl), "--data", t.TempDir()), &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	got := squash(out.String())
	for _, want := range []string{
		"base 20 (the count both last shared)",
		"local 17 (the shop's)",
		"remote 25 (the relay's)",
		"decision 17 + 25 - 20 = 22",
		"now warehouse: 22 in stock; shop: 22 in stock",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if n := strings.Count(got, "decision"); n != 1 {
		t.Errorf("the hook decided %d times, want once", n)
	}
	if t.Failed() {
		t.Log(out.String())
	}
}

func squash(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

// TestMergeHookRefusesExtraArguments: an argument it does not take is an
// error before anything runs, not silently ignored.
func TestMergeHookRefusesExtraArguments(t *testing.T) {
	err := run(context.Background(), []string{"--data", t.TempDir(), "now"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), `unexpected argument "now"`) {
		t.Fatalf("extra arguments: %v", err)
	}
}

// tokenArgs point the example at rl with its static token.
func tokenArgs(rl *relaytest.Relay) []string {
	return []string{"--url", rl.URL, "--api-key", rl.App.APIKey, "--token", rl.Token}
}
