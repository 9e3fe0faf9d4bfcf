package pgstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/pgstore"
	"github.com/ferrysync/ferry/relay/storetest"
)

// open opens a store in schema, closed when the test ends.
func open(t testing.TB, schema string, o *pgstore.Options) *pgstore.Store {
	t.Helper()
	opts := pgstore.Options{}
	if o != nil {
		opts = *o
	}
	opts.Schema = schema
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := pgstore.Open(ctx, pgtest.DSN(t), &opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// The conformance suite, each of its folders a schema of its own.
func TestStore(t *testing.T) {
	pgtest.DSN(t)
	storetest.Run(t, func(t *testing.T, dir string) relay.Store {
		sum := sha256.Sum256([]byte(dir))
		schema := "st_" + hex.EncodeToString(sum[:8])
		pgtest.DropAtCleanup(t, schema)
		return open(t, schema, nil)
	})
}
