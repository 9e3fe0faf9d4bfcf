package badgerstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
)

// Damaged store folders: Open refuses them with relay.ErrStoreDamaged
// and changes nothing, never panics, never starts a new store in their
// place; and what a read finds damaged is an error, never an empty value.

// bsDamageStore writes records into a durable store and closes it. relay.Record
// "big" has a document and changes over Badger's 1 MiB value threshold, so
// they live in the value log.
func bsDamageStore(t *testing.T) (dir, inc string, want map[string]relay.Entry) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "store")
	s, err := Open(dir, &Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]relay.Entry{}
	var es []relay.Entry
	for i := range 50 {
		e := bsEntry(fmt.Sprintf("r%03d", i), nil, "1")
		want[e.Record] = e
		es = append(es, e)
	}
	big := bsEntry("big", nil, "1")
	big.Changes = make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range big.Changes {
		big.Changes[i] = byte(rng.Uint32())
	}
	want["big"] = big
	bsAppend(t, s, 0, time.Now(), es...)
	bsAppend(t, s, 0, time.Now(), big)
	inc = s.Incarnation()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, inc, want
}

func bsFile(t *testing.T, dir, suffix string) string {
	t.Helper()
	var best string
	var size int64 = -1
	for _, n := range dirNames(t, dir) {
		if fi, err := os.Stat(filepath.Join(dir, n)); err == nil && strings.HasSuffix(n, suffix) && fi.Size() > size {
			best, size = filepath.Join(dir, n), fi.Size()
		}
	}
	if best == "" {
		t.Fatalf("no %s file in %v", suffix, dirNames(t, dir))
	}
	return best
}

func bsCopyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range dirNames(t, from) {
		b, err := os.ReadFile(filepath.Join(from, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// bsRefusedThenRestored damages a closed store, checks that
// Open refuses it with relay.ErrStoreDamaged and changes nothing, then
// puts the files back and checks that the same store (same incarnation,
// same documents) opens in this same process: nothing was left holding
// the folder's lock.
func bsRefusedThenRestored(t *testing.T, damage func(dir string)) {
	dir, inc, want := bsDamageStore(t)
	backup := filepath.Join(t.TempDir(), "backup")
	bsCopyDir(t, dir, backup)
	damage(dir)
	before := dirState(t, dir)
	_, err := Open(dir, nil)
	if !errors.Is(err, relay.ErrStoreDamaged) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Open = %v, want relay.ErrStoreDamaged naming the folder", err)
	}
	t.Log(err)
	checkUntouched(t, dir, before)

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	bsCopyDir(t, backup, dir)
	s := bsOpen(t, dir, nil)
	if s.Incarnation() != inc {
		t.Errorf("restored store has incarnation %s, want %s", s.Incarnation(), inc)
	}
	for id, e := range want {
		doc, heads, err := relay.Document(context.Background(), s, bsColl, id)
		if err != nil || !bytes.Equal(doc, e.Changes) || !heads.Equal(e.Heads) {
			t.Fatalf("Document(%s) after restoring: %d bytes, %v, %v", id, len(doc), heads, err)
		}
	}
}

// A store that lost its MANIFEST was wiped and given a new incarnation.
func TestBadgerOpenRefusesLostManifest(t *testing.T) {
	bsRefusedThenRestored(t, func(dir string) {
		if err := os.Remove(filepath.Join(dir, "MANIFEST")); err != nil {
			t.Fatal(err)
		}
	})
}

// A MANIFEST cut by its last bytes no longer listed the store's table, and
// Badger deleted it: the store opened empty. It must be refused.
func TestBadgerOpenRefusesCutManifest(t *testing.T) {
	bsRefusedThenRestored(t, func(dir string) {
		m := filepath.Join(dir, "MANIFEST")
		fi, err := os.Stat(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(m, fi.Size()-8); err != nil {
			t.Fatal(err)
		}
	})
}

// A table cut short made Badger panic on a goroutine of its own, killing
// the relay.
func TestBadgerOpenRefusesCutTable(t *testing.T) {
	bsRefusedThenRestored(t, func(dir string) {
		sst := bsFile(t, dir, ".sst")
		fi, err := os.Stat(sst)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(sst, fi.Size()*2/3); err != nil {
			t.Fatal(err)
		}
	})
}

// 64 corrupt bytes in a table.
func TestBadgerOpenRefusesCorruptTable(t *testing.T) {
	bsRefusedThenRestored(t, func(dir string) {
		sst := bsFile(t, dir, ".sst")
		b, err := os.ReadFile(sst)
		if err != nil {
			t.Fatal(err)
		}
		copy(b[len(b)/2:], bytes.Repeat([]byte{0x5a}, 64))
		if err := os.WriteFile(sst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	})
}

// A value log cut short: Badger reads a value past its end as zero bytes,
// without an error. The document that lived there must be an error, the
// others intact.
func TestBadgerCutValueLog(t *testing.T) {
	ctx := context.Background()
	dir, _, want := bsDamageStore(t)
	vlog := bsFile(t, dir, ".vlog")
	fi, err := os.Stat(vlog)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < int64(len(want["big"].Changes)) {
		t.Fatalf("the value log holds %d bytes: the big document is not in it", fi.Size())
	}
	// Both big values end past the first MiB.
	if err := os.Truncate(vlog, 1<<20); err != nil {
		t.Fatal(err)
	}
	s := bsOpen(t, dir, nil)
	for id, e := range want {
		doc, heads, err := relay.Document(ctx, s, bsColl, id)
		switch {
		case id == "big":
			if !errors.Is(err, relay.ErrStoreDamaged) || !strings.Contains(err.Error(), `"big"`) {
				t.Errorf("Document(big) = %d bytes, %v, %v; want relay.ErrStoreDamaged naming it", len(doc), heads, err)
			}
		case err != nil || !bytes.Equal(doc, e.Changes) || !heads.Equal(e.Heads):
			t.Errorf("Document(%s) = %q, %v, %v", id, doc, heads, err)
		}
	}
	if snaps, err := s.Records(ctx, bsColl, "", 100); !errors.Is(err, relay.ErrStoreDamaged) || !strings.Contains(err.Error(), `"big"`) {
		t.Errorf("Snapshots = %d, %v; want relay.ErrStoreDamaged naming big", len(snaps), err)
	}
	if _, err := s.Log(ctx, bsColl, 0, 100); !errors.Is(err, relay.ErrStoreDamaged) {
		t.Errorf("Log over the lost entry = %v, want relay.ErrStoreDamaged", err)
	}
}

// A backup of a store whose value log was cut short, or changed in the
// middle of a value, is refused as damaged, naming the key whose value
// cannot be read, with nothing written. Badger's backup wrote it: without
// the records whose values it could not read (each skipped with a log
// line), and with the values a cut log gave as empty, with no error. The
// same from a running relay's store, for a cut log.
func TestBadgerBackupRefusesUnreadableValues(t *testing.T) {
	for _, damage := range []string{"cut", "changed"} {
		t.Run(damage, func(t *testing.T) {
			dir, _, _ := bsDamageStore(t)
			vlog := bsFile(t, dir, ".vlog")
			if damage == "cut" {
				if err := os.Truncate(vlog, 1<<20); err != nil {
					t.Fatal(err)
				}
			} else {
				// In the middle of the big document's 3 MiB of changes.
				f, err := os.OpenFile(vlog, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt(bytes.Repeat([]byte{0xff}, 64), 2<<20); err != nil {
					t.Fatal(err)
				}
				f.Close()
			}
			var b bytes.Buffer
			_, err := BackupDir(dir, &b)
			if !errors.Is(err, relay.ErrStoreDamaged) || !strings.Contains(err.Error(), "cannot be read") {
				t.Fatalf("BackupDir of a store whose value log was %s: %v, want relay.ErrStoreDamaged naming the key", damage, err)
			}
			if b.Len() != 0 {
				t.Errorf("a refused backup wrote %d bytes", b.Len())
			}
			if damage != "cut" {
				return
			}
			s := bsOpen(t, dir, nil)
			if err := s.Backup(&b); !errors.Is(err, relay.ErrStoreDamaged) {
				t.Fatalf("Backup of an open store with its value log cut: %v, want relay.ErrStoreDamaged", err)
			}
			if b.Len() != 0 {
				t.Errorf("a refused backup wrote %d bytes", b.Len())
			}
		})
	}
}
