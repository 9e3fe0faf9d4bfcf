package transport

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSendLive is a relay's side of live messages of 6 KiB (a group
// of some 20 small changes) sent on an accepted connection to a client
// that reads them. cpu-ns/op is the process's CPU per message, the
// client's reading included.
func BenchmarkSendLive(b *testing.B) {
	lv := &Live{Collection: "c", Next: 1}
	for i := range 20 {
		lv.Records = append(lv.Records, RecordChanges{Record: "r" + string(rune('a'+i)), Seq: uint64(i + 1), Data: bytes.Repeat([]byte{byte(i)}, 280), Heads: [][]byte{bytes.Repeat([]byte{byte(i)}, HeadSize)}})
	}
	frame, err := EncodeBody(0, lv)
	if err != nil {
		b.Fatal(err)
	}
	ready := make(chan *Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, &Options{PingInterval: -1})
		if err != nil {
			b.Error(err)
			return
		}
		ready <- c
		<-c.ctx.Done()
	}))
	defer srv.Close()
	client, err := Dial(b.Context(), "ws"+strings.TrimPrefix(srv.URL, "http"), &Options{PingInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	server := <-ready
	done := make(chan error, 1)
	go func() {
		for range b.N {
			if _, err := client.Recv(b.Context()); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	cpu0 := cpuTime(b)
	b.ResetTimer()
	for range b.N {
		if err := server.SendEncodedWithin(b.Context(), TypeLive, frame, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
	server.Close()
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
