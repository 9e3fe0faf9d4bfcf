// automerge-repo (the real, pinned packages) against Ferry's relay. Run by
// the Go test TestNodeClients, which starts the relay and a Go replica and
// passes their addresses in the environment.
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { setTimeout as sleep } from "node:timers/promises"
import { Repo, Presence, parseAutomergeUrl, stringifyAutomergeUrl, cbor } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import WebSocket from "ws"

const env = name => {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is not set: run these tests through go test ./examples/webtodo`)
  return v
}
const AM = env("FERRY_AM_URL")
const KEY = env("FERRY_API_KEY")
const TOKEN = env("FERRY_TOKEN")
const RO_TOKEN = env("FERRY_RO_TOKEN")
const OTHER_TOKEN = env("FERRY_OTHER_TOKEN")
const CONTROL = env("FERRY_CONTROL")

const url = (token = TOKEN, extra = "", coll = "todos") =>
  `${AM}/${coll}?api_key=${encodeURIComponent(KEY)}&token=${encodeURIComponent(token)}${extra}`

const repos = []
async function shutdown(repo) {
  // ws reports closing a socket that is still connecting (a refused
  // client retrying) as an error event nobody listens to any more.
  for (const a of repo.networkSubsystem.adapters) a.socket?.on?.("error", () => {})
  repos.splice(repos.indexOf(repo), 1)
  await repo.shutdown()
}

function newRepo(token, extra, retry = 200, coll) {
  const adapter = new WebSocketClientAdapter(url(token, extra, coll), retry)
  const repo = new Repo({ network: [adapter], idFactory: async () => uuidv7Bytes() })
  repos.push(repo)
  return repo
}
after(async () => {
  for (const r of [...repos]) await shutdown(r)
})

function uuidv7Bytes() {
  const b = crypto.getRandomValues(new Uint8Array(16))
  const ms = Date.now()
  for (let i = 0; i < 6; i++) b[i] = Math.floor(ms / 2 ** (8 * (5 - i))) & 0xff
  b[6] = (b[6] & 0x0f) | 0x70
  b[8] = (b[8] & 0x3f) | 0x80
  return b
}

const hex = b => Array.from(b, x => x.toString(16).padStart(2, "0")).join("")
// A document's record ID: the UUID its 16 bytes are.
function recordOf(handle) {
  const h = hex(parseAutomergeUrl(handle.url).binaryDocumentId)
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}
function urlOf(record) {
  return stringifyAutomergeUrl(Uint8Array.from(record.replaceAll("-", "").match(/../g).map(x => parseInt(x, 16))))
}
function newRecordID() {
  const h = hex(uuidv7Bytes())
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

async function control(method, path, params = {}) {
  const res = await fetch(`${CONTROL}${path}?${new URLSearchParams(params)}`, { method })
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`)
  return res.json()
}

// eventually retries a check until it passes: the Go side only sees what
// reached the relay, which happens after automerge-repo's sync round trips.
async function eventually(what, check, ms = 15000) {
  const deadline = Date.now() + ms
  for (;;) {
    let last
    try {
      const v = await check()
      if (v) return v
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ": " + last.message : ""}`)
    await sleep(50)
  }
}

const str = v => (v === undefined ? v : String(v))

test("a document created in JavaScript is a record the Go replica reads", async () => {
  const repo = newRepo()
  const handle = await repo.create2({ title: "from js", done: false }) // create2 uses idFactory: a UUIDv7
  assert.equal(recordOf(handle)[14], "7")
  const id = recordOf(handle)
  const got = await eventually("the Go replica to see the record", async () => {
    const r = await control("GET", "/get", { id })
    return r.found && r
  })
  assert.equal(got.title, "from js")
  assert.equal(got.done, false)
})

test("a record the Go replica made is found by a JavaScript client", async () => {
  const id = newRecordID()
  await control("POST", "/put", { id, title: "from go", done: "true" })
  const repo = newRepo()
  const handle = await repo.find(urlOf(id))
  const doc = handle.doc()
  assert.equal(str(doc.title), "from go")
  assert.equal(doc.done, true)
})

test("edits go live both ways between JavaScript and Go", async () => {
  const id = newRecordID()
  await control("POST", "/put", { id, title: "shared", done: "false" })
  const repo = newRepo()
  const handle = await repo.find(urlOf(id))

  // Go to JavaScript, with no request from the page.
  const changed = new Promise(resolve => handle.on("change", ({ doc }) => doc.done === true && resolve()))
  await control("POST", "/put", { id, title: "shared", done: "true" })
  await changed

  // JavaScript to Go.
  handle.change(d => { d.title = "shared, edited in js" })
  await eventually("Go to see the edit", async () => (await control("GET", "/get", { id })).title === "shared, edited in js")

  // A delete made by a Go device shows as Ferry's tombstone field.
  const deleted = new Promise(resolve => handle.on("change", ({ doc }) => doc["$deleted"] === true && resolve()))
  await control("POST", "/delete", { id })
  await deleted
})

test("two JavaScript clients edit one document through the relay", async () => {
  const a = newRepo(), b = newRepo()
  const ha = a.create({ title: "pair", n: 0 })
  const hb = await eventually("b to find a's document", () => b.find(ha.url))
  hb.change(d => { d.n = 1 })
  await eventually("a to see b's edit", () => ha.doc().n === 1)
  ha.change(d => { d.n = 2 })
  await eventually("b to see a's edit", () => hb.doc().n === 2)
})

test("ephemeral messages reach the document's other peers with their sender", async () => {
  const a = newRepo(), b = newRepo()
  const ha = a.create({ title: "presence" })
  const hb = await eventually("b to find the document", () => b.find(ha.url))
  await eventually("a's sync to settle", () => ha.doc() && hb.doc().title !== undefined)
  const got = new Promise(resolve => hb.on("ephemeral-message", resolve))
  // The relay only learns a peer has the document when it syncs it, so
  // send until one arrives (the first may beat b's sync).
  let msg
  const sender = setInterval(() => ha.broadcast({ cursor: 7 }), 100)
  try {
    msg = await got
  } finally {
    clearInterval(sender)
  }
  assert.deepEqual(msg.message, { cursor: 7 })
  assert.equal(msg.senderId, a.peerId)
})

test("an unknown document is unavailable", async () => {
  const repo = newRepo()
  await assert.rejects(repo.find(urlOf(newRecordID())), /unavailable/)
})

// rawJoin connects without automerge-repo and returns the first answer to
// join and how the connection closed.
function rawJoin(u) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(u)
    ws.binaryType = "arraybuffer"
    let first
    ws.on("open", () => ws.send(cbor.encode({ type: "join", senderId: "raw", peerMetadata: {}, supportedProtocolVersions: ["1"] })))
    ws.on("message", data => { first ??= cbor.decode(new Uint8Array(data)); if (first.type === "peer") ws.close() })
    ws.on("close", code => resolve({ first, code }))
    ws.on("error", reject)
  })
}

test("bad credentials are refused with a reason", async () => {
  for (const [what, u, want] of [
    ["an unknown API key", `${AM}/todos?api_key=nope&token=${TOKEN}`, /unknown API key/],
    ["a forged token", url(TOKEN.slice(0, -4) + "AAAA"), /unauthenticated/],
    ["no right on the collection", url(OTHER_TOKEN), /does not grant read/],
  ]) {
    const { first, code } = await rawJoin(u)
    assert.equal(first?.type, "error", what)
    assert.match(first.message, want, what)
    assert.equal(code, 1008, what)
  }
  // With automerge-repo, a refused client finds nothing and does not crash.
  // (Slow to retry: a retry timer can outlive Repo.shutdown in
  // automerge-repo 2.5, and its socket would be nobody's.)
  const repo = newRepo("not-a-token", "", 60000)
  await assert.rejects(repo.find(urlOf(newRecordID())), /unavailable/)
  await shutdown(repo)
})

test("a read-only token syncs but its changes are refused", async () => {
  const id = newRecordID()
  await control("POST", "/put", { id, title: "read me", done: "false" })
  const repo = newRepo(RO_TOKEN)
  const handle = await repo.find(urlOf(id))
  assert.equal(str(handle.doc().title), "read me")
  handle.change(d => { d.title = "vandalized" })
  const created = repo.create({ title: "should not exist" })
  // Give the refused edits a chance to travel, then check nothing landed:
  // a later Go edit still arrives, so the connection lived on.
  const arrived = new Promise(resolve => handle.on("change", ({ doc }) => doc.done === true && resolve()))
  await control("POST", "/put", { id, title: "read me", done: "true" })
  await arrived
  const r = await control("GET", "/get", { id })
  assert.equal(r.title, "read me")
  assert.equal((await control("GET", "/get", { id: recordOf(created) })).found, false)
})

test("a client catches up after the relay restarts", async () => {
  const id = newRecordID()
  await control("POST", "/put", { id, title: "before", done: "false" })
  const repo = newRepo()
  const handle = await repo.find(urlOf(id))
  await control("POST", "/relay/stop")
  handle.change(d => { d.done = true }) // offline edit
  await control("POST", "/relay/start")
  await eventually("the offline edit to reach Go", async () => (await control("GET", "/get", { id })).done === true)
  await control("POST", "/put", { id, title: "after", done: "true" })
  await eventually("Go's edit to reach the reconnected client", () => str(handle.doc().title) === "after")
})

test("with announce=1 the relay sends every record, and each new one", async () => {
  const old = newRecordID()
  await control("POST", "/put", { id: old, title: "old", done: "false" })
  const repo = newRepo(TOKEN, "&announce=1")
  const seen = new Map()
  // automerge-repo 2.5 does not emit its "document" event: watch the
  // adapter's messages for documents nobody asked for.
  repo.networkSubsystem.adapters[0].on("message", m => {
    if (m.type === "sync") repo.find(m.documentId).then(h => seen.set(recordOf(h), h)).catch(() => {})
  })
  await eventually("the old record", () => seen.get(old)?.doc()?.title !== undefined)
  const fresh = newRecordID()
  await control("POST", "/put", { id: fresh, title: "new", done: "false" })
  await eventually("the new record", () => str(seen.get(fresh)?.doc()?.title) === "new")
})

// One Repo, several collections: the relay is a distinct peer per
// collection ("ferry-relay/todos", "ferry-relay/notes"), so automerge-repo
// keeps an adapter for each, and a shareConfig routes each document to
// its collection alone (the default would share every document with
// every peer, copying it into every collection).
test("one Repo syncs two collections, each document to its own", async () => {
  const collectionOf = new Map() // documentId -> collection
  const routed = async (peerId, documentId) =>
    documentId !== undefined && collectionOf.get(documentId) === peerId.slice(peerId.lastIndexOf("/") + 1)
  const adapter = coll => new WebSocketClientAdapter(
    `${AM}/${coll}?api_key=${encodeURIComponent(KEY)}&token=${encodeURIComponent(TOKEN)}`, 200)
  const repo = new Repo({
    network: [adapter("todos"), adapter("notes")],
    shareConfig: { announce: routed, access: routed },
    idFactory: async () => uuidv7Bytes(),
  })
  repos.push(repo)
  // create2 resolves after the document exists and before the share
  // policy is consulted for it; set its collection at once.
  const create = async (coll, doc) => {
    const handle = await repo.create2(doc)
    collectionOf.set(handle.documentId, coll)
    repo.shareConfigChanged()
    return recordOf(handle)
  }
  const note = await create("notes", { title: "a note", done: false })
  const task = await create("todos", { title: "a task", done: false })
  await eventually("the note in notes", async () => (await control("GET", "/get", { id: note, coll: "notes" })).found)
  await eventually("the task in todos", async () => (await control("GET", "/get", { id: task, coll: "todos" })).found)
  assert.equal((await control("GET", "/get", { id: note, coll: "todos" })).found, false, "the note leaked into todos")
  assert.equal((await control("GET", "/get", { id: task, coll: "notes" })).found, false, "the task leaked into notes")
  await shutdown(repo)
})

// Conflict policies run on Go devices, when a sync finds a field that both
// its pending edit and an incoming change assigned. automerge-repo clients
// have no policy: docs/conflicts.md says what holds in each order.
for (const { profile, coll, policy, want } of [
  { profile: "relay", coll: "todos", policy: "prefer-local", want: "from go" },
  { profile: "cloud", coll: "cloudy", policy: "prefer-cloud", want: "from js" },
]) {
  test(`a JavaScript edit first, then a Go device's pending edit: ${policy} decides`, async () => {
    const id = newRecordID()
    await control("POST", "/put", { id, coll, profile, title: "v0", done: "false" })
    const repo = newRepo(TOKEN, "", 200, coll)
    const handle = await repo.find(urlOf(id))
    assert.equal(str(handle.doc().title), "v0")
    // The Go device edits offline: its edit is pending.
    await control("POST", "/put", { id, coll, profile, title: "from go", done: "false", sync: "0" })
    handle.change(d => { d.title = "from js" })
    // The JavaScript edit reaches the relay: a fresh client finds it there.
    const probe = newRepo(TOKEN, "", 200, coll)
    await eventually("the relay to hold the JavaScript edit", async () => {
      const h = await probe.find(urlOf(id))
      return str(h.doc().title) === "from js"
    })
    await shutdown(probe)
    // The Go device syncs: its pull finds the conflict, its policy picks.
    const got = await control("GET", "/get", { id, coll, profile })
    assert.equal(got.title, want)
    await eventually(`the JavaScript client to see ${want}`, async () => str(handle.doc().title) === want)
    await shutdown(repo)
  })
}

test("a JavaScript edit concurrent with a Go edit already on the relay: one value everywhere", async () => {
  const id = newRecordID()
  await control("POST", "/put", { id, title: "v0", done: "false" })
  const repo = newRepo()
  const handle = await repo.find(urlOf(id))
  const v0 = handle.heads()
  // The Go device's edit is on the relay (acknowledged) and reaches the
  // client; then the client makes an edit that does not know it (as one
  // made offline would be).
  await control("POST", "/put", { id, title: "from go", done: "false" })
  await eventually("the client to see the Go edit", async () => str(handle.doc().title) === "from go")
  handle.changeAt(v0, d => { d.title = "from js" })
  // No policy runs for this pair: Automerge's own rule picks one of the
  // two, and every replica agrees on it.
  const js = str(handle.doc().title)
  assert.ok(js === "from go" || js === "from js", js)
  await eventually("the Go device to agree", async () => (await control("GET", "/get", { id })).title === js)
  await shutdown(repo)
})

// Presence crosses between automerge-repo's Presence and Go devices: the
// relay passes a Go device's state to the clients syncing the record as an
// ephemeral message from its replica ID, and theirs to the device.
test("presence: a Go device and automerge-repo clients see each other, and a client's leaving", async () => {
  const id = newRecordID()
  await control("POST", "/put", { id, title: "shared", done: "false" })
  const repo = newRepo()
  const handle = await repo.find(urlOf(id))
  const presence = new Presence({ handle })
  presence.start({ initialState: { user: "js" }, heartbeatMs: 500 })
  const { peer: goPeer } = await control("POST", "/presence/set", { id, user: "go" })
  await eventually("the client to see the Go device", async () =>
    presence.getPeerStates().value[goPeer]?.value?.user === "go")
  const jsPeer = repo.networkSubsystem.peerId
  await eventually("the Go device to see the client", async () =>
    (await control("GET", "/presence/peers", { id }))[jsPeer]?.user === "js")
  // A state change reaches the device.
  presence.broadcast("user", "js2")
  await eventually("the Go device to see the new state", async () =>
    (await control("GET", "/presence/peers", { id }))[jsPeer]?.user === "js2")
  // The client stops (goodbye): the device sees it leave.
  presence.stop()
  await eventually("the Go device to see the client leave", async () =>
    (await control("GET", "/presence/peers", { id }))[jsPeer] === undefined)
  await shutdown(repo)
})
