package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/relay/relaytest"
)

func TestProducts(t *testing.T) {
	rl := relaytest.Start(t, nil)
	var out bytes.Buffer
	args := append(tokenArgs(rl), "--data", t.TempDir())
	if err := run(context.Background(), args, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	got := squash(out.String())
	for _, want := range []string{
		"prefer-local 3.99 3.99 the tablet's 3.99",
		"prefer-cloud 4.90 4.90 the phone's 4.90",
		"syncs first: sends 1 changed product, 0 conflicts",
		"syncs second: 1 conflict on the price",
		"phone: 3.99, 12 in stock; tablet: 3.99, 12 in stock", // the phone's stock edit merged in
		"phone: 4.90, 12 in stock; tablet: 4.90, 12 in stock",
		// The index lists each category by price; the live query follows
		// the teas under 5.00.
		"coffee Espresso 2.90\ncoffee Mocha 3.50\ntea Earl Grey 3.80\ntea Oolong 4.40\ntea Sencha 6.20",
		"entered Earl Grey 3.80\nentered Oolong 4.40\n(Sencha now 4.60)\nentered Sencha 4.60\n(Oolong now 4.90)\nchanged Oolong 4.90\n(Earl Grey now 5.10)\nleft Earl Grey 5.10",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(out.String())
	}
}

// squash turns each run of spaces into one, so tests do not depend on the
// table's column widths.
func squash(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

// Without --token, the example mints its tokens from the dev app file.
func TestProductsWithDevAppFile(t *testing.T) {
	rl := relaytest.Start(t, nil)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--url", rl.URL, "--dev-app", devAppFile(t, rl)}, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "the tablet's 3.99") {
		t.Fatalf("prefer-local did not keep the tablet's price:\n%s", out.String())
	}
}

func TestProductsWithoutCredentials(t *testing.T) {
	err := run(context.Background(), []string{"--dev-app", t.TempDir() + "/none.json"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "ferry relay --dev") {
		t.Fatalf("want a hint to start the relay, got %v", err)
	}
}

// TestProductsRefusesExtraArguments: an argument it does not take is an
// error before anything runs, not silently ignored.
func TestProductsRefusesExtraArguments(t *testing.T) {
	dir := t.TempDir() + "/data"
	err := run(context.Background(), []string{"--data", dir, "sync", "--url", "ws://127.0.0.1:1/ws"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), `unexpected argument "sync"`) {
		t.Fatalf("extra arguments: %v", err)
	}
}

// tokenArgs point the example at rl with its static token.
func tokenArgs(rl *relaytest.Relay) []string {
	return []string{"--url", rl.URL, "--api-key", rl.App.APIKey, "--token", rl.Token}
}

// devAppFile writes rl's app as `ferry relay --dev` does, for the example
// to mint its own tokens from.
func devAppFile(t *testing.T, rl *relaytest.Relay) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev-app.json")
	b, err := json.Marshal(rl.App)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
