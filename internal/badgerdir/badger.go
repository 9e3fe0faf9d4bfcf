package badgerdir

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Logger sends Badger's logs to l; Badger's chatty info lines go to debug.
func Logger(l *slog.Logger) badger.Logger { return logger{l} }

type logger struct{ l *slog.Logger }

func (b logger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...), "component", "badger") }
func (b logger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...), "component", "badger") }
func (b logger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...), "component", "badger") }
func (b logger) Debugf(f string, a ...any)   { b.l.Debug(fmt.Sprintf(f, a...), "component", "badger") }

// GC runs Badger's value-log garbage collection every interval until stop
// is closed. The caller runs it on a goroutine it owns and waits for.
func GC(db *badger.DB, every time.Duration, stop <-chan struct{}, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			// Each successful run rewrites one value-log file; keep going
			// while there is garbage to reclaim.
			n := 0
			for db.RunValueLogGC(0.5) == nil {
				n++
				select {
				case <-stop:
					return
				default:
				}
			}
			if n > 0 {
				log.Debug("value log GC", "files_rewritten", n)
			}
		}
	}
}

// MemtableLogNeeds returns the memtable size that the largest memtable
// log (.mem) in dir was written for, or 0 if there is none: Badger
// creates a memtable's log at twice the memtable's size. A store that
// stopped without closing replays its logs into memtables when it next
// opens, and a log written for larger memtables overflows smaller ones.
func MemtableLogNeeds(dir string) int64 {
	files, err := os.ReadDir(dir)
	if err != nil {
		return 0 // no store yet: the open reports what is wrong
	}
	var need int64
	for _, f := range files {
		if !strings.HasSuffix(f.Name(), ".mem") {
			continue
		}
		if info, err := f.Info(); err == nil {
			need = max(need, info.Size()/2)
		}
	}
	return need
}
