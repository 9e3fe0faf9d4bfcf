package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/relay/relaytest"
)

// todo runs the CLI on a data folder and returns its output.
func todo(t *testing.T, dir string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(context.Background(), append([]string{"--data", dir}, args...), &out); err != nil {
		t.Fatalf("todo %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

var addedRE = regexp.MustCompile(`^added (\w+): `)

func add(t *testing.T, dir, title string) string {
	t.Helper()
	m := addedRE.FindStringSubmatch(todo(t, dir, "add", title))
	if m == nil {
		t.Fatalf("add %q printed no ID", title)
	}
	return m[1]
}

func TestTodoSyncsBetweenTwoFolders(t *testing.T) {
	rl := relaytest.Start(t, nil)
	appFile := devAppFile(t, rl)
	alice, bob := t.TempDir(), t.TempDir()

	milk := add(t, alice, "buy milk")
	add(t, alice, "call the bank")
	if got := todo(t, alice, "list"); !strings.Contains(got, "[ ] "+milk+"  buy milk  (not synced)") {
		t.Fatalf("alice's list before sync:\n%s", got)
	}

	// Alice passes a static token; Bob mints his from the dev app file on
	// each sync.
	out := todo(t, alice, append(tokenArgs(rl), "sync")...)
	if !strings.Contains(out, `created sync profile "relay"`) || !strings.Contains(out, "sent:     2 new") {
		t.Fatalf("alice's first sync:\n%s", out)
	}
	out = todo(t, bob, append([]string{"--url", rl.URL, "--dev-app", appFile}, "sync")...)
	if !strings.Contains(out, "received: 2 new") {
		t.Fatalf("bob's first sync:\n%s", out)
	}

	// Bob: done and remove by the IDs add and list show, add a task.
	todo(t, bob, "done", milk)
	var bank string
	for _, line := range strings.Split(todo(t, bob, "list"), "\n") {
		if strings.HasSuffix(line, "call the bank") {
			bank = strings.Fields(line)[2]
		}
	}
	if bank == "" {
		t.Fatal("bob has no bank task")
	}
	todo(t, bob, "rm", bank)
	add(t, bob, "walk the dog")
	todo(t, bob, "--dev-app", appFile, "sync")

	// Alice's stored profile keeps the relay's URL and API key; tokens
	// are never stored, so she gives hers again.
	out = todo(t, alice, "--token", rl.Token, "sync")
	if !strings.Contains(out, "received: 1 new, 1 changed, 1 removed") {
		t.Fatalf("alice's second sync:\n%s", out)
	}
	got := todo(t, alice, "list")
	want := regexp.MustCompile(`^\[x\] ` + milk + `  buy milk\n\[ \] \w{8}  walk the dog\n$`)
	if !want.MatchString(got) {
		t.Fatalf("alice's list after sync:\n%s", got)
	}
	if got2 := todo(t, bob, "list"); got2 != got {
		t.Fatalf("bob's list differs:\n%s\nalice's:\n%s", got2, got)
	}
}

// TestTodoFlagsAfterTheCommand: "todo --data carol sync --url X" syncs
// with X; flags after the command used to be ignored, and the sync went to
// the default URL.
func TestTodoFlagsAfterTheCommand(t *testing.T) {
	rl := relaytest.Start(t, nil)
	carol := t.TempDir()
	add(t, carol, "water the plants")
	out := todo(t, carol, append([]string{"sync"}, tokenArgs(rl)...)...)
	if !strings.Contains(out, "synced todos with "+rl.URL) || !strings.Contains(out, "sent:     1 new") {
		t.Fatalf("sync with flags after the command:\n%s", out)
	}
	// A title starting with a dash goes after --.
	todo(t, carol, "add", "--", "-5 degrees tonight", "--data")
	if got := todo(t, carol, "list"); !strings.Contains(got, "-5 degrees tonight --data") {
		t.Fatalf("list:\n%s", got)
	}
}

func TestTodoErrors(t *testing.T) {
	dir := t.TempDir()
	add(t, dir, "one")
	for _, args := range [][]string{
		{"done", "nope"},
		{"rm"},
		{"done", "a", "b"},
		{"list", "extra"},
		{"sync", "now"},
		{"fly"},
		{"add"},
		{},
		{"list", "--no-such-flag"},
		{"--dev-app", dir + "/none.json", "sync"},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), append([]string{"--data", dir}, args...), &out); err == nil {
			t.Errorf("todo %v succeeded:\n%s", args, out.String())
		}
	}
	// A command line that is refused creates no store.
	fresh := t.TempDir() + "/fresh"
	for _, args := range [][]string{{"fly"}, {"list", "extra"}, {"add"}} {
		run(context.Background(), append([]string{"--data", fresh}, args...), &bytes.Buffer{})
		if _, err := os.Stat(fresh); !os.IsNotExist(err) {
			t.Fatalf("todo %v created %s", args, fresh)
		}
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

// Two devices running here see each other arrive; the room record that
// carries presence is not a task.
func TestHereShowsWhoElseIsThere(t *testing.T) {
	rl := relaytest.Start(t, nil)
	alice, bob := t.TempDir(), t.TempDir()
	outs := make([]string, 2)
	done := make(chan int, 2)
	for i, dir := range []string{alice, bob} {
		name := []string{"Alice", "Bob"}[i]
		go func() {
			var out bytes.Buffer
			err := run(context.Background(), append([]string{"--data", dir, "--name", name, "--for", "6s"}, append(tokenArgs(rl), "here")...), &out)
			if err != nil {
				t.Errorf("%s's here: %v", name, err)
			}
			outs[i] = out.String()
			done <- i
		}()
	}
	<-done
	<-done
	if !strings.Contains(outs[0], "Bob joined; here now: Alice (you), Bob") {
		t.Errorf("Alice's here never showed Bob:\n%s", outs[0])
	}
	if !strings.Contains(outs[1], "Alice joined; here now: Bob (you), Alice") {
		t.Errorf("Bob's here never showed Alice:\n%s", outs[1])
	}
	if got := todo(t, alice, "list"); !strings.Contains(got, "no tasks") {
		t.Errorf("the presence room shows as a task:\n%s", got)
	}
}
