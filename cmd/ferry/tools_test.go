package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/replica"
)

// tree is every file under dir with a hash of its contents: equal trees
// prove a command changed nothing.
func tree(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() {
			out[rel+"/"] = [32]byte{}
			return nil
		}
		b, err := os.ReadFile(path)
		out[rel] = sha256.Sum256(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, what string, before, after map[string][32]byte) {
	t.Helper()
	if !maps.Equal(before, after) {
		t.Fatalf("%s changed the folder: %d entries before, %d after", what, len(before), len(after))
	}
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists (%v)", path, err)
	}
}

// newRelayData makes a relay data folder as `ferry relay --dev` leaves it:
// a dev app and a store with one record.
func newRelayData(t *testing.T, data string) (relay.App, string) {
	t.Helper()
	app, err := devApp(data)
	if err != nil {
		t.Fatal(err)
	}
	store, err := badgerstore.Open(storeDir(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := crdt.New("ab")
	d.Put(map[string]any{"v": 1})
	d.Commit("", time.Time{})
	ch, _ := d.ChangesSince(nil)
	coll := relay.Coll{Tenant: app.ID, Collection: "c"}
	if _, err := store.Append(context.Background(), coll, 0, time.Now(), []relay.Entry{{Record: "r", Changes: ch, Heads: d.Heads()}}); err != nil {
		t.Fatal(err)
	}
	inc := store.Incarnation()
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	return app, inc
}

func runOK(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(context.Background(), args, &out, &out); err != nil {
		t.Fatalf("ferry %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func runErr(t *testing.T, args ...string) error {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), args, &out, &out)
	if err == nil {
		t.Fatalf("ferry %s succeeded:\n%s", strings.Join(args, " "), out.String())
	}
	return err
}

// TestBackupKeepsTheDevApp restores a --dev relay's backup and checks that
// its devices' API key and tokens still work: the dev app is in the backup.
func TestBackupKeepsTheDevApp(t *testing.T) {
	dir := t.TempDir()
	data, restored, file := filepath.Join(dir, "data"), filepath.Join(dir, "restored"), filepath.Join(dir, "b.ferry")
	app, inc := newRelayData(t, data)
	before := tree(t, data)
	out := runOK(t, "backup", "--data", data, "--out", file)
	sameTree(t, "backup", before, tree(t, data))
	for _, want := range []string{"the relay store (incarnation " + inc, "the dev app (dev-app.json)", "not included: apps listed in a configuration file"} {
		if !strings.Contains(out, want) {
			t.Errorf("backup output lacks %q:\n%s", want, out)
		}
	}
	out = runOK(t, "restore", "--data", restored, "--in", file)
	if !strings.Contains(out, "and the dev app") {
		t.Errorf("restore output: %s", out)
	}
	got, err := loadDevApp(restored)
	if err != nil || !reflect.DeepEqual(got, app) {
		t.Fatalf("restored dev app %+v, %v; want %+v", got, err, app)
	}
	store, err := badgerstore.Open(storeDir(restored), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if h, _ := store.Head(context.Background(), relay.Coll{Tenant: app.ID, Collection: "c"}); h != 1 || store.Incarnation() == inc {
		t.Fatalf("restored head %d, incarnation %s (was %s)", h, store.Incarnation(), inc)
	}
	// No temporary folder left behind.
	if entries, _ := os.ReadDir(restored); len(entries) != 2 {
		t.Fatalf("restored folder holds %d entries, want store and dev-app.json", len(entries))
	}
}

// TestRestoreRefusesWhatIsNotABackup gives restore files that are not
// backups: each is refused before anything is written, so a retry with a
// good backup then succeeds.
func TestRestoreRefusesWhatIsNotABackup(t *testing.T) {
	dir := t.TempDir()
	data, good := filepath.Join(dir, "data"), filepath.Join(dir, "good.ferry")
	newRelayData(t, data)
	runOK(t, "backup", "--data", data, "--out", good)
	goodBytes, _ := os.ReadFile(good)

	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bad := map[string]string{
		// Made Badger's Load panic (makeslice: len out of range).
		"text":      write("notes.txt", []byte("these are my notes, not a backup\n")),
		"empty":     write("empty", nil),
		"cut short": write("cut.ferry", goodBytes[:len(goodBytes)-10]),
		"manifest":  write("manifest.ferry", []byte(backupMagic+"{\"dev_app\": 12}\n")),
		"no store":  write("nostore.ferry", []byte(backupMagic+"{}\n")),
		"folder":    dir,
	}
	missing := filepath.Join(dir, "missing")
	empty := filepath.Join(dir, "empty-folder")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, file := range bad {
		err := runErr(t, "restore", "--data", missing, "--in", file)
		switch name {
		case "text", "empty":
			if !errors.Is(err, errNotBackup) {
				t.Errorf("%s: %v, want errNotBackup", name, err)
			}
		case "cut short", "manifest", "no store":
			// A backup cut short is not called something else.
			if !errors.Is(err, errDamagedBackup) || errors.Is(err, errNotBackup) {
				t.Errorf("%s: %v, want errDamagedBackup", name, err)
			}
		}
		mustNotExist(t, missing)
		runErr(t, "restore", "--data", empty, "--in", file)
		if entries, _ := os.ReadDir(empty); len(entries) != 0 {
			t.Fatalf("%s: a refused restore left %d entries", name, len(entries))
		}
	}
	runOK(t, "restore", "--data", empty, "--in", good)
	if _, err := loadDevApp(empty); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreOlderBackups reads a backup written before the backup file
// had a first line and manifest: the store alone.
func TestRestoreOlderBackups(t *testing.T) {
	dir := t.TempDir()
	data, restored, file := filepath.Join(dir, "data"), filepath.Join(dir, "restored"), filepath.Join(dir, "old.bak")
	newRelayData(t, data)
	store, err := badgerstore.Open(storeDir(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := store.Backup(&b); err != nil {
		t.Fatal(err)
	}
	store.Close()
	if err := os.WriteFile(file, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out := runOK(t, "restore", "--data", restored, "--in", file)
	if !strings.Contains(out, "holds the store only") {
		t.Errorf("restore of an older backup does not say the dev app is missing:\n%s", out)
	}
	mustNotExist(t, filepath.Join(restored, devAppFile))
}

// A backup whose bytes changed anywhere after it was written (one byte in
// its manifest, its store's framing or a record's changes) is refused,
// naming its checksum, and nothing is written. Badger's backup format has
// no checksum: such a file restored, changes and all, with no error. A
// backup of format 1 (no checksum line) still restores, and says it was
// not checked.
func TestRestoreRefusesChangedBytes(t *testing.T) {
	dir := t.TempDir()
	data, file := filepath.Join(dir, "data"), filepath.Join(dir, "b.ferry")
	newRelayData(t, data)
	runOK(t, "backup", "--data", data, "--out", file)
	good, _ := os.ReadFile(file)
	if !bytes.HasPrefix(good, []byte(backupMagic)) || !bytes.HasPrefix(good[len(good)-backupTrailerLen:], []byte(backupTrailer)) {
		t.Fatalf("a backup does not begin with %q and end with its checksum line", backupMagic)
	}
	body := len(good) - backupTrailerLen
	for _, at := range []int{len(backupMagic) + 3, body / 2, body - 5} {
		changed := bytes.Clone(good)
		changed[at] ^= 0x20
		p := filepath.Join(dir, fmt.Sprint("changed-", at, ".ferry"))
		if err := os.WriteFile(p, changed, 0o600); err != nil {
			t.Fatal(err)
		}
		into := filepath.Join(dir, fmt.Sprint("into-", at))
		err := runErr(t, "restore", "--data", into, "--in", p)
		if !errors.Is(err, errDamagedBackup) || !strings.Contains(err.Error(), "checksum") {
			t.Errorf("byte %d of %d changed: %v, want the checksum to refuse it", at, len(good), err)
		}
		mustNotExist(t, into)
	}

	v1 := append([]byte(backupMagicV1), good[len(backupMagic):body]...)
	p := filepath.Join(dir, "v1.ferry")
	if err := os.WriteFile(p, v1, 0o600); err != nil {
		t.Fatal(err)
	}
	out := runOK(t, "restore", "--data", filepath.Join(dir, "from-v1"), "--in", p)
	if !strings.Contains(out, "no checksum") {
		t.Errorf("restore of a format 1 backup does not say it was not checked:\n%s", out)
	}
}

func TestRestoreNeverMerges(t *testing.T) {
	dir := t.TempDir()
	data, file := filepath.Join(dir, "data"), filepath.Join(dir, "b.ferry")
	newRelayData(t, data)
	runOK(t, "backup", "--data", data, "--out", file)
	before := tree(t, data)
	runErr(t, "restore", "--data", data, "--in", file)
	sameTree(t, "a refused restore", before, tree(t, data))

	// A folder with a dev app but no store: the dev app is not replaced.
	other := filepath.Join(dir, "other")
	if _, err := devApp(other); err != nil {
		t.Fatal(err)
	}
	before = tree(t, other)
	runErr(t, "restore", "--data", other, "--in", file)
	sameTree(t, "a refused restore", before, tree(t, other))
}

// TestBackupRefusesWhatIsNotARelayFolder: a wrong path, a device's folder,
// a folder a running relay holds. Each is refused and left as it was, and
// no backup file is left.
func TestBackupRefusesWhatIsNotARelayFolder(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "b.ferry")

	missing := filepath.Join(dir, "wrong")
	runErr(t, "backup", "--data", missing, "--out", out)
	mustNotExist(t, missing)
	mustNotExist(t, out)

	device := filepath.Join(dir, "device")
	r, err := replica.Open(device, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := r.Collection("notes")
	c.Create("n1", map[string]any{"text": "hi"})
	r.Close()
	before := tree(t, device)
	err = runErr(t, "backup", "--data", device, "--out", out)
	if !strings.Contains(err.Error(), "not a relay's data folder") {
		t.Errorf("device folder: %v", err)
	}
	sameTree(t, "backup of a device folder", before, tree(t, device))
	mustNotExist(t, out)
	if r, err := replica.Open(device, nil); err != nil {
		t.Fatalf("the device store no longer opens: %v", err)
	} else {
		r.Close()
	}

	// A folder holding a device store where the relay's store would be.
	fake := filepath.Join(dir, "fake")
	if err := os.Rename(device, storeDir(fake)); err != nil {
		if err := os.MkdirAll(fake, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(device, storeDir(fake)); err != nil {
			t.Fatal(err)
		}
	}
	before = tree(t, fake)
	if err := runErr(t, "backup", "--data", fake, "--out", out); !errors.Is(err, relay.ErrNotRelayStore) {
		t.Errorf("device store in store/: %v", err)
	}
	sameTree(t, "backup of a device store", before, tree(t, fake))
	mustNotExist(t, out)

	// A relay that is running holds its store.
	data := filepath.Join(dir, "data")
	newRelayData(t, data)
	store, err := badgerstore.Open(storeDir(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	err = runErr(t, "backup", "--data", data, "--out", out)
	if !errors.Is(err, badgerdir.ErrLocked) {
		t.Errorf("running relay: %v, want ErrLocked", err)
	}
	mustNotExist(t, out)
	code, _, errs := runCLI(t, "backup", "--data", data, "--out", out)
	if code != 1 || !strings.Contains(errs, "in use by another process") || strings.Contains(errs, "Badger") {
		t.Errorf("exit %d, message %q", code, errs)
	}
}

// TestInspectIsReadOnly inspects a device store and checks that not a byte
// of it changed; a missing folder is not created, and a relay's folder is
// refused untouched.
func TestInspectIsReadOnly(t *testing.T) {
	dir := t.TempDir()
	device := filepath.Join(dir, "device")
	r, err := replica.Open(device, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := r.Collection("notes")
	c.Create("n1", map[string]any{"text": "hi"})
	r.Close()
	before := tree(t, device)
	out := runOK(t, "inspect", "--data", device)
	if !strings.Contains(out, "notes") {
		t.Fatalf("inspect: %s", out)
	}
	runOK(t, "inspect", "--data", device, "--collection", "notes")
	sameTree(t, "inspect", before, tree(t, device))

	missing := filepath.Join(dir, "missing")
	runErr(t, "inspect", "--data", missing)
	mustNotExist(t, missing)

	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o700)
	if err := runErr(t, "inspect", "--data", empty); !strings.Contains(err.Error(), "holds no store") {
		t.Errorf("empty folder: %v", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Fatalf("inspect wrote %d entries into an empty folder", len(entries))
	}

	data := filepath.Join(dir, "relay")
	newRelayData(t, data)
	before = tree(t, data)
	for _, d := range []string{data, storeDir(data)} {
		if err := runErr(t, "inspect", "--data", d); !strings.Contains(err.Error(), "relay") {
			t.Errorf("relay folder %s: %v", d, err)
		}
	}
	sameTree(t, "inspect of a relay folder", before, tree(t, data))

	// The app is running: refused with what to do.
	r, err = replica.Open(device, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := runErr(t, "inspect", "--data", device); !errors.Is(err, badgerdir.ErrLocked) {
		t.Errorf("open store: %v, want ErrLocked", err)
	}
}

// TestRelayChecksTheAddressFirst starts a relay on a port in use: it fails
// without creating its data folder, store or dev app.
func TestRelayChecksTheAddressFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := filepath.Join(t.TempDir(), "data")
	err = runErr(t, "relay", "--dev", "--data", data, "--addr", ln.Addr().String())
	if !strings.Contains(err.Error(), "cannot listen on "+ln.Addr().String()) {
		t.Errorf("relay on a busy port: %v", err)
	}
	mustNotExist(t, data)
}

// TestTokenNeverCreatesADevApp runs ferry token --dev where there is no
// relay: it says where it looked instead of minting a token for a new app
// the relay does not know.
func TestTokenNeverCreatesADevApp(t *testing.T) {
	data := filepath.Join(t.TempDir(), "ferry-data")
	err := runErr(t, "token", "--dev", "--data", data, "--subject", "ann", "--read", "*")
	abs, _ := filepath.Abs(filepath.Join(data, devAppFile))
	if !errors.Is(err, errNoDevApp) || !strings.Contains(err.Error(), abs) {
		t.Errorf("token without a dev app: %v", err)
	}
	mustNotExist(t, data)

	app, err := devApp(data)
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(runOK(t, "token", "--dev", "--data", data, "--subject", "ann", "--read", "*"))
	a, _ := relay.NewAuth([]relay.App{app}, nil)
	if _, claims, err := a.Verify(app.APIKey, tok); err != nil || claims.Subject != "ann" {
		t.Fatalf("token: %v", err)
	}
}
