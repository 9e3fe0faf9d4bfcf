package badgerdir

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Marker tells a Badger database of one kind of store from any other: a
// format version under FormatKey and an identity under IDKey, written
// together in a new database's first transaction. A database with keys
// but no marker belongs to someone else (a replica's store opened as the
// relay's, say) and is left alone.
type Marker struct {
	Kind      string // names the store in errors: "Ferry", "relay"
	FormatKey []byte // uint32, big-endian
	IDKey     []byte
	// Format is the newest format this version reads, and the one a new
	// database is written in.
	Format uint32
	// NewID returns the identity of a new database.
	NewID func() string
	// NotStore and Newer are the sentinels the errors wrap: the database
	// is not this kind of store, or was written in a newer format.
	NotStore, Newer error
}

// Init returns the identity and format of the store in db, after writing
// the marker (Format, and an identity from NewID) into a database that has
// no keys at all. A database with keys and no marker, or a bad marker,
// gives an error wrapping NotStore; a format above Format, one wrapping
// Newer. In either case nothing is written.
func (m *Marker) Init(db *badger.DB) (id string, format uint32, err error) {
	err = db.Update(func(txn *badger.Txn) error {
		var found bool
		var err error
		id, format, found, err = m.Read(txn)
		if err != nil || found {
			return err
		}
		if !Empty(txn) {
			return fmt.Errorf("%w: database has data but no %s format marker", m.NotStore, m.Kind)
		}
		id, format = m.NewID(), m.Format
		if err := txn.Set(m.FormatKey, binary.BigEndian.AppendUint32(nil, format)); err != nil {
			return err
		}
		return txn.Set(m.IDKey, []byte(id))
	})
	if err != nil {
		return "", 0, err
	}
	return id, format, nil
}

// Read returns the identity and format of a store whose format this
// version reads; found is false, with no error, when the database holds
// no format marker (it may be empty: see Empty). Errors wrap NotStore or
// Newer as Init's do.
func (m *Marker) Read(txn *badger.Txn) (id string, format uint32, found bool, err error) {
	item, err := txn.Get(m.FormatKey)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, err
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return "", 0, false, err
	}
	if len(v) != 4 {
		return "", 0, false, fmt.Errorf("%w: bad format marker", m.NotStore)
	}
	if format = binary.BigEndian.Uint32(v); format > m.Format {
		return "", 0, false, fmt.Errorf("%w: store format %d, this Ferry reads up to %d", m.Newer, format, m.Format)
	}
	item, err = txn.Get(m.IDKey)
	if err != nil {
		return "", 0, false, fmt.Errorf("%w: %s format marker without an identity: %v", m.NotStore, m.Kind, err)
	}
	b, err := item.ValueCopy(nil)
	return string(b), format, true, err
}

// Empty reports whether txn's database holds no key.
func Empty(txn *badger.Txn) bool {
	it := txn.NewIterator(badger.IteratorOptions{})
	defer it.Close()
	it.Rewind()
	return !it.Valid()
}
