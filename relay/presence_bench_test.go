package relay_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// BenchmarkPresenceFanOut measures presence from one device's send to its
// receipt by the last of the 49 others on the same record (50 peers), over
// loopback WebSockets: p50 and p99 per message, as p50-ns and p99-ns.
// Each message waits for the previous one to reach everyone, so it times
// the relay's fan-out, not a queue. The peers take turns sending, which
// keeps each within the relay's 20 presence messages a second.
func BenchmarkPresenceFanOut(b *testing.B) {
	const peers = 50
	rl := relaytest.Start(b, nil)
	clients := make([]*transport.Client, peers)
	for i := range clients {
		clients[i] = dialBench(b, rl, fmt.Sprintf("device-%02d", i))
		if err := callOK(b, clients[i], &transport.Subscribe{Collection: "docs"}); err != nil {
			b.Fatal(err)
		}
	}
	data := presenceData(b, map[string]any{"type": "snapshot", "state": map[string]any{"user": "ann", "cursor": 42}})
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		from := i % peers
		start := time.Now()
		if err := callOK(b, clients[from], &transport.Presence{Collection: "docs", Record: "r1", Data: data}); err != nil {
			b.Fatal(err)
		}
		for j, c := range clients {
			if j != from {
				<-c.Presence()
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Nanoseconds()), "p99-ns")
}

func dialBench(b *testing.B, rl *relaytest.Relay, id string) *transport.Client {
	b.Helper()
	return dialDevice(b, rl, rl.Token, id)
}
