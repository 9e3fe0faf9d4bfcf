package relay_test

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/amrepo"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

// wantMetrics is every metric the relay exports, with its type and help.
// A metric added, renamed or retyped changes this list and the table in
// docs/operations.md, which TestMetricsDocumented compares with it.
var wantMetrics = []struct{ name, typ, help string }{
	{"ferry_relay_auth_failures_total", "counter", "Refused API keys and tokens."},
	{"ferry_relay_change_received_bytes_total", "counter", "Change bytes received in pushes."},
	{"ferry_relay_change_sent_bytes_total", "counter", "Change and snapshot bytes sent in pulls and live messages."},
	{"ferry_relay_changes_accepted_total", "counter", "Automerge changes stored (duplicates excluded)."},
	{"ferry_relay_connections", "gauge", "Open device connections."},
	{"ferry_relay_lease_wait_seconds", "histogram", "Time waited for a held lease, when granted."},
	{"ferry_relay_lease_waits_total", "counter", "Lease acquisitions that had to wait for another holder."},
	{"ferry_relay_log_entries", "gauge", "Entries in all change logs."},
	{"ferry_relay_request_seconds", "histogram", "Time to answer a request, by message type."},
	{"ferry_relay_requests_total", "counter", "Requests by message type (hello, push, pull, ...) and result (ok or an error code)."},
	{"ferry_relay_slow_consumers_total", "counter", "Subscribers disconnected for falling behind."},
	{"ferry_relay_compactions_total", "counter", "Records whose tail was folded into a new snapshot."},
	{"ferry_relay_presence_sent_total", "counter", "Presence messages passed on to a receiver."},
	{"ferry_relay_presence_dropped_total", "counter", "Presence messages dropped because their receiver was behind."},
	{"ferry_relay_compaction_failing_records", "gauge", "Records whose compaction failed, or that a fresh pull left out, and that have not compacted since."},
	{"ferry_relay_quota_refusals_total", "counter", "Connections and pushes refused for passing their app's quota, by app and quota (connections, push_rate, stored_bytes)."},
	{"ferry_relay_memory_bytes", "gauge", "Memory the relay counts against its budget now: loaded documents, pushes in progress, pages and live messages being sent."},
	{"ferry_relay_memory_budget_bytes", "gauge", "The relay's memory budget (max_memory)."},
	{"ferry_relay_memory_refusals_total", "counter", "Work refused with busy after waiting for room in the memory budget (max_memory)."},
	{"ferry_relay_record_saves_total", "counter", "Records saved whole on push, to check their size against max_record."},
	{"ferry_relay_group_commits_total", "counter", "Store appends of pushes' changes, each holding one or more pushes (group commit)."},
	{"ferry_relay_store_bytes", "gauge", "Bytes the store takes on disk (in memory, for a memory store)."},
	{"ferry_relay_subscribers", "gauge", "Live subscriptions."},
	{"ferry_relay_automerge_connections", "gauge", "Open automerge-repo connections."},
	{"ferry_relay_automerge_documents", "gauge", "Documents synced by open automerge-repo connections."},
	{"ferry_relay_automerge_messages_total", "counter", "automerge-repo messages by type and direction (in, out)."},
	{"ferry_relay_automerge_refused_total", "counter", "automerge-repo connections, messages and changes refused, by reason."},
	{"ferry_relay_automerge_received_bytes_total", "counter", "automerge-repo message bytes received."},
	{"ferry_relay_automerge_sent_bytes_total", "counter", "automerge-repo message bytes sent."},
	{"ferry_relay_automerge_sync_seconds", "histogram", "Time to take in an automerge-repo sync message and answer it, storing its changes included."},
	{"ferry_relay_automerge_queued_bytes", "gauge", "What automerge-repo sync messages read and not yet answered count for: their bytes, plus max_inflated for each carrying changes."},
	{"ferry_relay_automerge_backpressure_total", "counter", "Times an automerge-repo connection was not read until its queued messages were answered (past max queued bytes)."},
	{"ferry_relay_automerge_busy_retries_total", "counter", "Times an automerge-repo connection's handler waited to retry a push or document load the relay refused with busy (max_memory in use)."},
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func newMetricsServer(t *testing.T, store relay.Store) (*relay.Server, *prometheus.Registry) {
	t.Helper()
	// An app with a quota, so that the refusals counter has a series.
	auth, err := relay.NewAuth([]relay.App{relay.NewApp("shop")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: auth, Registry: reg, Quotas: map[string]relay.Quota{"shop": {MaxConnections: 10}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Close()
		store.Close()
	})
	// The relay as ferry relay runs it: with automerge-repo's endpoint.
	if err := amrepo.Mount(srv, nil); err != nil {
		t.Fatal(err)
	}
	return srv, reg
}

func TestMetricsList(t *testing.T) {
	_, reg := newMetricsServer(t, memstore.New())
	got := gather(t, reg)
	var names []string
	for _, w := range wantMetrics {
		names = append(names, w.name)
		mf, ok := got[w.name]
		if !ok {
			t.Errorf("%s is not exported", w.name)
			continue
		}
		if typ := strings.ToLower(mf.GetType().String()); typ != w.typ {
			t.Errorf("%s is a %s, want %s", w.name, typ, w.typ)
		}
		if mf.GetHelp() != w.help {
			t.Errorf("%s help = %q, want %q", w.name, mf.GetHelp(), w.help)
		}
		// Prometheus naming: a counter ends in _total, after its unit.
		if w.typ == "counter" && !strings.HasSuffix(w.name, "_total") {
			t.Errorf("counter %s does not end in _total", w.name)
		}
		for _, misplaced := range []string{"_bytes_in", "_bytes_out", "_seconds_total_"} {
			if strings.Contains(w.name, misplaced) {
				t.Errorf("%s: unit not last (before _total)", w.name)
			}
		}
	}
	for name := range got {
		if !slices.Contains(names, name) {
			t.Errorf("%s is exported but not listed here", name)
		}
	}
}

// TestMetricsRequestTypes checks that every request type, hello included,
// is a value of the type label from the start, and that request counts
// results by code.
func TestMetricsRequestTypes(t *testing.T) {
	srv, reg := newMetricsServer(t, memstore.New())
	types := func(name string) []string {
		var out []string
		for _, m := range gather(t, reg)[name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "type" && !slices.Contains(out, l.GetValue()) {
					out = append(out, l.GetValue())
				}
			}
		}
		slices.Sort(out)
		return out
	}
	want := []string{"auth", "hello", "lease_acquire", "lease_release", "lease_renew", "presence", "pull", "push", "subscribe", "unsubscribe"}
	for _, name := range []string{"ferry_relay_requests_total", "ferry_relay_request_seconds"} {
		if got := types(name); !slices.Equal(got, want) {
			t.Errorf("%s type labels = %v, want %v", name, got, want)
		}
	}

	srv.CountRequest(transport.TypeHello, "", time.Millisecond)
	srv.CountRequest(transport.TypeHello, transport.CodeUnauthenticated, time.Millisecond)
	srv.CountRequest(transport.TypeHello, transport.CodeUnauthenticated, time.Millisecond)
	counts := map[string]float64{}
	for _, m := range gather(t, reg)["ferry_relay_requests_total"].GetMetric() {
		var typ, result string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "type":
				typ = l.GetValue()
			case "result":
				result = l.GetValue()
			}
		}
		if typ == "hello" {
			counts[result] = m.GetCounter().GetValue()
		}
	}
	if counts["ok"] != 1 || counts["unauthenticated"] != 2 {
		t.Fatalf("hello counts %v, want ok 1, unauthenticated 2", counts)
	}
	for _, m := range gather(t, reg)["ferry_relay_request_seconds"].GetMetric() {
		if m.GetLabel()[0].GetValue() == "hello" && m.GetHistogram().GetSampleCount() != 3 {
			t.Fatalf("hello latency samples %d, want 3", m.GetHistogram().GetSampleCount())
		}
	}
}

// TestMetricsStoreBytes checks that store_bytes is what the files take on
// disk: Badger's files are gigabytes long but sparse.
func TestMetricsStoreBytes(t *testing.T) {
	dir := t.TempDir()
	store, err := badgerstore.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	bsAppend(t, store, 0, time.Now(), bsEntry("a", nil, "1"))
	_, reg := newMetricsServer(t, store)
	got := gather(t, reg)["ferry_relay_store_bytes"].GetMetric()[0].GetGauge().GetValue()
	var length int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		length += info.Size()
	}
	t.Logf("store_bytes %.0f; files %d bytes long", got, length)
	if got <= 0 || got > 16<<20 {
		t.Fatalf("store_bytes = %.0f for one small record (files %d bytes long)", got, length)
	}
}

// TestMetricsDocumented compares the metrics table of docs/operations.md
// with wantMetrics: every metric is documented with its type, and nothing
// else is.
func TestMetricsDocumented(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| `(ferry_relay_[a-z_]+)(\\{[a-z,]*\\})?` \\| ([a-z]+) \\|")
	documented := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			documented[m[1]] = m[3]
		}
	}
	for _, w := range wantMetrics {
		typ, ok := documented[w.name]
		if !ok {
			t.Errorf("%s is not in docs/operations.md", w.name)
		} else if typ != w.typ {
			t.Errorf("docs/operations.md says %s is a %s, want %s", w.name, typ, w.typ)
		}
		delete(documented, w.name)
	}
	for name := range documented {
		t.Errorf("docs/operations.md lists %s, which the relay does not export", name)
	}
}

// A hello is counted like any request, refused or not.
func TestMetricsCountHello(t *testing.T) {
	ended := make(chan struct{}, 4)
	tr := newTestRelay(t, memstore.New(), nil)
	*tr.srv.HookSessionEnded() = func() { ended <- struct{}{} }
	good := tr.client("shop")
	// A request answered after the welcome: hello was counted by then.
	mustCall[transport.Changes](t, good, &transport.Pull{Collection: "c"})
	if _, _, err := tr.dial("fk_unknown", tr.tokens["shop"], "r"); !errors.Is(err, transport.ErrUnauthenticated) {
		t.Fatalf("unknown key: %v", err)
	}
	<-ended
	for result, want := range map[string]string{"ok": "1", "unauthenticated": "1"} {
		line := tr.metric(`ferry_relay_requests_total{result="` + result + `",type="hello"}`)
		if !strings.HasSuffix(line, " "+want) {
			t.Errorf("hello %s counted as %q, want %s", result, line, want)
		}
	}
}
