package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// mapsEnv, set to a file, has W6's device append to it, for each phase,
// its RSS at its highest and what made it up: the resident memory of
// each kind of mapping (/proc/self/smaps) at that moment. Linux only;
// reading smaps at each new high costs the device some CPU.
const mapsEnv = "FERRY_BENCH_SMAPS"

// mapsProbe samples the process's RSS every 10 ms and, at each new high
// since its last flush, sums its mappings' resident memory by kind.
type mapsProbe struct {
	path, store, exe string
	mu               sync.Mutex
	high             int64
	desc             string
	stop, done       chan struct{}
}

// newMapsProbe starts a probe if mapsEnv is set, else returns nil (whose
// methods do nothing). store is the replica's folder.
func newMapsProbe(store string) *mapsProbe {
	path := os.Getenv(mapsEnv)
	if path == "" {
		return nil
	}
	exe, _ := os.Executable()
	abs, _ := filepath.Abs(store)
	p := &mapsProbe{path: path, store: abs + string(filepath.Separator), exe: exe,
		stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *mapsProbe) run() {
	defer close(p.done)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		st, err := procStatus("self")
		if err != nil {
			continue
		}
		p.mu.Lock()
		high := p.high
		p.mu.Unlock()
		if int64(st.VmRSS) <= high+256<<10 {
			continue
		}
		kinds := p.byKind()
		p.mu.Lock()
		p.high = int64(st.VmRSS)
		p.desc = fmt.Sprintf("rss %.1f MiB: anon %.1f, file %.1f;%s", mib(st.VmRSS), mib(st.RssAnon), mib(st.RssFile), kinds)
		p.mu.Unlock()
	}
}

// byKind sums the resident memory of the process's mappings: anonymous,
// the executable, the store's files by suffix, and the rest.
func (p *mapsProbe) byKind() string {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return " " + err.Error()
	}
	sums := map[string]int64{}
	kind := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && len(f[1]) == 4:
			kind = anonKind(f)
			if len(f) >= 6 && !strings.HasPrefix(f[5], "[") {
				switch name := strings.Join(f[5:], " "); {
				case name == p.exe:
					kind = "executable"
				case strings.HasPrefix(name, p.store):
					kind = "store " + filepath.Ext(name)
					if filepath.Ext(name) == "" {
						kind = "store, other"
					}
				default:
					kind = "other files"
				}
			}
		case len(f) >= 2 && f[0] == "Rss:":
			v, _ := strconv.ParseInt(f[1], 10, 64)
			sums[kind] += v << 10
		}
	}
	keys := make([]string, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return sums[keys[i]] > sums[keys[j]] })
	var s strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&s, " %s %.1f", k, mib(sums[k]))
	}
	s.WriteString(";" + goMemory())
	return s.String()
}

// anonKind names an anonymous mapping (f: the fields of its line in
// smaps): the C allocator's main heap (brk), or the rest (Go's heap and
// runtime, the C allocator's other arenas and large blocks, Automerge's
// among them, threads' stacks).
func anonKind(f []string) string {
	if len(f) >= 6 && f[5] == "[heap]" {
		return "anonymous, C heap"
	}
	return "anonymous"
}

// goMemory describes the Go runtime's memory by class (runtime/metrics):
// heap objects, free heap not yet returned to the OS, heap returned,
// unused space in spans, stacks, and the rest.
func goMemory() string {
	names := []string{"objects", "free", "released", "unused", "stacks"}
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/memory/classes/total:bytes"},
	}
	metrics.Read(s)
	var b strings.Builder
	b.WriteString(" go")
	var sum uint64
	for i, n := range names {
		v := s[i].Value.Uint64()
		sum += v
		fmt.Fprintf(&b, " %s %.1f", n, mib(v))
	}
	fmt.Fprintf(&b, " other %.1f", mib(s[len(names)].Value.Uint64()-sum))
	return b.String()
}

// flush appends the phase's line to the file and starts the next phase.
func (p *mapsProbe) flush(phase string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	line := fmt.Sprintf("%s: %s\n", phase, p.desc)
	empty := p.desc == "" // shorter than a sample
	p.high, p.desc = 0, ""
	p.mu.Unlock()
	if empty {
		return
	}
	if f, err := os.OpenFile(p.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		f.WriteString(line)
		f.Close()
	}
}

func (p *mapsProbe) close() {
	if p != nil {
		close(p.stop)
		<-p.done
	}
}

func mib[T int64 | uint64 | int](v T) float64 { return float64(v) / (1 << 20) }
