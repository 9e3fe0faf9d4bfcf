// A shared to-do list: each task is one automerge-repo document, which is
// one record of Ferry's "todos" collection (the Go example, examples/todo,
// reads and writes the same records). Tasks live in IndexedDB, so the page
// works offline and catches up when the relay is back.
import { Repo, Presence, parseAutomergeUrl, stringifyAutomergeUrl, decodeHeads } from "@automerge/automerge-repo"
import { BrowserWebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { IndexedDBStorageAdapter } from "@automerge/automerge-repo-storage-indexeddb"
import { decodeSyncMessage } from "@automerge/automerge/slim"

const KNOWN = "ferry-webtodo:documents" // localStorage: document IDs seen
const CONFIG = "ferry-webtodo:config" // localStorage: the last config

// The page's server hands out the relay URL with credentials; offline, the
// last one is used.
async function loadConfig() {
  try {
    const res = await fetch("config.json", { cache: "no-store" })
    if (res.ok) {
      const cfg = await res.json()
      localStorage.setItem(CONFIG, JSON.stringify(cfg))
      return cfg
    }
  } catch (e) {
    // offline: fall through
  }
  const saved = localStorage.getItem(CONFIG)
  return saved ? JSON.parse(saved) : null
}

// Tasks get UUIDv7 IDs, as Go's replica.Insert gives them, so both sides
// list them in creation order.
function uuidv7() {
  const b = new Uint8Array(16)
  crypto.getRandomValues(b)
  const ms = Date.now()
  for (let i = 0; i < 6; i++) b[i] = Math.floor(ms / 2 ** (8 * (5 - i))) & 0xff
  b[6] = (b[6] & 0x0f) | 0x70
  b[8] = (b[8] & 0x3f) | 0x80
  return b
}

function hex(bytes) {
  return Array.from(bytes, x => x.toString(16).padStart(2, "0")).join("")
}

// The connection to the relay, as the page shows it: "connecting",
// "connected", "offline" (no answer: the page retries every second), or
// "refused" (the relay answered no: a wrong API key or token, a page
// origin it does not allow), with why.
const conn = { state: "connecting", reason: "" }
let lastCheck = 0

function setConnection(state, reason = "") {
  conn.state = state
  conn.reason = reason
  render()
}

// watch follows each WebSocket the adapter opens. A refusal after the
// upgrade closes it with status 1008 and the reason; a refusal of the
// upgrade itself (the origin) or no relay at all only fails it, and the
// page's server says which (relay-check.json).
function watch(adapter) {
  const connect = adapter.connect.bind(adapter)
  adapter.connect = (...args) => {
    connect(...args)
    const ws = adapter.socket
    let opened = false
    ws.addEventListener("open", () => { opened = true })
    ws.addEventListener("close", e => {
      if (e.code === 1008) return setConnection("refused", e.reason.replace(/^relay: /, ""))
      if (opened) return setConnection("offline", "the connection to the relay was lost")
      if (Date.now() - lastCheck < 5000 && conn.state !== "connecting") return
      lastCheck = Date.now()
      fetch("relay-check.json", { cache: "no-store" })
        .then(r => r.json())
        .then(c => setConnection(c.state === "refused" ? "refused" : "offline", c.reason || "the relay does not answer"))
        .catch(() => setConnection("offline", "this page's server does not answer"))
    })
  }
  adapter.on("peer-candidate", () => {
    setConnection("connected")
    if (!presence) joinRoom().catch(e => console.error("presence:", e))
  })
  adapter.on("peer-disconnected", () => setConnection("offline", "the connection to the relay was lost"))
}

const cfg = await loadConfig()
const network = cfg ? [new BrowserWebSocketClientAdapter(cfg.url, 1000)] : []
network.forEach(watch)
// nextId, when set, is the ID the next created document gets (the room's,
// below); tasks get fresh UUIDv7s.
let nextId = null
const repo = new Repo({
  storage: new IndexedDBStorageAdapter("ferry-webtodo"),
  network,
  idFactory: async () => {
    const id = nextId ?? uuidv7()
    nextId = null
    return id
  },
})

// Who else has the list open, Go devices (examples/todo's "here") among
// them. automerge-repo's presence is per document, so the list has one
// document for it, the room, with a fixed ID that examples/todo uses too;
// it has no title, so it is never shown as a task.
const ROOM = "0193a000-0000-7000-8000-000000000001"
const roomBytes = Uint8Array.from(ROOM.replaceAll("-", "").match(/../g), x => parseInt(x, 16))
const roomUrl = stringifyAutomergeUrl(roomBytes)
const roomId = parseAutomergeUrl(roomUrl).documentId
const NAME = "ferry-webtodo:name"
const me = localStorage.getItem(NAME) || `browser-${hex(crypto.getRandomValues(new Uint8Array(2)))}`
localStorage.setItem(NAME, me)
let presence = null

// joinRoom finds the room (or, if nobody made it yet, makes it) and starts
// this page's presence in it.
async function joinRoom() {
  let room
  try {
    room = await repo.find(roomUrl)
  } catch (e) {
    nextId = roomBytes
    room = await repo.create2({ kind: "presence-room" })
  }
  presence = new Presence({ handle: room })
  for (const ev of ["snapshot", "update", "heartbeat", "goodbye", "pruning"]) presence.on(ev, render)
  presence.start({ initialState: { user: me } })
  render()
}

function hereNow() {
  const others = presence ? Object.values(presence.getPeerStates().value).map(p => String(p.value?.user ?? p.peerId)) : []
  return [`${me} (you)`, ...others.sort()].join(", ")
}

const handles = new Map() // documentId -> handle
// The heads the relay last said it has, per document (hex, from its sync
// messages): a task whose own heads are not all among them has changes
// the relay lacks.
// Kept in localStorage, so that after a reload without the relay the
// tasks it had are not shown as missing from it.
const RELAY_HEADS = "ferry-webtodo:relay-heads"
const relayHeads = new Map(Object.entries(JSON.parse(localStorage.getItem(RELAY_HEADS) || "{}")))

function setRelayHeads(id, heads) {
  relayHeads.set(id, heads)
  localStorage.setItem(RELAY_HEADS, JSON.stringify(Object.fromEntries(relayHeads)))
}
const known = new Set(JSON.parse(localStorage.getItem(KNOWN) || "[]"))

function remember(id) {
  if (!known.has(id)) {
    known.add(id)
    localStorage.setItem(KNOWN, JSON.stringify([...known]))
  }
}

function track(handle) {
  const id = handle.documentId
  if (handles.has(id) || id === roomId) return
  handles.set(id, handle)
  remember(id)
  handle.on("change", render)
  render()
}

// The relay announces every record of the collection (announce=1 in the
// URL): each arrives as a sync message for a document the page has not
// asked for. (automerge-repo 2.5 declares a "document" event on the repo
// but does not emit it, so the adapter's messages are watched instead.)
for (const adapter of network) {
  adapter.on("message", m => {
    if (m.type !== "sync" || !m.documentId) return
    try {
      setRelayHeads(m.documentId, decodeSyncMessage(m.data).heads)
    } catch (e) {
      // not a sync message this page can read: leave the task as it was
    }
    if (m.documentId === roomId) return
    if (!handles.has(m.documentId)) {
      repo.find(m.documentId).then(track).catch(() => {})
    } else {
      render()
    }
  })
}

function onRelay(h) {
  const theirs = relayHeads.get(h.documentId)
  return theirs !== undefined && decodeHeads(h.heads()).every(x => theirs.includes(x))
}

// What this browser saw before loads from IndexedDB, relay or not.
for (const id of known) {
  repo.find(id).then(track).catch(() => {})
}

const list = document.querySelector("#tasks")
const status = document.querySelector("#status")
const connection = document.querySelector("#connection")
const here = document.querySelector("#here")

const connectionText = {
  connecting: "connecting to the relay…",
  connected: "connected to the relay",
  offline: "offline",
  refused: "refused by the relay",
}

function render() {
  const rows = []
  for (const [id, h] of handles) {
    const doc = h.doc()
    if (!doc || doc["$deleted"] === true || doc.title === undefined) continue
    rows.push({ id, h, key: hex(parseAutomergeUrl("automerge:" + id).binaryDocumentId), title: String(doc.title), done: doc.done === true, pending: !onRelay(h) })
  }
  rows.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  list.replaceChildren(
    ...rows.map(r => {
      const li = document.createElement("li")
      li.dataset.id = r.id
      if (r.pending) li.classList.add("pending")
      const box = document.createElement("input")
      box.type = "checkbox"
      box.checked = r.done
      box.addEventListener("change", () => r.h.change(d => { d.done = box.checked }))
      const label = document.createElement("span")
      label.className = "title"
      label.textContent = r.title
      const rm = document.createElement("button")
      rm.textContent = "remove"
      // Ferry's delete is a tombstone field, so a Go device sees a removal.
      rm.addEventListener("click", () => r.h.change(d => { d["$deleted"] = true }))
      const note = document.createElement("span")
      note.className = "note"
      note.textContent = r.pending ? "not on the relay yet" : ""
      li.append(box, label, note, rm)
      return li
    }),
  )
  // Removed tasks count too: their removal has to reach the relay.
  let pending = 0
  for (const h of handles.values()) if (h.doc() && !onRelay(h)) pending++
  status.textContent = `${rows.length} task(s)` + (pending ? `, ${pending} with changes not on the relay yet` : "")
  here.textContent = "here now: " + hereNow()
  if (!cfg) {
    connection.dataset.state = "local"
    connection.textContent = "no relay configured: local only"
    return
  }
  connection.dataset.state = conn.state
  connection.textContent = connectionText[conn.state] + (conn.reason ? `: ${conn.reason}` : "")
}

document.querySelector("#add").addEventListener("submit", e => {
  e.preventDefault()
  const input = document.querySelector("#title")
  const title = input.value.trim()
  if (!title) return
  input.value = ""
  // create2 (unlike create) uses idFactory: tasks get UUIDv7 IDs.
  repo.create2({ title, done: false }).then(track)
})

// automerge-repo saves to IndexedDB shortly after each change: save now
// when the page goes away (best effort; the browser does not wait).
addEventListener("pagehide", () => { repo.flush() })

window.ferryTodo = { repo, handles, conn, me, get presence() { return presence } } // for tests and the console
render()
