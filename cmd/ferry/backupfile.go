package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
)

// A backup file holds everything in a relay's data folder that the relay
// needs to serve its devices again:
//
//	ferry-backup 1\n
//	{"created": ..., "dev_app": {...}}\n     the manifest, one line of JSON
//	the relay store, in Badger's backup format, to the end of the file
//
// The first line tells a backup from any other file before a restore
// writes anything. The manifest carries the dev app (dev-app.json), whose
// API key and secret every device of a --dev relay uses. Apps listed in a
// configuration file are not in the data folder, so not in the backup.
//
// A file without the first line is read as a backup from before this
// format: the store alone, which is how "ferry backup" wrote them.
const backupMagic = "ferry-backup 1\n"

// maxManifest bounds the manifest line, so a large file that is not a
// backup is refused without reading it whole.
const maxManifest = 1 << 20

// backupManifest is the backup's second line.
type backupManifest struct {
	Created time.Time  `json:"created"`
	DevApp  *relay.App `json:"dev_app,omitempty"`
}

// errNotBackup means a file is not a backup: it lacks the first line, and
// is not a backup of the earlier format either.
var errNotBackup = errors.New("not a ferry backup")

// errDamagedBackup means a file begins as a backup but the rest is cut
// short or damaged: most often a copy that stopped halfway.
var errDamagedBackup = errors.New("the backup is cut short or damaged (copy it again, or use another backup)")

// writeBackup writes a backup of the relay data folder data to w: the
// store, opened read-only, and the dev app if there is one. It returns the
// manifest written and the store's incarnation.
func writeBackup(w io.Writer, data string, now time.Time) (backupManifest, string, error) {
	m := backupManifest{Created: now.UTC()}
	app, err := loadDevApp(data)
	switch {
	case err == nil:
		m.DevApp = &app
	case !errors.Is(err, errNoDevApp):
		return m, "", err
	}
	line, err := json.Marshal(m)
	if err != nil {
		return m, "", err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	bw.WriteString(backupMagic)
	bw.Write(line)
	bw.WriteByte('\n')
	inc, err := badgerstore.BackupDir(storeDir(data), bw)
	if err != nil {
		return m, "", err
	}
	return m, inc, bw.Flush()
}

// backupFile is a checked backup file, ready to restore.
type backupFile struct {
	f        *os.File
	manifest backupManifest
	legacy   bool  // no first line: the store alone
	store    int64 // where the store begins
	entries  int   // in the store
}

// openBackup opens and checks the backup file at path, reading it whole:
// the first line and manifest, and the store's framing and contents. A
// file that is not a backup gives errNotBackup, and one cut short or
// damaged errDamagedBackup.
func openBackup(path string) (*backupFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	b, err := checkBackup(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

func checkBackup(f *os.File) (*backupFile, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file", errNotBackup)
	}
	b := &backupFile{f: f}
	br := bufio.NewReader(io.LimitReader(f, int64(len(backupMagic))+maxManifest))
	head := make([]byte, len(backupMagic))
	n, _ := io.ReadFull(br, head)
	if string(head[:n]) == backupMagic {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("%w: its manifest line is cut short or too long", errDamagedBackup)
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b.manifest); err != nil {
			return nil, fmt.Errorf("%w: its manifest: %v", errDamagedBackup, err)
		}
		if a := b.manifest.DevApp; a != nil && (a.ID == "" || a.APIKey == "" || len(a.Secret) < 32) {
			return nil, fmt.Errorf("%w: its manifest's dev app lacks its id, api_key or secret", errDamagedBackup)
		}
		b.store = int64(len(backupMagic) + len(line))
	} else {
		b.legacy = true
	}
	if _, err := f.Seek(b.store, io.SeekStart); err != nil {
		return nil, err
	}
	b.entries, err = badgerdir.CheckBackup(f, info.Size()-b.store)
	if err != nil {
		if b.legacy {
			return nil, fmt.Errorf("%w: it does not begin with %q, and is not a store backup of an earlier version either", errNotBackup, backupMagic[:len(backupMagic)-1])
		}
		return nil, fmt.Errorf("%w: its store: %v", errDamagedBackup, err)
	}
	if b.entries == 0 && b.legacy {
		return nil, fmt.Errorf("%w: it holds no store", errNotBackup)
	}
	if b.entries == 0 {
		return nil, fmt.Errorf("%w: it holds no store", errDamagedBackup)
	}
	if _, err := f.Seek(b.store, io.SeekStart); err != nil {
		return nil, err
	}
	return b, nil
}

// storeReader reads the store part, from the start.
func (b *backupFile) storeReader() (io.Reader, error) {
	if _, err := b.f.Seek(b.store, io.SeekStart); err != nil {
		return nil, err
	}
	return b.f, nil
}

func (b *backupFile) Close() error { return b.f.Close() }
