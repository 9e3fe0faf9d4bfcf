package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
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
//	ferry-backup 2\n
//	{"created": ..., "dev_app": {...}}\n     the manifest, one line of JSON
//	the relay store, in Badger's backup format
//	sha256 <64 hex digits>\n                 of every byte before this line
//
// The first line tells a backup from any other file before a restore
// writes anything. The manifest carries the dev app (dev-app.json), whose
// API key and secret every device of a --dev relay uses. Apps listed in a
// configuration file are not in the data folder, so not in the backup.
// The last line's checksum finds bytes changed anywhere in the file:
// Badger's backup format has no checksum of its own, so a file damaged in
// the middle would otherwise restore the damage.
//
// Format 1 is the same without the last line; a file without the first
// line is read as a backup from before both: the store alone, which is
// how "ferry backup" wrote them. Both still restore, unchecked.
const (
	backupMagic   = "ferry-backup 2\n"
	backupMagicV1 = "ferry-backup 1\n"
)

// backupTrailer opens the last line of a backup of format 2; the line is
// backupTrailerLen bytes long.
const (
	backupTrailer    = "sha256 "
	backupTrailerLen = len(backupTrailer) + 2*sha256.Size + 1
)

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
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, sum), 1<<20)
	bw.WriteString(backupMagic)
	bw.Write(line)
	bw.WriteByte('\n')
	inc, err := badgerstore.BackupDir(storeDir(data), bw)
	if err != nil {
		return m, "", err
	}
	if err := bw.Flush(); err != nil {
		return m, "", err
	}
	_, err = fmt.Fprintf(w, "%s%x\n", backupTrailer, sum.Sum(nil))
	return m, inc, err
}

// backupFile is a checked backup file, ready to restore.
type backupFile struct {
	f         *os.File
	manifest  backupManifest
	legacy    bool  // no first line: the store alone
	unchecked bool  // no checksum: format 1, or legacy
	store     int64 // where the store begins
	storeLen  int64 // and its length
	entries   int   // in the store
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
	size := info.Size()
	br := bufio.NewReader(io.LimitReader(f, int64(len(backupMagic))+maxManifest))
	head := make([]byte, len(backupMagic))
	n, _ := io.ReadFull(br, head)
	if magic := string(head[:n]); magic == backupMagic || magic == backupMagicV1 {
		if magic == backupMagic {
			if err := checkBackupSum(f, size); err != nil {
				return nil, err
			}
			size -= int64(backupTrailerLen)
		} else {
			b.unchecked = true
		}
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
		b.legacy, b.unchecked = true, true
	}
	b.storeLen = size - b.store
	if _, err := f.Seek(b.store, io.SeekStart); err != nil {
		return nil, err
	}
	b.entries, err = badgerdir.CheckBackup(io.LimitReader(f, b.storeLen), b.storeLen)
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
func (b *backupFile) storeReader() io.Reader { return io.NewSectionReader(b.f, b.store, b.storeLen) }

// checkBackupSum checks the last line of a backup of format 2, of size
// bytes, against the SHA-256 of every byte before it.
func checkBackupSum(f *os.File, size int64) error {
	if size < int64(len(backupMagic)+backupTrailerLen) {
		return fmt.Errorf("%w: its checksum line is missing", errDamagedBackup)
	}
	body := size - int64(backupTrailerLen)
	line := make([]byte, backupTrailerLen)
	if _, err := f.ReadAt(line, body); err != nil {
		return err
	}
	want, ok := bytes.CutPrefix(bytes.TrimSuffix(line, []byte("\n")), []byte(backupTrailer))
	if !ok || line[len(line)-1] != '\n' {
		return fmt.Errorf("%w: its last line is not its checksum", errDamagedBackup)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, io.NewSectionReader(f, 0, body)); err != nil {
		return err
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != string(want) {
		return fmt.Errorf("%w: its bytes do not match its checksum (sha256 %s, the file says %s)", errDamagedBackup, got, want)
	}
	return nil
}

func (b *backupFile) Close() error { return b.f.Close() }
