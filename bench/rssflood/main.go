// Command rssflood measures a real ferry relay's peak resident memory
// under a flood of object-heavy pushes: it starts `ferry relay --dev` as a
// child, and each of -clients clients pushes -records records of 2,000
// small maps in a list (40 changes each; with -saved, each record saved
// whole, which the relay must load in Automerge) in one push at once,
// pushing again after retry_ms when refused with busy, until every record
// is stored. It prints the relay's peak RSS (VmHWM) and peak anonymous
// RSS (sampled every 20 ms, with the relay's budget and Go heap metrics at
// that moment), its RSS after, the busy refusals, the push rate and the
// load average. See docs/operations.md, "Memory".
//
//	go build -o ferry ./cmd/ferry
//	go run ./bench/rssflood -ferry ./ferry -saved
//	go run ./bench/rssflood -ferry ./ferry -saved -max-memory 128MiB
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

func main() {
	bin := flag.String("ferry", "./ferry", "ferry binary")
	clients := flag.Int("clients", 32, "clients")
	per := flag.Int("records", 2, "records per client push")
	maxMem := flag.String("max-memory", "", "--max-memory")
	env := flag.String("env", "", "extra env for the relay, comma-separated K=V")
	flag.BoolVar(&pushSaved, "saved", false, "push each record saved whole (one document chunk), not its changes")
	flag.Parse()
	if err := run(*bin, *clients, *per, *maxMem, *env); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

var pushSaved bool

type record struct {
	id    string
	data  []byte
	heads crdt.Heads
}

func makeRecord(actor string, id string) (record, error) {
	d, err := crdt.New(actor)
	if err != nil {
		return record{}, err
	}
	defer d.Free()
	n := 0
	const items, changes = 2000, 40
	for c := range changes {
		var list []any
		for range items / changes {
			list = append(list, map[string]any{"id": int64(n), "title": fmt.Sprint("item ", id, ".", n), "done": n%3 == 0, "tags": []any{"a", "b"}})
			n++
		}
		if c == 0 {
			err = d.Set(crdt.Path{"items"}, list)
		} else {
			err = d.InsertAt(crdt.Path{"items"}, n-len(list), list...)
		}
		if err != nil {
			return record{}, err
		}
		if _, err := d.Commit("", time.Time{}); err != nil {
			return record{}, err
		}
	}
	if pushSaved {
		return record{id: id, data: d.Save(), heads: d.Heads()}, nil
	}
	data, err := d.ChangesSince(nil)
	return record{id: id, data: data, heads: d.Heads()}, err
}

func status(pid int) map[string]int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	out := map[string]int64{}
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && strings.HasSuffix(f[0], ":") {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			out[strings.TrimSuffix(f[0], ":")] = v << 10
		}
	}
	return out
}

// metrics reads a few of the relay's metrics, in MiB.
func metrics(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	want := []string{"ferry_relay_memory_bytes", "go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes", "go_memstats_sys_bytes", "go_memstats_next_gc_bytes"}
	got := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && slices.Contains(want, f[0]) {
			got[f[0]], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	var b strings.Builder
	for _, w := range want {
		fmt.Fprintf(&b, "%s=%.0f ", strings.TrimPrefix(strings.TrimPrefix(w, "go_memstats_"), "ferry_relay_"), got[w]/(1<<20))
	}
	return b.String()
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}

func run(bin string, clients, per int, maxMem, env string) error {
	recs := make([]record, clients*per)
	for i := range recs {
		var err error
		if recs[i], err = makeRecord(fmt.Sprintf("%08x", 0x700000+i), fmt.Sprint("obj-", i)); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "flood")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	args := []string{"relay", "--dev", "--data", dir, "--addr", "127.0.0.1:0"}
	if maxMem != "" {
		args = append(args, "--max-memory", maxMem)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = os.Environ()
	if env != "" {
		cmd.Env = append(cmd.Env, strings.Split(env, ",")...)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	sc := bufio.NewScanner(out)
	var url, key, tok, banner string
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "ferry relay listening on "):
			url = strings.TrimPrefix(l, "ferry relay listening on ")
		case strings.HasPrefix(l, "memory budget"):
			banner = l
		case strings.HasPrefix(l, "API key:"):
			key = strings.TrimSpace(strings.TrimPrefix(l, "API key:"))
		case strings.HasPrefix(l, "token:"):
			tok = strings.TrimSpace(strings.TrimPrefix(l, "token:"))
		}
		if url != "" && key != "" && tok != "" {
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	pid := cmd.Process.Pid
	ctx := context.Background()
	conns := make([]*transport.Client, clients)
	for i := range conns {
		conn, err := transport.Dial(ctx, url, &transport.Options{PingInterval: -1})
		if err != nil {
			return err
		}
		c := transport.NewClient(conn, nil)
		defer c.Close()
		if err := c.Call(ctx, &transport.Hello{APIKey: key, Token: tok, ReplicaID: fmt.Sprint("flood-", i), Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
			return err
		}
		conns[i] = c
	}
	time.Sleep(500 * time.Millisecond)
	base := status(pid)
	la0 := loadavg()
	var peakAnon atomic.Int64
	var atPeak atomic.Value
	atPeak.Store("")
	murl := "http://" + strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/ws") + "/metrics"
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				if v := status(pid)["RssAnon"]; v > peakAnon.Load() {
					peakAnon.Store(v)
					atPeak.Store(metrics(murl))
				}
			}
		}
	}()
	var busy atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &transport.Push{Collection: "flood"}
			for _, r := range recs[i*per : (i+1)*per] {
				p.Records = append(p.Records, transport.RecordChanges{Record: r.id, Data: r.data, Heads: r.heads.Slices()})
			}
			for {
				err := c.Call(ctx, p, &transport.Ack{})
				var te *transport.Error
				if errors.As(err, &te) && te.Code == transport.CodeBusy {
					busy.Add(1)
					time.Sleep(time.Duration(te.RetryMS) * time.Millisecond)
					continue
				}
				if err != nil {
					errs <- err
				}
				return
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	close(errs)
	for err := range errs {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	st := status(pid)
	mib := func(v int64) string { return fmt.Sprintf("%.0f MiB", float64(v)/(1<<20)) }
	fmt.Printf("at peak RssAnon: %s\n", atPeak.Load())
	fmt.Printf("%s\nclients %d x %d records (%d bytes of changes each); base RSS %s; peak RSS (VmHWM) %s; peak RssAnon %s; RSS after %s; busy refusals %d; %d records stored in %s (%.1f records/s); load %s -> %s\n",
		banner, clients, per, len(recs[0].data), mib(base["VmRSS"]), mib(st["VmHWM"]), mib(peakAnon.Load()), mib(st["VmRSS"]), busy.Load(), len(recs), elapsed.Round(10*time.Millisecond), float64(len(recs))/elapsed.Seconds(), la0, loadavg())
	return nil
}
