// Generates the JavaScript-made changes and documents in this folder, with
// @automerge/automerge 3.x, so Go tests can check that Doc.Import accepts
// what a JavaScript app pushes and that the importing document saves and
// reloads. Run it from a scratch folder outside the repository:
//
//   npm install @automerge/automerge@3 && node /path/to/gen.mjs /path/to/crdt/testdata/js
//
// Output is deterministic: fixed actors, fixed commit times, a seeded PRNG.
// For each scenario NAME it writes NAME.changes (every change, as
// getAllChanges returns them: change chunks, compressed when large) and
// NAME.doc (save()).
import * as A from "@automerge/automerge"
import { writeFileSync } from "node:fs"
import { join } from "node:path"

const out = process.argv[2] ?? "."
const time = (n) => 1_700_000_000 + n

function write(name, doc) {
  const changes = A.getAllChanges(doc)
  const total = changes.reduce((n, c) => n + c.length, 0)
  const all = new Uint8Array(total)
  let off = 0
  for (const c of changes) {
    all.set(c, off)
    off += c.length
  }
  writeFileSync(join(out, `${name}.changes`), all)
  writeFileSync(join(out, `${name}.doc`), A.save(doc))
  console.log(`${name}: ${changes.length} changes, ${total} bytes`)
}

// mulberry32: a small seeded PRNG.
function rng(seed) {
  return () => {
    seed |= 0
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// Every value kind, nested maps and lists, counters, text with multi-byte
// runes, marks, blocks, deletes and a record delete/restore.
function values() {
  let d = A.init({ actor: "aa01" })
  d = A.change(d, { message: "every kind", time: time(1) }, (x) => {
    x.str = "plain"
    x.raw = new A.ImmutableString("immutable é")
    x.int = -42
    x.bigint = 2 ** 40
    x.uint = new A.Uint(7)
    x.i64 = new A.Int(-3)
    x.float = 1.5
    x.f64 = new A.Float64(3)
    x.yes = true
    x.no = false
    x.nil = null
    x.bytes = new Uint8Array([0, 1, 2, 255])
    x.date = new Date(1_700_000_000_123)
    x.count = new A.Counter(10)
    x.text = "héllo wörld 🙂"
    x.nested = { a: { b: { c: 1 } }, list: [1, "two", { three: 3 }] }
    x.list = ["a", "b", "c", "d"]
  })
  d = A.change(d, { time: time(2) }, (x) => {
    x.count.increment(5)
    x.count.decrement(2)
    A.splice(x, ["text"], 1, 2, "éé🎉")
    x.list.insertAt(1, "x", "y")
    x.list.deleteAt(3)
    x.list[0] = "A"
    x.nested.a.b.c = 2
    delete x.nested.list
    x.nested.list2 = []
    x.nested.list2.push({ deep: [1, 2] })
  })
  d = A.change(d, { message: "marks", time: time(3) }, (x) => {
    A.mark(x, ["text"], { start: 0, end: 5, expand: "both" }, "bold", true)
    A.mark(x, ["text"], { start: 2, end: 8, expand: "none" }, "link", "https://example.com")
    A.mark(x, ["text"], { start: 1, end: 3, expand: "before" }, "size", 12)
    A.mark(x, ["text"], { start: 4, end: 6, expand: "after" }, "when", new Date(5))
  })
  d = A.change(d, { time: time(4) }, (x) => {
    A.unmark(x, ["text"], { start: 1, end: 2, expand: "both" }, "bold")
    A.splitBlock(x, ["text"], 3, { type: "paragraph", parents: [], attrs: {} })
    A.updateText(x, ["text"], "héllo wörld, again 🙂🙂")
  })
  d = A.change(d, { time: time(5) }, (x) => {
    x["$deleted"] = true
  })
  d = A.change(d, { time: time(6) }, (x) => {
    delete x["$deleted"]
    delete x.bytes
    x.count.increment(1)
  })
  d = A.emptyChange(d, { message: "nothing", time: time(7) })
  return d
}

// Three actors edit concurrently and merge, so operations have several
// predecessors (a write over a conflict), and more than one actor.
function concurrent() {
  let a = A.from({ title: "t", items: ["1", "2", "3"], c: new A.Counter(0), body: "abc" }, { actor: "aa01" })
  let b = A.clone(a, { actor: "bb02" })
  let c = A.clone(a, { actor: "cc03" })
  a = A.change(a, { time: time(10) }, (x) => {
    x.title = "from a"
    x.items.push("4a")
    x.c.increment(1)
    A.splice(x, ["body"], 1, 0, "ä")
  })
  b = A.change(b, { time: time(11) }, (x) => {
    x.title = "from b"
    x.items.deleteAt(0)
    x.c.increment(2)
    A.splice(x, ["body"], 2, 1, "β")
  })
  c = A.change(c, { time: time(12) }, (x) => {
    x.title = "from c"
    x.items[1] = "two"
    x.c.increment(3)
    delete x.body
  })
  a = A.merge(a, b)
  a = A.merge(a, c)
  a = A.change(a, { time: time(13) }, (x) => {
    x.title = "resolved" // over three conflicting values
    x.items[0] = "first"
  })
  b = A.merge(b, a)
  b = A.change(b, { time: time(14) }, (x) => {
    delete x.title
    x.c.increment(10)
  })
  return A.merge(a, b)
}

// Many small random edits, then one large change (compressed on export).
function random() {
  const r = rng(2024)
  let d = A.from({ m: {}, l: [], t: "" }, { actor: "dd04" })
  const words = ["a", "é", "🙂", "xyz", "ü", "long word here"]
  for (let i = 0; i < 40; i++) {
    d = A.change(d, { time: time(100 + i) }, (x) => {
      const k = `k${Math.floor(r() * 6)}`
      switch (Math.floor(r() * 7)) {
        case 0:
          x.m[k] = Math.floor(r() * 1000) - 500
          break
        case 1:
          x.m[k] = words[Math.floor(r() * words.length)]
          break
        case 2:
          delete x.m[k]
          break
        case 3:
          x.l.insertAt(Math.floor(r() * (x.l.length + 1)), r())
          break
        case 4:
          if (x.l.length > 0) x.l.deleteAt(Math.floor(r() * x.l.length))
          break
        case 5:
          A.splice(x, ["t"], Math.floor(r() * (x.t.length + 1)), 0, words[Math.floor(r() * words.length)])
          break
        case 6:
          if (x.t.length > 1) A.splice(x, ["t"], 0, 1)
          break
      }
    })
  }
  d = A.change(d, { message: "big", time: time(200) }, (x) => {
    for (let i = 0; i < 60; i++) x.m[`big${i}`] = `value number ${i} ${"é".repeat(i % 5)}`
    A.splice(x, ["t"], 0, 0, "a long run of inserted text ".repeat(10))
  })
  return d
}

write("values", values())
write("concurrent", concurrent())
write("random", random())
