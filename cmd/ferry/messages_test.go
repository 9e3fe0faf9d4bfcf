package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/replica"
)

// The messages people read when a command fails: the exit code, one line
// on stderr that says what is wrong without repeating itself, and nothing
// on stdout.

// failsWith runs args and checks the exit code and that stderr is one
// line holding every want, with no doubled "ferry: ".
func failsWith(t *testing.T, code int, args []string, wants ...string) string {
	t.Helper()
	got, out, errs := runCLI(t, args...)
	if got != code {
		t.Errorf("ferry %s: exit %d, want %d (stderr %q)", strings.Join(args, " "), got, code, errs)
	}
	if out != "" {
		t.Errorf("ferry %s: printed %q on stdout", strings.Join(args, " "), out)
	}
	first := strings.SplitN(errs, "\n", 2)[0]
	for _, want := range wants {
		if !strings.Contains(first, want) {
			t.Errorf("ferry %s: stderr %q lacks %q", strings.Join(args, " "), errs, want)
		}
	}
	if strings.Contains(errs, "ferry: ferry:") || strings.Contains(errs, ": ferry: ") {
		t.Errorf("ferry %s: doubled prefix in %q", strings.Join(args, " "), errs)
	}
	return first
}

func newDeviceStore(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "device")
	r, err := replica.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Collection("notes").Create("n1", map[string]any{"text": "hi"}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	return dir
}

func TestInspectMessages(t *testing.T) {
	dir := newDeviceStore(t)
	failsWith(t, 1, []string{"inspect", "--data", dir, "--collection", "notes", "--id", "nosuch"},
		"ferry: inspect: record not found: notes/nosuch")
	// An absent collection is said, not listed as empty.
	failsWith(t, 1, []string{"inspect", "--data", dir, "--collection", "nosuch"},
		`ferry: inspect: the store has no collection "nosuch" (it has notes)`)
	failsWith(t, 1, []string{"inspect", "--data", dir, "--collection", "bad name"}, "invalid name")

	// A damaged store: where to read what to do, not Badger's words.
	if err := os.WriteFile(filepath.Join(dir, "MANIFEST"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	line := failsWith(t, 1, []string{"inspect", "--data", dir}, "the store in "+dir+" is damaged", "docs/operations.md")
	if strings.Contains(line, "magic") {
		t.Errorf("Badger's jargon in %q", line)
	}

	foreign := t.TempDir()
	os.WriteFile(filepath.Join(foreign, "notes.txt"), []byte("mine"), 0o600)
	failsWith(t, 1, []string{"inspect", "--data", foreign}, "holds no store")
}

// A relay's store in use: said once, with what to do.
func TestInUseMessage(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	newRelayData(t, data)
	// Held as a running relay holds it.
	db, err := badgerdir.Open(badger.DefaultOptions(storeDir(data)).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	line := failsWith(t, 1, []string{"backup", "--data", data, "--out", filepath.Join(t.TempDir(), "b")},
		"is in use by another process", "stop it, then try again")
	if strings.Count(line, "in use") != 1 {
		t.Errorf("the in-use message repeats itself: %q", line)
	}
}

// A backup cut short is called that, not "not a ferry backup".
func TestCutBackupMessage(t *testing.T) {
	dir := t.TempDir()
	data, file := filepath.Join(dir, "data"), filepath.Join(dir, "b.ferry")
	newRelayData(t, data)
	runOK(t, "backup", "--data", data, "--out", file)
	b, _ := os.ReadFile(file)
	for _, n := range []int{len(b) - 10, len(backupMagic) + 10} {
		cut := filepath.Join(dir, "cut.ferry")
		os.WriteFile(cut, b[:n], 0o600)
		line := failsWith(t, 1, []string{"restore", "--data", filepath.Join(dir, "new"), "--in", cut}, "the backup is cut short or damaged")
		if strings.Contains(line, "not a ferry backup") {
			t.Errorf("cut at %d: %q", n, line)
		}
	}
}

// ferry token refuses collection names no device can open: exit 2.
func TestTokenRefusesCollectionNames(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	newRelayData(t, data)
	for _, flag := range []string{"--read", "--write"} {
		failsWith(t, 2, []string{"token", "--dev", "--data", data, "--subject", "ann", flag, "notes,bad name!"},
			"ferry token: "+flag+": invalid name", `"bad name!"`)
	}
	code, out, errs := runCLI(t, "token", "--dev", "--data", data, "--subject", "ann", "--write", "notes,v1.items", "--read", "*")
	if code != 0 || strings.Count(out, ".") != 2 {
		t.Fatalf("valid names: exit %d, %q, stderr %q", code, out, errs)
	}
}

// A relay whose PostgreSQL is down says so, and does not send its user
// looking for a relay.
func TestRelayBlamesTheDatabase(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "relay.json")
	os.WriteFile(cfg, []byte(`{"apps": [{"id": "shop", "api_key": "fk_k1k2k3k4k5k6k7k8", "secret": "9f2a8c1e9b7d3f604a2c8e1b9d7f3a5c6e0b2d4f"}]}`), 0o600)
	line := failsWith(t, 1, []string{"relay", "--config", cfg, "--addr", "127.0.0.1:0", "--postgres", "postgres://ferry@" + addr + "/postgres"},
		"cannot connect to the PostgreSQL database: nothing accepts connections at "+addr+": is PostgreSQL running")
	if strings.Contains(line, "relay running") {
		t.Errorf("the relay is blamed: %q", line)
	}
}
