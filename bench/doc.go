// Package bench holds Ferry's merge-throughput and sync workloads, shared
// by `go test -bench ./bench/...` and `ferry bench`, so both measure the
// same thing the same way.
//
// The workloads:
//
//	W0 floor    raw automerge-go LoadIncremental of W1's creation changes,
//	            one fresh document each, freed after: no Ferry code,
//	            storage or network; warm, the median of five runs
//	W1 bulk     a durable replica inserts Records records (units of work of
//	            100), pushes them to the relay, and a fresh replica pulls them
//	W2 live     live profiles on two replicas; Updates sequential edits on A,
//	            each timed from the start of A's Update until B's feed
//	            reports it: the relay's fsync on the path, A's beside it
//	            (A pushes while its fsync runs); B applies without one
//	W2L history W2 with History (10,000) edits of its one record: the
//	            latency of the last tenth against the first, which shows
//	            any cost that grows with a record's history
//	W3 merge    two replicas make Updates offline edits each over the same
//	            MergeRecords records; A syncs, B syncs, A syncs (prefer-local)
//	            until every record has the same heads on both
//	W4 ingest   Clients raw transport clients push pre-made changes to one
//	            collection, durable acks awaited, while Subscribers live
//	            subscribers receive them (fan-out latency: from a push's
//	            send until its last subscriber has it)
//	W5 growth   W1 and W4 at 1,000, 10,000 and 100,000 records: time and
//	            relay memory per record
//	W6 reads    a local-only replica inserts ten times Records records
//	            {name, price, qty, cat} and reads them: open, a full scan
//	            with a Go predicate, an index built and queried, a live
//	            query's latency, cold and warm Gets, and its memory; in a
//	            process of its own (this executable again: DeviceMain)
//	W7 objects  Objects object-heavy records (2,000 small maps in a list,
//	            written by 40 changes: the shape of crdt's cost
//	            calibration, which has 4,000) pushed by up to Clients raw
//	            transport clients, one push per record, durable acks
//	            awaited; then 10 single-item edits per record, one per
//	            push, every record in turn: push rates, the relay's peak
//	            RSS and (child relay) CPU time
//
// Each is a [Workload]: a function of a [Config] returning a [Result], a
// list of named [Metric] values with units. [Run] measures W0 first and
// hands it to the others, so every Result carries the floor of the same run.
//
// # Ratios
//
// A metric's Ratio is a floor's cost divided by the measured cost for the
// same amount of work, so 1 means "as fast (or as small) as raw Automerge"
// and 0.05 means twenty times the floor's cost. Higher is better. The
// floor is raw automerge-go doing the same kind of change: W0's creation
// changes for W1, W4 and W5, which create records; for W2, W2L and W3,
// which edit one field of existing records, the workload's own edits
// made again outside Ferry and applied with LoadIncremental, one change at
// a time, into documents holding what they build on (Result.EditFloor).
// W7's changes are a hundred times larger than W0's, so its creation is
// a ratio to raw automerge-go loading its own creation changes into fresh
// documents, and its edits to applying them (Result.EditFloor).
// Every floor is timed warm, freeing what it loads, as the median of five
// runs.
//
//   - A time over K changes (or records, one change each): the floor's
//     time for K changes, divided by the time. A rate: the rate ÷ the
//     floor's rate (the same number).
//   - A W2 latency: the edit floor's time for one edit ÷ the latency.
//   - Bytes carrying K changes: W0's bytes for K changes (the raw change
//     bytes) ÷ the bytes measured.
//   - Fan-out latencies, local commits, counts and memory have no ratio
//     (0, omitted from JSON): no floor does their work.
//
// # The relay
//
// Each workload that needs a relay starts its own, in a fresh data folder,
// so its memory and bytes are its own (see [Target]): in this process
// (the Badger store on disk, durable; bytes counted by wrapping its listener;
// memory is this whole process's, replicas included), as a child process
// (`ferry relay`; bytes counted by a loopback proxy in front of it, which
// W1's devices go through; W2's and W3's, whose bytes are not reported,
// and W4's clients, which count their own, connect to it directly; memory
// from its /proc status), or an external relay given by URL (bytes and
// memory scraped from its /metrics, which count change payloads only and
// the whole relay). Collection names carry a random suffix, so runs against
// one external relay never mix. With [Postgres], several relay processes
// share a PostgreSQL database, behind a round-robin balancer.
package bench
