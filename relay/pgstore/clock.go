package pgstore

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// dbClock is the database's clock as this process reads it: a reading of
// clock_timestamp(), paired with the local monotonic time at the middle of
// the query's round trip, then advanced by the local monotonic clock. The
// local wall clock never enters it, so a relay machine whose clock is off,
// or is stepped, reads the database's time all the same; the error is half
// the round trip of the reading, plus the drift of the local oscillator
// until the next one.
type dbClock struct {
	local func() time.Time // time.Now, but for tests
	cur   atomic.Pointer[clockReading]
}

type clockReading struct {
	db  time.Time // the database's time...
	at  time.Time // ...at this local (monotonic) instant
	rtt time.Duration
}

func newDBClock(local func() time.Time) *dbClock {
	c := &dbClock{local: local}
	now := local()
	c.cur.Store(&clockReading{db: now.Round(0), at: now})
	return c
}

func (c *dbClock) now() time.Time {
	r := c.cur.Load()
	return r.db.Add(c.local().Sub(r.at))
}

// offset is the database's clock minus this machine's wall clock, for the
// metrics.
func (c *dbClock) offset() time.Duration {
	return c.now().Sub(c.local().Round(0))
}

// sync takes the best of three readings (the shortest round trip).
func (c *dbClock) sync(ctx context.Context, pool *pgxpool.Pool) error {
	var best *clockReading
	for range 3 {
		t1 := c.local()
		var db time.Time
		if err := pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&db); err != nil {
			if best != nil {
				break
			}
			return err
		}
		t2 := c.local()
		r := &clockReading{db: db, at: t1.Add(t2.Sub(t1) / 2), rtt: t2.Sub(t1)}
		if best == nil || r.rtt < best.rtt {
			best = r
		}
	}
	c.cur.Store(best)
	return nil
}
