// W1 to W3 of `ferry bench`, run against Ferry and two peers on this
// machine in one run, and printed side by side:
//
//   - Ferry: `ferry bench --child` (the relay a separate process on its
//     durable Badger store, replicas durable on disk), W0 to W3.
//   - Yjs 13.6 + y-websocket 2.1's server with LevelDB persistence
//     (YPERSISTENCE, y-leveldb): one Y.Doc per collection, a record a
//     Y.Map in it, clients using y-websocket's WebsocketProvider.
//   - automerge-repo 2.5.6 clients against automerge-repo's own sync
//     server (@automerge/automerge-repo-sync-server 0.2.8, files on disk):
//     a record a document.
//
//	npm ci && npm run bench
//	npm run bench -- --records 2000 --updates 200 --json
//	npm run bench -- --w3-rounds 9
//
// Flags: --records N (W1; default 10000), --am-records N (W1 for
// automerge-repo, whose client slows with every document it holds;
// default min(records, 2000)), --updates N (W2 updates, W3 offline edits
// per client; 1000), --merge-records N (W3; 100), --seed N, --json, and
// --ferry PATH (a built ferry binary; default: go build from this
// checkout). --w3-rounds N runs only W3, Ferry's and Yjs's in turns, N
// rounds, and prints each time, each round's Ferry/Yjs and the medians:
// Yjs's W3 time varies several-fold from run to run, and turns share the
// machine's load. --w2-rounds N does the same for W2. With either,
// --ferry-vs PATH (another ferry binary, say one built before a change)
// runs that build's workload too, in the same turns, just after --ferry's
// in odd rounds and just before it in even ones.
// Each peer's workloads and what its "done" means are described in
// docs/benchmarks.md.
import { spawn, execFileSync } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir, cpus, loadavg } from "node:os"
import { join, resolve } from "node:path"
import { createServer } from "node:net"
import { setTimeout as sleep } from "node:timers/promises"
import WebSocket from "ws"
import * as Y from "yjs"
import { WebsocketProvider } from "y-websocket"
import * as encoding from "lib0/encoding"
import * as decoding from "lib0/decoding"
import * as syncProtocol from "y-protocols/sync"
import * as A from "@automerge/automerge"
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

// ---- flags ----

function parseFlags(argv) {
  const f = { records: 10000, updates: 1000, mergeRecords: 100, amRecords: 0, seed: 1, json: false, ferry: "", ferryVs: "", w2Rounds: 0, w3Rounds: 0 }
  const names = { "--records": "records", "--updates": "updates", "--merge-records": "mergeRecords", "--am-records": "amRecords", "--seed": "seed", "--w2-rounds": "w2Rounds", "--w3-rounds": "w3Rounds" }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === "--json") f.json = true
    else if (a === "--ferry") f.ferry = argv[++i]
    else if (a === "--ferry-vs") f.ferryVs = argv[++i]
    else if (names[a]) {
      const v = Number(argv[++i])
      if (!Number.isInteger(v) || v <= 0) usage(`${a} wants a positive integer`)
      f[names[a]] = v
    } else usage(`unknown argument ${a}`)
  }
  if (!f.amRecords) f.amRecords = Math.min(f.records, 2000)
  return f
}

function usage(msg) {
  console.error(`peers: ${msg}\nusage: node peers.mjs [--records N] [--am-records N] [--updates N] [--merge-records N] [--seed N] [--json] [--ferry PATH] [--w2-rounds N | --w3-rounds N [--ferry-vs PATH]]`)
  process.exit(2)
}

const flags = parseFlags(process.argv.slice(2))
const root = resolve(import.meta.dirname, "../..")
const work = mkdtempSync(join(tmpdir(), "ferry-peers-"))
const log = msg => console.error(`[${(performance.now() / 1000).toFixed(1)}s] ${msg}`)

// ---- processes ----

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address()
      s.close(() => ok(port))
    })
    s.on("error", fail)
  })
}

// start runs a server until it prints a line matching ready. A server
// that exits before it is stopped rejects p.exited with its output, so
// a run waiting on it fails rather than hangs.
function start(cmd, args, opts, ready) {
  return new Promise((ok, fail) => {
    const p = spawn(cmd, args, { ...opts, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    const look = d => {
      out = (out + d).slice(-8192)
      if (ready.test(out)) ok(p)
    }
    p.stdout.on("data", look)
    p.stderr.on("data", look)
    p.exited = new Promise((_, f) => p.on("exit", (code, sig) =>
      f(new Error(`${cmd} exited (${code ?? sig}) during the run:\n${out}`))))
    p.exited.catch(() => {})
    p.on("exit", code => fail(new Error(`${cmd} exited ${code}:\n${out}`)))
  })
}

function stop(p) {
  return new Promise(ok => {
    if (p.exitCode !== null || p.signalCode !== null) return ok()
    p.removeAllListeners("exit")
    p.on("exit", ok)
    p.kill("SIGINT")
  })
}

// withServer runs fn(url) against a started server, failing if the
// server dies meanwhile.
async function withServer(startServer, fn) {
  const { p, url } = await startServer()
  const crashed = new Promise((_, fail) => { failWorkload = fail })
  try {
    return await Promise.race([fn(url), p.exited, crashed])
  } finally {
    failWorkload = null
    await stop(p)
  }
}

// failWorkload fails the workload running, if any, with an error a
// client threw outside it (automerge-repo's clients throw their timeouts
// from timers), so that one peer's failure is that workload's result and
// not the end of the run.
let failWorkload = null

// ---- records ----

// rng is a seeded PRNG (mulberry32), so every peer makes the same edits.
function rng(seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return { next, int: n => Math.floor(next() * n) }
}

const letters = "abcdefghijklmnopqrstuvwxyz"
const word = (r, n) => Array.from({ length: n }, () => letters[r.int(26)]).join("")

// product is the record every workload writes: the fields of Ferry's
// bench.Product (name, price, qty, tags, updated).
const product = r => ({
  name: word(r, 16),
  price: r.int(100000) / 100,
  qty: r.int(1000),
  tags: [word(r, 5), word(r, 5), word(r, 5)],
  updated: 1_700_000_000_000 + r.int(1_000_000),
})

// edit is one of W3's single-field edits, as bench.randomEdit makes.
function edit(r) {
  switch (r.int(4)) {
    case 0: return ["name", word(r, 16)]
    case 1: return ["price", r.int(100000) / 100]
    case 2: return ["qty", r.int(1000)]
  }
  return ["updated", 1_700_000_000_000 + r.int(1_000_000)]
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(s.length * p / 100) - 1))]
}

const W2_WARMUP = 3

// ---- Ferry ----

function ferryBin() {
  if (flags.ferry) return flags.ferry
  const bin = join(work, "ferry")
  if (!existsSync(bin)) {
    log("building ferry")
    execFileSync("go", ["build", "-o", bin, "./cmd/ferry"], { cwd: root, stdio: ["ignore", "inherit", "inherit"] })
  }
  return bin
}

// ferryBench runs ferry bench --child --json on the workloads and returns
// its results by workload.
async function ferryBench(workloads, bin = ferryBin()) {
  const dir = mkdtempSync(join(work, "ferry-"))
  const out = await new Promise((ok, fail) => {
    const p = spawn(bin, ["bench", "--child", "--json", "--seed", String(flags.seed), "--workloads", workloads,
      "--records", String(flags.records), "--updates", String(flags.updates), "--merge-records", String(flags.mergeRecords),
      "--dir", dir], { stdio: ["ignore", "pipe", "inherit"] })
    let s = ""
    p.stdout.on("data", d => { s += d })
    p.on("exit", code => code === 0 ? ok(s) : fail(new Error(`ferry bench exited ${code}:\n${s}`)))
  })
  rmSync(dir, { recursive: true, force: true })
  const byName = {}
  for (const r of JSON.parse(out).results) byName[r.Workload ?? r.workload] = r
  return byName
}

async function ferry() {
  log("ferry bench --child: W0, W1, W2, W3")
  const byName = await ferryBench("W0,W1,W2,W3")
  const m = (w, name) => byName[w].metrics.find(x => x.name === name)?.value
  return {
    floor: byName.W0.floor,
    w1: { records: flags.records, insert: m("W1", "insert"), upload: m("W1", "push"), read: m("W1", "fresh_pull") },
    w2: { p50: m("W2", "latency_p50"), p99: m("W2", "latency_p99") },
    w3: { merge: m("W3", "merge") },
  }
}

// ---- Yjs + y-websocket ----

async function startYjs() {
  const port = await freePort()
  const p = await start(process.execPath, [join(import.meta.dirname, "node_modules/y-websocket/bin/server.cjs")],
    { cwd: work, env: { ...process.env, HOST: "127.0.0.1", PORT: String(port), YPERSISTENCE: mkdtempSync(join(work, "yjs-leveldb-")) } },
    /running at/)
  return { p, url: `ws://127.0.0.1:${port}` }
}

function yclient(url, room, doc = new Y.Doc()) {
  const provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, connect: false, disableBc: true })
  return { doc, provider }
}

function ysynced(provider) {
  return new Promise(ok => {
    if (provider.synced) return ok()
    const f = s => { if (s) { provider.off("sync", f); ok() } }
    provider.on("sync", f)
  })
}

// yheld resolves once the server has applied everything the provider
// sent: it sends a sync step 1 and waits for the server's step 2 in
// reply, which the server sends after the messages before it on the
// connection (y-websocket's server applies each message as it arrives).
// Yjs has no acknowledgement of its own; this is what a Yjs client can
// know of its edits reaching the server.
async function yheld(provider) {
  await ysynced(provider)
  const ws = provider.ws
  return new Promise(ok => {
    const onMsg = ev => {
      const d = decoding.createDecoder(new Uint8Array(ev.data))
      if (decoding.readVarUint(d) === 0 && decoding.readVarUint(d) === syncProtocol.messageYjsSyncStep2) {
        ws.removeEventListener("message", onMsg)
        ok()
      }
    }
    ws.addEventListener("message", onMsg)
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, 0)
    syncProtocol.writeSyncStep1(enc, provider.doc)
    ws.send(encoding.toUint8Array(enc))
  })
}

function yrecord(doc, p) {
  const m = new Y.Map()
  for (const [k, v] of Object.entries(p)) m.set(k, v)
  return m
}

async function yjsW1(url) {
  const n = flags.records
  const r = rng(flags.seed)
  const a = yclient(url, "w1")
  const recs = a.doc.getMap("records")
  let t0 = performance.now()
  for (let i = 0; i < n; i += 100) {
    a.doc.transact(() => {
      for (let j = i; j < Math.min(n, i + 100); j++) recs.set(`rec-${j}`, yrecord(a.doc, product(r)))
    })
  }
  const insert = (performance.now() - t0) / 1000
  t0 = performance.now()
  a.provider.connect()
  await yheld(a.provider)
  const upload = (performance.now() - t0) / 1000
  a.provider.destroy()
  // The server drops a document when its last client leaves; the fresh
  // client's read loads it from LevelDB.
  await sleep(200)
  const b = yclient(url, "w1")
  const got = b.doc.getMap("records")
  // y-websocket's server answers a client's first sync before it has
  // loaded the document from LevelDB, then sends what it loads as an
  // update: the read ends when every record is there.
  const all = new Promise(ok => {
    const check = () => { if (got.size === n) ok() }
    b.doc.on("update", check)
  })
  t0 = performance.now()
  b.provider.connect()
  await Promise.all([ysynced(b.provider), all])
  const read = (performance.now() - t0) / 1000
  if (got.size !== n || got.get(`rec-${n - 1}`)?.get("tags")?.length !== 3) throw new Error(`yjs W1: fresh client holds ${got.size} records, want ${n}`)
  b.provider.destroy()
  return { records: n, insert, upload, read }
}

async function yjsW2(url) {
  const a = yclient(url, "w2"), b = yclient(url, "w2")
  a.provider.connect()
  b.provider.connect()
  await Promise.all([ysynced(a.provider), ysynced(b.provider)])
  const recA = yrecord(a.doc, product(rng(flags.seed)))
  a.doc.getMap("records").set("live-record", recA)
  let want = null, done = null
  b.doc.getMap("records").observeDeep(() => {
    if (done && b.doc.getMap("records").get("live-record")?.get("qty") === want) done()
  })
  const lat = []
  for (let i = -W2_WARMUP; i < flags.updates; i++) {
    const v = 1_000_000 + i
    const arrived = new Promise(ok => { want = v; done = ok })
    const t0 = performance.now()
    recA.set("qty", v)
    await arrived
    if (i >= 0) lat.push(performance.now() - t0)
  }
  a.provider.destroy()
  b.provider.destroy()
  return { p50: pct(lat, 50) / 1000, p99: pct(lat, 99) / 1000 }
}

async function yjsW3(url) {
  const m = flags.mergeRecords
  const r = rng(flags.seed + 3)
  const a = yclient(url, "w3"), b = yclient(url, "w3")
  a.doc.transact(() => {
    for (let i = 0; i < m; i++) a.doc.getMap("records").set(`rec-${i}`, yrecord(a.doc, product(r)))
  })
  // The shared start: on the server and on both clients.
  a.provider.connect()
  await yheld(a.provider)
  b.provider.connect()
  await ysynced(b.provider)
  a.provider.disconnect()
  b.provider.disconnect()
  for (const [k, c] of [[0, a], [1, b]]) {
    const er = rng(flags.seed * 31 + k)
    const recs = c.doc.getMap("records")
    for (let e = 0; e < flags.updates; e++) {
      const [field, v] = edit(er)
      recs.get(`rec-${er.int(m)}`).set(field, v)
    }
  }
  const same = () => Buffer.from(Y.encodeStateVector(a.doc)).equals(Buffer.from(Y.encodeStateVector(b.doc)))
  const t0 = performance.now()
  const converged = new Promise(ok => {
    const check = () => { if (same()) ok() }
    a.doc.on("update", check)
    b.doc.on("update", check)
  })
  a.provider.connect()
  b.provider.connect()
  await converged
  const merge = (performance.now() - t0) / 1000
  if (JSON.stringify(a.doc.getMap("records").toJSON()) !== JSON.stringify(b.doc.getMap("records").toJSON())) {
    throw new Error("yjs W3: same state vectors, different records")
  }
  a.provider.destroy()
  b.provider.destroy()
  return { merge }
}

// ---- automerge-repo + its sync server ----

async function startAM() {
  const port = await freePort()
  const p = await start(process.execPath, [join(import.meta.dirname, "node_modules/@automerge/automerge-repo-sync-server/src/index.js")],
    { cwd: work, env: { ...process.env, PORT: String(port), DATA_DIR: join(work, "amrg-data") } }, /Listening on port/)
  return { p, url: `ws://127.0.0.1:${port}` }
}

const amClient = url => new Repo({ network: url ? [new WebSocketClientAdapter(url, 1000)] : [] })

async function amConnected(repo) {
  while (Object.keys(repo.peerMetadataByPeerId).length === 0) await sleep(5)
  return Object.values(repo.peerMetadataByPeerId)[0].storageId
}

const sameHeads = (a, b) => a && b && a.length === b.length && a.every(h => b.includes(h))

// amStored resolves once the server's sync messages say it holds the
// handle's current heads.
function amStored(h, storageId) {
  const heads = h.heads()
  return new Promise(ok => {
    const check = ({ storageId: s, heads: got }) => {
      if (s === storageId && sameHeads(got, heads)) {
        h.off("remote-heads", check)
        ok()
      }
    }
    h.on("remote-heads", check)
  })
}

// Documents are created and found in batches, each handle dropped from
// the client's cache once done: automerge-repo's cost per document grows
// with the documents it holds, which would measure the client.
const AM_BATCH = 500

// amFind finds a document, again if the client was told it is
// unavailable: a client whose event loop is starved misses keepalives and
// drops its connection, and every document was stored.
async function amFind(repo, url) {
  for (let i = 0; ; i++) {
    try {
      return await repo.find(url)
    } catch (e) {
      if (i === 5 || !/is unavailable/.test(e?.message)) throw e
      amUnavailable++
      await sleep(1000)
    }
  }
}

async function amW1(url) {
  const n = flags.amRecords
  const r = rng(flags.seed)
  const a = amClient(url)
  const storageId = await amConnected(a)
  const urls = []
  let t0 = performance.now()
  for (let i = 0; i < n; i += AM_BATCH) {
    const batch = []
    for (let j = i; j < Math.min(n, i + AM_BATCH); j++) batch.push(a.create(product(r)))
    await Promise.all(batch.map(h => amStored(h, storageId)))
    for (const h of batch) {
      urls.push(h.url)
      a.removeFromCache(h.documentId)
    }
  }
  // Creating and uploading are one step with a connected automerge-repo
  // client: the upload's time holds the inserts.
  const upload = (performance.now() - t0) / 1000
  await a.shutdown()
  const b = amClient(url)
  await amConnected(b)
  t0 = performance.now()
  for (let i = 0; i < n; i += AM_BATCH) {
    const found = await Promise.all(urls.slice(i, i + AM_BATCH).map(u => amFind(b, u)))
    for (const f of found) {
      if (f.doc()?.tags?.length !== 3) throw new Error("automerge-repo W1: found an empty document")
      b.removeFromCache(f.documentId)
    }
  }
  const read = (performance.now() - t0) / 1000
  await b.shutdown()
  return { records: n, insert: null, upload, read }
}

async function amW2(url) {
  const a = amClient(url), b = amClient(url)
  const storageId = await amConnected(a)
  await amConnected(b)
  const ha = a.create(product(rng(flags.seed)))
  await amStored(ha, storageId)
  const hb = await amFind(b, ha.url)
  let want = null, done = null
  hb.on("change", () => { if (done && hb.doc().qty === want) done() })
  const lat = []
  for (let i = -W2_WARMUP; i < flags.updates; i++) {
    const v = 1_000_000 + i
    const arrived = new Promise(ok => { want = v; done = ok })
    const t0 = performance.now()
    ha.change(d => { d.qty = v })
    await arrived
    if (i >= 0) lat.push(performance.now() - t0)
  }
  await a.shutdown()
  await b.shutdown()
  return { p50: pct(lat, 50) / 1000, p99: pct(lat, 99) / 1000 }
}

async function amW3(url) {
  const m = flags.mergeRecords
  const r = rng(flags.seed + 3)
  // The shared start: on the server, and imported into two clients that
  // are not connected yet.
  const s = amClient(url)
  const storageId = await amConnected(s)
  const start = []
  for (let i = 0; i < m; i++) start.push(s.create(product(r)))
  await Promise.all(start.map(h => amStored(h, storageId)))
  const saved = start.map(h => ({ id: h.documentId, bytes: A.save(h.doc()) }))
  await s.shutdown()
  const a = amClient(), b = amClient()
  const handles = [a, b].map(repo => saved.map(({ id, bytes }) => repo.import(bytes, { docId: id })))
  for (const k of [0, 1]) {
    const er = rng(flags.seed * 31 + k)
    for (let e = 0; e < flags.updates; e++) {
      const [field, v] = edit(er)
      handles[k][er.int(m)].change(d => { d[field] = v })
    }
  }
  const converged = () => handles[0].every((h, i) => sameHeads(h.heads(), handles[1][i].heads()))
  const t0 = performance.now()
  a.networkSubsystem.addNetworkAdapter(new WebSocketClientAdapter(url, 1000))
  b.networkSubsystem.addNetworkAdapter(new WebSocketClientAdapter(url, 1000))
  while (!converged()) await sleep(2)
  const merge = (performance.now() - t0) / 1000
  for (let i = 0; i < m; i++) {
    if (JSON.stringify(handles[0][i].doc()) !== JSON.stringify(handles[1][i].doc())) throw new Error("automerge-repo W3: same heads, different records")
  }
  await a.shutdown()
  await b.shutdown()
  return { merge }
}

// ---- the run ----

// An automerge-repo client logs and rethrows a find of a document it was
// told is unavailable (a starved client misses keepalives); a workload
// that ends fails on its own check, so these are counted, not fatal. Any
// other error thrown outside a workload's own calls fails the workload
// running; with none running (a stopped workload's clients), it is
// logged and counted.
let amUnavailable = 0, strayErrors = 0
const outside = e => {
  if (/is unavailable/.test(e?.message)) amUnavailable++
  else if (failWorkload) failWorkload(e)
  else {
    strayErrors++
    log(`an error outside any workload: ${e?.stack ?? e}`)
  }
}
process.on("unhandledRejection", outside)
process.on("uncaughtException", outside)

if (flags.w2Rounds) {
  await w2Rounds()
  process.exit(0)
}
if (flags.w3Rounds) {
  await w3Rounds()
  process.exit(0)
}

// inTurn returns runs in the order round i runs them: as given in odd
// rounds, reversed in even ones. A build run first in every round was
// measured slower than the same build run second (W3, on a loaded
// machine), so two builds take turns at going first.
function inTurn(runs, i) {
  return i % 2 === 0 ? [...runs].reverse() : runs
}

// w2Rounds runs Ferry's W2 and Yjs's in turns, flags.w2Rounds rounds,
// and, with --ferry-vs, another Ferry build's W2 in the same turns (to
// compare two builds under the same load).
async function w2Rounds() {
  const load0 = loadavg()
  const runs = [["ferry", () => ferryBench("W2")]]
  if (flags.ferryVs) runs.push(["ferry_vs", () => ferryBench("W2", flags.ferryVs)])
  const res = Object.fromEntries([...runs.map(([n]) => [n, []]), ["yjs", []]])
  try {
    for (let i = 1; i <= flags.w2Rounds; i++) {
      const line = []
      for (const [name, run] of inTurn(runs, i)) {
        const m = (await run()).W2.metrics
        const v = { p50: m.find(x => x.name === "latency_p50").value, p99: m.find(x => x.name === "latency_p99").value }
        res[name].push(v)
        line.push(`${name} ${fmtW2(v)}`)
      }
      const y = await withServer(startYjs, yjsW2)
      res.yjs.push(y)
      line.push(`yjs ${fmtW2(y)}`)
      log(`W2 round ${i}: ${line.join("; ")}; load average ${loadavg()[0].toFixed(1)}`)
    }
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
  const median = xs => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2 }
  const out = { w2_rounds: {}, machine: { cpus: cpus().length, model: cpus()[0].model, node: process.version, loadavg_start: load0, loadavg_end: loadavg() }, config: flags }
  for (const [name, vs] of Object.entries(res)) {
    out.w2_rounds[name] = { rounds: vs, p50_median: median(vs.map(v => v.p50)), p99_median: median(vs.map(v => v.p99)) }
  }
  if (flags.json) {
    console.log(JSON.stringify(out, null, 2))
    return
  }
  console.log(`W2, ${flags.updates} updates, ${flags.w2Rounds} rounds (${Object.keys(res).join(", ")} in turns); medians of the rounds' p50 and p99:`)
  const y = out.w2_rounds.yjs
  for (const [name, r] of Object.entries(out.w2_rounds)) {
    const ratio = name === "yjs" ? "" : `; /Yjs ${(r.p50_median / y.p50_median).toFixed(2)} / ${(r.p99_median / y.p99_median).toFixed(2)}`
    console.log(`${name.padEnd(8)} p50 ${(r.p50_median * 1000).toFixed(2)} ms, p99 ${(r.p99_median * 1000).toFixed(2)} ms${ratio}`)
  }
  console.log(`load average ${load0.map(x => x.toFixed(1)).join(" ")} at start, ${out.machine.loadavg_end.map(x => x.toFixed(1)).join(" ")} at end; seed ${flags.seed}`)
}

function fmtW2(v) { return `${(v.p50 * 1000).toFixed(2)}/${(v.p99 * 1000).toFixed(2)} ms` }

// w3Rounds runs Ferry's W3 and Yjs's in turns, flags.w3Rounds rounds,
// and, with --ferry-vs, another Ferry build's W3 in the same turns.
async function w3Rounds() {
  const load0 = loadavg()
  const res = { ferry: [], yjs: [], vs: [] }
  const merge = async bin => (await ferryBench("W3", bin)).W3.metrics.find(x => x.name === "merge").value
  try {
    for (let i = 1; i <= flags.w3Rounds; i++) {
      let f, v = null
      if (flags.ferryVs && i % 2 === 0) {
        v = await merge(flags.ferryVs)
        f = await merge(ferryBin())
      } else {
        f = await merge(ferryBin())
        if (flags.ferryVs) v = await merge(flags.ferryVs)
      }
      const y = (await withServer(startYjs, yjsW3)).merge
      res.ferry.push(f)
      if (v !== null) res.vs.push(v)
      res.yjs.push(y)
      log(`W3 round ${i}: Ferry ${(f * 1000).toFixed(0)} ms, ${v !== null ? `Ferry vs ${(v * 1000).toFixed(0)} ms, ` : ""}Yjs ${(y * 1000).toFixed(0)} ms; load average ${loadavg()[0].toFixed(1)}`)
    }
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
  const median = xs => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2 }
  const out = {
    w3_rounds: { ferry: res.ferry, yjs: res.yjs, ferry_median: median(res.ferry), yjs_median: median(res.yjs) },
    // Each round's Ferry/Yjs: how often the two are within a ratio, not
    // only their medians.
    ratios: res.ferry.map((f, i) => f / res.yjs[i]),
    machine: { cpus: cpus().length, model: cpus()[0].model, node: process.version, loadavg_start: load0, loadavg_end: loadavg() },
    config: flags,
  }
  out.w3_rounds.ratio_of_medians = out.w3_rounds.ferry_median / out.w3_rounds.yjs_median
  if (flags.ferryVs) {
    out.w3_rounds.ferry_vs = res.vs
    out.w3_rounds.ferry_vs_median = median(res.vs)
  }
  if (flags.json) {
    console.log(JSON.stringify(out, null, 2))
    return
  }
  const ms = xs => xs.map(x => (x * 1000).toFixed(0)).join(", ")
  console.log(`W3, ${flags.updates} offline edits per client on ${flags.mergeRecords} records, ${flags.w3Rounds} rounds of Ferry${flags.ferryVs ? " and Ferry vs (taking turns at going first)" : ""}, then Yjs:`)
  console.log(`Ferry: ${ms(res.ferry)} ms; median ${ms([out.w3_rounds.ferry_median])} ms`)
  if (flags.ferryVs) {
    console.log(`Ferry vs (${flags.ferryVs}): ${ms(res.vs)} ms; median ${ms([out.w3_rounds.ferry_vs_median])} ms`)
  }
  console.log(`Yjs:   ${ms(res.yjs)} ms; median ${ms([out.w3_rounds.yjs_median])} ms`)
  console.log(`Ferry/Yjs by round: ${out.ratios.map(x => x.toFixed(2)).join(", ")}`)
  console.log(`Ferry/Yjs, medians: ${out.w3_rounds.ratio_of_medians.toFixed(2)}; load average ` +
    `${load0.map(x => x.toFixed(1)).join(" ")} at start, ${out.machine.loadavg_end.map(x => x.toFixed(1)).join(" ")} at end; seed ${flags.seed}`)
}

const load0 = loadavg()
const results = { ferry: null, yjs: {}, am: {} }
try {
  results.ferry = await ferry()
  for (const [name, startServer, runs] of [["yjs", startYjs, { w1: yjsW1, w2: yjsW2, w3: yjsW3 }], ["am", startAM, { w1: amW1, w2: amW2, w3: amW3 }]]) {
    for (const [w, fn] of Object.entries(runs)) {
      log(`${name === "yjs" ? "Yjs + y-websocket" : "automerge-repo"}: ${w.toUpperCase()}`)
      // A server of its own per workload: each starts from an empty store.
      // A peer that fails a workload is a result too: it is shown, and
      // the run goes on.
      try {
        results[name][w] = await withServer(startServer, fn)
      } catch (e) {
        log(`${name} ${w.toUpperCase()} failed: ${e?.stack ?? e}`)
        results[name][w] = { error: String(e?.message ?? e).split("\n")[0] }
      }
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true })
}
results.machine = {
  cpus: cpus().length, model: cpus()[0].model, node: process.version,
  loadavg_start: load0, loadavg_end: loadavg(), am_unavailable: amUnavailable, stray_errors: strayErrors,
}
results.config = flags

if (flags.json) {
  console.log(JSON.stringify(results, null, 2))
} else {
  printTable(results)
}
process.exit(0)

function printTable(res) {
  const f = res.ferry, y = res.yjs, a = res.am, floor = f.floor
  // toW0 is W0's time for n changes ÷ t: 1 is raw automerge-go's speed.
  // W0 creates records, so only W1 (which creates records too) is
  // compared with it; W2's latencies and W3's single-field edits are not
  // that kind of change, and get no ratio (ferry bench gives W2 and W3
  // ratios to floors of their own kind of change).
  const toW0 = (n, t) => (t && n ? (n / floor.changes_per_s / t) : null)
  const ms = t => (t == null ? "—" : t < 1 ? `${(t * 1000).toFixed(2)} ms` : `${t.toFixed(2)} s`)
  const r = x => (x == null ? "—" : x.toFixed(3))
  const rows = [
    ["W1 insert, records", f.w1.records, f.w1.insert, y.w1.insert, null, f.w1.records],
    ["W1 upload", f.w1.records, f.w1.upload, y.w1.upload, a.w1.upload, f.w1.records],
    ["W1 fresh read", f.w1.records, f.w1.read, y.w1.read, a.w1.read, f.w1.records],
    ["W2 latency p50", flags.updates, f.w2.p50, y.w2.p50, a.w2.p50, null],
    ["W2 latency p99", flags.updates, f.w2.p99, y.w2.p99, a.w2.p99, null],
    ["W3 merge to identical state", 2 * flags.updates, f.w3.merge, y.w3.merge, a.w3.merge, null],
  ]
  const line = cols => console.log(cols.map((c, i) => String(c).padEnd([30, 12, 12, 16, 11, 11, 11, 11][i] ?? 10)).join(" "))
  console.log(`W0 floor (same run): ${floor.changes} changes in ${ms(floor.seconds)}, ${floor.changes_per_s.toFixed(0)} changes/s`)
  line(["workload", "Ferry", "Yjs", "automerge-repo", "Ferry/Yjs", "Ferry:W0", "Yjs:W0", "am:W0"])
  for (const [name, , ft, yt, at, changes] of rows) {
    const amChanges = name.startsWith("W1") ? a.w1.records ?? flags.amRecords : changes
    line([name, ms(ft), ms(yt), at == null ? "—" : ms(at), ft && yt ? (ft / yt).toFixed(2) : "—",
      r(toW0(changes, ft)), r(toW0(changes, yt)), r(toW0(amChanges, at))])
  }
  for (const [peer, rs] of [["Yjs", y], ["automerge-repo", a]]) {
    for (const [w, x] of Object.entries(rs)) if (x.error) console.log(`${peer} ${w.toUpperCase()} did not finish: ${x.error}`)
  }
  console.log(`W1: Ferry and Yjs ${f.w1.records} records, automerge-repo ${flags.amRecords} (its client slows with every document it holds); ` +
    `W2: ${flags.updates} updates; W3: ${flags.updates} offline edits per client on ${flags.mergeRecords} records`)
  console.log("Ferry/Yjs: Ferry's time ÷ Yjs's (below 1: Ferry faster). X:W0 (W1 only): W0's time for the same record creations ÷ X's time (1: raw automerge-go).")
  const m = res.machine
  console.log(`machine: ${m.cpus} × ${m.model}, node ${m.node}, load average ${m.loadavg_start.map(x => x.toFixed(1)).join(" ")} at start, ` +
    `${m.loadavg_end.map(x => x.toFixed(1)).join(" ")} at end; seed ${flags.seed}`)
}
