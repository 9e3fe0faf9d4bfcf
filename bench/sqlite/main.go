// Command sqlite runs W6, Ferry's local-read workload, and the same steps
// on SQLite (modernc.org/sqlite, rows as JSON text, as an app would keep
// documents), in one process on the same records, and prints both with
// their ratio. It is a module of its own so that Ferry's go.mod stays
// free of SQLite.
//
//	cd bench/sqlite && go run .            # 100,000 records
//	go run . -records 10000
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	_ "modernc.org/sqlite"

	"github.com/ferrysync/ferry/bench"
)

func main() {
	bench.DeviceMain() // W6 runs its device in this executable, started again
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sqlite:", err)
		os.Exit(1)
	}
}

// figure is one step's wall time (or bytes) and CPU time.
type figure struct{ wall, cpu float64 }

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sqlite", flag.ContinueOnError)
	records := fs.Int("records", 100_000, "records to insert (a multiple of 10)")
	seed := fs.Uint64("seed", 1, "seed of the records")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "ferry-sqlite-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// SQLite first, in a fresh process state, then Ferry's W6.
	lite, err := sqliteRun(filepath.Join(dir, "items.db"), *records, *seed)
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	res, err := bench.W6(ctx, bench.Config{Records: *records / 10, Seed: *seed, Dir: dir,
		Progress: func(s string) { fmt.Fprintln(os.Stderr, s) }})
	if err != nil {
		return fmt.Errorf("W6: %w", err)
	}
	ferry := func(name string) figure {
		m, _ := res.Metric(name)
		c, _ := res.Metric(name + "_cpu")
		return figure{m.Value, c.Value}
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%d records {name, price, qty, cat}; ratio: SQLite's time / Ferry's (higher is better for Ferry)\n", *records)
	fmt.Fprintln(tw, "step\tFerry\tSQLite\tratio\tFerry CPU\tSQLite CPU\tratio CPU")
	for _, step := range []struct{ label, name string }{
		{"insert", "insert"}, {"open", "open"}, {"scan, decode, filter", "scan"},
		{"index build", "index_build"}, {"indexed query", "indexed_query"},
		{"Get, cold (each)", "get_cold"}, {"Get, warm (each)", "get_warm"},
	} {
		f, l := ferry(step.name), lite[step.name]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", step.label, secs(f.wall), secs(l.wall), ratio(l.wall, f.wall),
			secs(f.cpu), secs(l.cpu), ratio(l.cpu, f.cpu))
	}
	m, _ := res.Metric("insert_peak_rss")
	fmt.Fprintf(tw, "peak RSS while inserting\t%.0f MiB\t%.0f MiB\t\t\t\t\n", m.Value/(1<<20), lite["insert_peak_rss"].wall/(1<<20))
	return tw.Flush()
}

func secs(s float64) string {
	switch {
	case s == 0:
		return "-"
	case s < 1e-3:
		return fmt.Sprintf("%.1f µs", s*1e6)
	case s < 1:
		return fmt.Sprintf("%.1f ms", s*1e3)
	}
	return fmt.Sprintf("%.2f s", s)
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// item is W6's record, generated as W6 generates it.
type item struct {
	Name  string  `json:"name"`
	Price float64 `json:"price"`
	Qty   int64   `json:"qty"`
	Cat   string  `json:"cat"`
}

func randomItem(rng *rand.Rand, i int) item {
	return item{Name: fmt.Sprintf("item %d", i), Price: float64(rng.IntN(10_000)) / 100,
		Qty: int64(rng.IntN(1000)), Cat: fmt.Sprintf("c%d", rng.IntN(100))}
}

func cpuTime() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func timed(fn func() error) (figure, error) {
	c0, t0 := cpuTime(), time.Now()
	err := fn()
	return figure{time.Since(t0).Seconds(), cpuTime() - c0}, err
}

func rss(field string) float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(l[len(field)+1:]), "%f", &kb)
			return kb * 1024
		}
	}
	return 0
}

func open(path string) (*sql.DB, error) {
	// No fsync, as W6's replica is Relaxed.
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, db.Ping()
}

func sqliteRun(path string, n int, seed uint64) (map[string]figure, error) {
	out := map[string]figure{}
	db, err := open(path)
	if err != nil {
		return nil, err
	}
	if _, err := db.Exec(`CREATE TABLE items (id TEXT PRIMARY KEY, doc TEXT NOT NULL)`); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 6))
	var ids []string
	want := 0
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	out["insert"], err = timed(func() error {
		for i := 0; i < n; i += 500 {
			tx, err := db.Begin()
			if err != nil {
				return err
			}
			for j := i; j < min(i+500, n); j++ {
				it := randomItem(rng, j)
				if it.Cat == "c7" && it.Price < 5 {
					want++
				}
				u, _ := uuid.NewV7()
				doc, _ := json.Marshal(it)
				if _, err := tx.Exec(`INSERT INTO items VALUES (?, ?)`, u.String(), string(doc)); err != nil {
					tx.Rollback()
					return err
				}
				ids = append(ids, u.String())
			}
			if err := tx.Commit(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out["insert_peak_rss"] = figure{wall: rss("VmHWM")}
	db.Close()
	out["open"], err = timed(func() (err error) { db, err = open(path); return err })
	if err != nil {
		return nil, err
	}
	defer db.Close()
	query := func(q string, args ...any) (int, error) {
		rows, err := db.Query(q, args...)
		if err != nil {
			return 0, err
		}
		defer rows.Close()
		got := 0
		for rows.Next() {
			var id, doc string
			if err := rows.Scan(&id, &doc); err != nil {
				return 0, err
			}
			var it item
			if err := json.Unmarshal([]byte(doc), &it); err != nil {
				return 0, err
			}
			if it.Cat == "c7" && it.Price < 5 {
				got++
			}
		}
		return got, rows.Err()
	}
	out["scan"], err = timed(func() error {
		got, err := query(`SELECT id, doc FROM items`)
		if err == nil && got != want {
			err = fmt.Errorf("scan kept %d, want %d", got, want)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	out["index_build"], err = timed(func() error {
		_, err := db.Exec(`CREATE INDEX by_cat_price ON items (json_extract(doc, '$.cat'), json_extract(doc, '$.price'))`)
		return err
	})
	if err != nil {
		return nil, err
	}
	out["indexed_query"], err = timed(func() error {
		got, err := query(`SELECT id, doc FROM items WHERE json_extract(doc, '$.cat') = 'c7' AND json_extract(doc, '$.price') < 5`)
		if err == nil && got != want {
			err = fmt.Errorf("indexed query found %d, want %d", got, want)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	db.Close()
	if db, err = open(path); err != nil {
		return nil, err
	}
	pick := make([]string, 1000)
	for i := range pick {
		pick[i] = ids[rng.IntN(len(ids))]
	}
	for _, phase := range []string{"get_cold", "get_warm"} {
		f, err := timed(func() error {
			for _, id := range pick {
				var doc string
				if err := db.QueryRow(`SELECT doc FROM items WHERE id = ?`, id).Scan(&doc); err != nil {
					return err
				}
				var it item
				if err := json.Unmarshal([]byte(doc), &it); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		out[phase] = figure{f.wall / float64(len(pick)), f.cpu / float64(len(pick))}
	}
	return out, nil
}
