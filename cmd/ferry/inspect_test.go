package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/replica"
)

func TestInspect(t *testing.T) {
	dir := t.TempDir()
	r, err := replica.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := r.Collection("notes")
	c.Create("n1", map[string]any{"text": "hi"})
	c.Create("n2", map[string]any{"text": "there"})
	if err := r.AddProfile(replica.Profile{Name: "home", URL: "ws://127.0.0.1:1/ws", APIKey: "k", Mode: policy.Manual, Type: policy.TwoWay, Collections: []string{"notes"}}); err != nil {
		t.Fatal(err)
	}
	r.Close()

	var out bytes.Buffer
	if err := run(context.Background(), []string{"inspect", "--data", dir}, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"notes", "2", "home", "manual", "never"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("inspect output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"inspect", "--data", dir, "--collection", "notes", "--id", "n2"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"text": "there"`) {
		t.Fatalf("record output: %s", out.String())
	}
}

// inspect --relay reads a stopped relay's store and reports that every
// record loads (relay.CheckCompaction is tested with damaged records).
func TestInspectRelay(t *testing.T) {
	data := t.TempDir()
	st, err := badgerstore.Open(storeDir(data), &badgerstore.Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	inc := st.Incarnation()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"inspect", "--relay", "--data", data}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), inc) || !strings.Contains(out.String(), "every record that needs compacting loads") {
		t.Fatalf("inspect --relay output:\n%s", out.String())
	}
	if err := run(context.Background(), []string{"inspect", "--relay", "--data", t.TempDir()}, &out, &out); err == nil {
		t.Fatal("inspect --relay of an empty folder succeeded")
	}
}
