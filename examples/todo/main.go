// Todo is a to-do list kept in a replica, synced through the relay on
// demand. Each data folder is one device:
//
//	go run ./cmd/ferry relay --dev                     # in another terminal
//	go run ./examples/todo --data alice add "buy milk"
//	go run ./examples/todo --data alice sync
//	go run ./examples/todo --data bob sync
//	go run ./examples/todo --data bob list
//	go run ./examples/todo --data bob done ID          # ID as list shows it
//	go run ./examples/todo --data bob rm ID
//	go run ./examples/todo --data bob --name Bob here  # who else has the list open
//
// The first sync stores a sync profile in the folder; later syncs use it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferrysync/ferry/examples/internal/devrelay"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// Task is a record of the todos collection. Its key is a UUIDv7, so tasks
// list in the order they were created, on every device.
type Task struct {
	Title string `ferry:"title"`
	Done  bool   `ferry:"done"`
}

const (
	collection = "todos"
	profile    = "relay"
)

func main() { devrelay.Main("todo", run) }

const usage = `usage: todo [flags] COMMAND [flags]

commands:
  add TITLE   add a task (a title starting with - goes after --)
  list        list the tasks, oldest first
  done ID     mark a task done (ID: the full ID, or its end as list shows it)
  rm ID       remove a task
  sync        two-way sync with the relay; the first one stores a profile
  here        stay connected and show who else has the list open (Go
              devices and the web page, examples/webtodo), until Ctrl-C

flags (before or after the command):
`

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("todo", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, and printed once
	var rf devrelay.Flags
	rf.Register(fs)
	data := fs.String("data", "todo-data", "the device's data folder")
	name := fs.String("name", "", "here: your name as others see it (default: the data folder's)")
	stay := fs.Duration("for", 0, "here: leave after this long (default: at Ctrl-C)")
	words, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return err
	}
	if err != nil {
		return err
	}
	if len(words) == 0 {
		return errors.New("no command: give add, list, done, rm, sync or here (-h for help)")
	}
	cmd, rest := words[0], words[1:]
	// The command line is checked whole before the store is opened (and,
	// the first time, created). nargs: how many arguments; -1, one or more.
	nargs, known := map[string]int{"add": -1, "list": 0, "sync": 0, "here": 0, "done": 1, "rm": 1}[cmd]
	switch {
	case !known:
		return fmt.Errorf("unknown command %q (want add, list, done, rm, sync or here)", cmd)
	case nargs == -1 && len(rest) == 0:
		return fmt.Errorf("%s: what to do?", cmd)
	case nargs == 0 && len(rest) > 0:
		return fmt.Errorf("%s takes no arguments, but got %q", cmd, rest)
	case nargs == 1 && len(rest) != 1:
		return fmt.Errorf("%s: give one task ID", cmd)
	}

	// Tokens are never stored: each run gives them from its flags (or
	// mints them from the dev app), and only when it syncs.
	r, err := replica.Open(*data, &replica.Options{TokenSource: rf.Tokens})
	if err != nil {
		return err
	}
	defer r.Close()
	todos := r.Collection(collection)
	a := &app{r: r, todos: todos, out: stdout}

	switch cmd {
	case "add":
		return a.add(strings.Join(rest, " "))
	case "list":
		return a.list()
	case "done", "rm":
		if cmd == "done" {
			return a.done(rest[0])
		}
		return a.remove(rest[0])
	case "here":
		who := *name
		if who == "" {
			who = filepath.Base(*data)
		}
		return a.here(ctx, &rf, who, *stay)
	default: // sync
		explicit := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
		return a.sync(ctx, &rf, explicit)
	}
}

// parseArgs parses flags wherever they are among the arguments, so that
// "todo --data carol sync --url URL" syncs with URL, and returns the other
// arguments in order. After "--", everything is an argument.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var words []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return words, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(words, rest...), nil
		}
		words = append(words, rest[0])
		args = rest[1:]
	}
}

type app struct {
	r     *replica.Replica
	todos *replica.Collection
	out   io.Writer
}

// shortID is how list shows an ID: its last 8 characters, which are random
// in a UUIDv7 (its first ones are the creation time, shared by tasks made
// close together).
func shortID(id string) string {
	if len(id) <= 8 {
		return id
	}
	return id[len(id)-8:]
}

func (a *app) add(title string) error {
	id, err := a.todos.Insert(Task{Title: title})
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "added %s: %s\n", shortID(id), title)
	return nil
}

func (a *app) list() error {
	pending, err := a.todos.Pending()
	if err != nil {
		return err
	}
	pending = slices.DeleteFunc(pending, func(id string) bool { return id == roomID })
	unsynced := map[string]bool{}
	for _, id := range pending {
		unsynced[id] = true
	}
	tasks := 0
	for rec, err := range a.todos.Scan(replica.ScanOptions{}) { // in ID order: creation order
		if err != nil {
			return err
		}
		if rec.ID == roomID {
			continue // not a task: where presence is (see here)
		}
		tasks++
		var t Task
		if err := rec.Decode(&t); err != nil {
			return err
		}
		box, note := "[ ]", ""
		if t.Done {
			box = "[x]"
		}
		if unsynced[rec.ID] {
			note = "  (not synced)"
		}
		fmt.Fprintf(a.out, "%s %s  %s%s\n", box, shortID(rec.ID), t.Title, note)
	}
	if tasks == 0 {
		fmt.Fprintln(a.out, "no tasks")
	}
	// Deleted tasks wait to be synced too; they are not in the list.
	if n := len(pending); n > 0 {
		fmt.Fprintf(a.out, "%d task(s) with changes to sync\n", n)
	}
	return nil
}

// find returns the task whose ID is id, or ends with it.
func (a *app) find(id string) (string, Task, error) {
	var t Task
	if err := a.todos.Get(id, &t); err == nil {
		return id, t, nil
	} else if !errors.Is(err, replica.ErrNotFound) && !errors.Is(err, replica.ErrInvalidName) {
		return "", t, err
	}
	var found []replica.Record
	for rec, err := range a.todos.Scan(replica.ScanOptions{}) {
		if err != nil {
			return "", t, err
		}
		if len(id) >= 4 && strings.HasSuffix(rec.ID, id) {
			found = append(found, rec)
		}
	}
	switch len(found) {
	case 0:
		return "", t, fmt.Errorf("no task %q", id)
	case 1:
		return found[0].ID, t, found[0].Decode(&t)
	}
	return "", t, fmt.Errorf("%q matches %d tasks: give more of the ID", id, len(found))
}

func (a *app) done(arg string) error {
	id, t, err := a.find(arg)
	if err != nil {
		return err
	}
	t.Done = true
	// Put writes only the done field: a title edited elsewhere survives.
	if err := a.todos.Put(id, t); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "done: %s\n", t.Title)
	return nil
}

func (a *app) remove(arg string) error {
	id, t, err := a.find(arg)
	if err != nil {
		return err
	}
	if err := a.todos.Delete(id); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "removed: %s\n", t.Title)
	return nil
}

// sync syncs the stored profile, creating it from the flags on first use.
// Relay flags given explicitly later update it.
func (a *app) sync(ctx context.Context, rf *devrelay.Flags, explicit map[string]bool) error {
	p, err := a.r.Profile(profile)
	switch {
	case errors.Is(err, replica.ErrNoProfile):
		creds, err := rf.Credentials()
		if err != nil {
			return err
		}
		p = replica.Profile{
			Name:        profile,
			URL:         creds.URL,
			APIKey:      creds.APIKey,
			Mode:        policy.Manual,
			Type:        policy.TwoWay,
			Collections: []string{collection},
		}
		if err := a.r.AddProfile(p); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "created sync profile %q: %s, %s, %s\n", p.Name, p.URL, p.Mode, p.Type)
	case err != nil:
		return err
	case explicit["url"] || explicit["api-key"]:
		if explicit["url"] {
			p.URL = rf.URL
		}
		if explicit["api-key"] {
			p.APIKey = rf.APIKey
		}
		if err := a.r.UpdateProfile(p); err != nil {
			return err
		}
	}
	st, err := a.r.Sync(ctx, profile)
	if err != nil {
		return fmt.Errorf("sync with %s: %w", p.URL, err)
	}
	for _, cs := range st.Collections {
		fmt.Fprintf(a.out, "synced %s with %s in %s\n", cs.Collection, p.URL, cs.End.Sub(cs.Start).Round(time.Millisecond))
		fmt.Fprintf(a.out, "  sent:     %d new, %d changed, %d removed\n", cs.ToRelay.Added, cs.ToRelay.Updated, cs.ToRelay.Removed)
		fmt.Fprintf(a.out, "  received: %d new, %d changed, %d removed\n", cs.FromRelay.Added, cs.FromRelay.Updated, cs.FromRelay.Removed)
		if cs.Conflicts > 0 {
			fmt.Fprintf(a.out, "  %d conflict(s) resolved (prefer-local)\n", cs.Conflicts)
		}
	}
	return nil
}
