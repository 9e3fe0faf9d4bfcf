// W1 with automerge-repo clients: one Node client creates N documents
// through a sync server, then a fresh client finds them all. Run against
// Ferry's relay (ferry relay --dev: Badger on disk, each change durable
// before the relay answers) and automerge-repo's own sync server
// (@automerge/automerge-repo-sync-server, files on disk), both on
// loopback, one after the other in one run:
//
//	npm run bench                 # N = 10000
//	npm run bench -- 2000         # another N
//
// It needs go (to build ferry) and prints, per server, each phase's wall
// time and the server process's CPU time, then the ratios. The client
// (automerge-repo in Node) takes most of the wall time with either server.
import { spawn, execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir, cpus, loadavg } from "node:os"
import { join, resolve } from "node:path"
import { createServer } from "node:net"
import { setTimeout as sleep } from "node:timers/promises"
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const N = Number(process.argv[2] ?? 10000)
const root = resolve(import.meta.dirname, "../../..")
const work = mkdtempSync(join(tmpdir(), "ferry-w1-am-"))

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address()
      s.close(() => ok(port))
    })
    s.on("error", fail)
  })
}

// start runs a server until it prints a line matching ready; it returns
// the process and the match.
function start(cmd, args, opts, ready) {
  return new Promise((ok, fail) => {
    const p = spawn(cmd, args, { ...opts, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    const look = d => {
      // The last 8 KiB of its output, for when it ends unexpectedly.
      out = (out + d).slice(-8192)
      const m = out.match(ready)
      if (m) ok({ p, m })
    }
    p.stdout.on("data", look)
    p.stderr.on("data", look)
    // A server that exits before it is stopped fails the run, saying how
    // it ended, rather than leaving the client waiting forever.
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

async function startFerry() {
  const bin = join(work, "ferry")
  execFileSync("go", ["build", "-o", bin, "./cmd/ferry"], { cwd: root, stdio: "inherit" })
  const port = await freePort()
  const { p, m } = await start(bin, ["relay", "--dev", "--data", join(work, "ferry-data"), "--addr", `127.0.0.1:${port}`, "--log-level", "warn"],
    {}, /^(ws:\/\/\S+\/automerge\/todos\?\S+)\n/m)
  return { name: "ferry relay", url: m[1], p }
}

async function startSyncServer() {
  const port = await freePort()
  const dir = join(work, "amrg-data")
  const { p } = await start(process.execPath, [join(import.meta.dirname, "../node_modules/@automerge/automerge-repo-sync-server/src/index.js")],
    { cwd: work, env: { ...process.env, PORT: String(port), DATA_DIR: dir } }, /Listening on port/)
  return { name: "automerge-repo-sync-server", url: `ws://127.0.0.1:${port}`, p }
}

function client(url) {
  return new Repo({ network: [new WebSocketClientAdapter(url, 1000)] })
}

async function connected(repo) {
  while (Object.keys(repo.peerMetadataByPeerId).length === 0) await sleep(5)
  return Object.values(repo.peerMetadataByPeerId)[0].storageId
}

const sameHeads = (a, b) => a && b && a.length === b.length && a.every(h => b.includes(h))

// Documents are created and found in batches of BATCH, each handle
// dropped from the client's cache once done: automerge-repo 2.5's cost per
// document grows with the documents it holds, which would measure the
// client rather than the server.
const BATCH = 500

function storedBy(h, storageId) {
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

// findRetrying finds a document, trying again if it was reported
// unavailable because the connection dropped (a client whose event loop
// is starved misses keepalive pings): every document was stored.
async function findRetrying(repo, url) {
  for (let i = 0; ; i++) {
    try {
      return await repo.find(url)
    } catch (e) {
      if (i === 5) throw e
      retries++
      await sleep(1000)
    }
  }
}
let retries = 0
// automerge-repo also rejects, unawaited, the internal promise of a find
// that reported a document unavailable: count it with the retries
// rather than crash.
process.on("unhandledRejection", e => {
  if (!/is unavailable/.test(e?.message)) throw e
  retries++
})
process.on("uncaughtException", e => {
  if (!/is unavailable/.test(e?.message)) throw e
  retries++
})

// cpu is the CPU time a process has used, in seconds (Linux).
function cpu(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")
    return (Number(f[11]) + Number(f[12])) / 100 // utime + stime, in clock ticks
  } catch {
    return NaN
  }
}

async function run(server) {
  const cpu0 = cpu(server.p.pid)
  const a = client(server.url)
  const storageId = await connected(a)
  let t0 = performance.now()
  const urls = []
  for (let i = 0; i < N; i += BATCH) {
    const batch = []
    for (let j = i; j < Math.min(N, i + BATCH); j++) batch.push(a.create({ title: `task ${j}`, done: false }))
    // Created: the server's heads for each document are the client's (it
    // says so in sync).
    await Promise.all(batch.map(h => storedBy(h, storageId)))
    for (const h of batch) {
      urls.push(h.url)
      await a.removeFromCache(h.documentId)
    }
  }
  const create = (performance.now() - t0) / 1000
  const createCPU = cpu(server.p.pid) - cpu0
  await a.shutdown()

  const b = client(server.url)
  await connected(b)
  t0 = performance.now()
  for (let i = 0; i < N; i += BATCH) {
    const found = await Promise.all(urls.slice(i, i + BATCH).map(u => findRetrying(b, u)))
    for (const f of found) {
      if (!f.doc()?.title) throw new Error(`${server.name}: found an empty document`)
      await b.removeFromCache(f.documentId)
    }
  }
  const find = (performance.now() - t0) / 1000
  const findCPU = cpu(server.p.pid) - cpu0 - createCPU
  await b.shutdown()
  return { create, find, createCPU, findCPU }
}

const results = {}
try {
  for (const startServer of [startFerry, startSyncServer]) {
    const server = await startServer()
    try {
      results[server.name] = await Promise.race([run(server), server.p.exited])
      const r = results[server.name]
      console.log(`${server.name}: create ${N} docs ${r.create.toFixed(2)} s (${(N / r.create).toFixed(0)}/s, server CPU ${r.createCPU.toFixed(2)} s), ` +
        `fresh client finds them ${r.find.toFixed(2)} s (${(N / r.find).toFixed(0)}/s, server CPU ${r.findCPU.toFixed(2)} s)`)
    } finally {
      await stop(server.p)
    }
  }
  const f = results["ferry relay"], s = results["automerge-repo-sync-server"]
  console.log(`ratios (sync server / ferry): wall time create ${(s.create / f.create).toFixed(2)}x, find ${(s.find / f.find).toFixed(2)}x; ` +
    `server CPU create ${(s.createCPU / f.createCPU).toFixed(2)}x, find ${(s.findCPU / f.findCPU).toFixed(2)}x`)
  console.log(`machine: ${cpus().length} × ${cpus()[0].model}, node ${process.version}, load average ${loadavg().map(x => x.toFixed(1)).join(" ")}; finds retried: ${retries}`)
} finally {
  rmSync(work, { recursive: true, force: true })
}
process.exit(0)
