// The example page in headless Chromium (Debian's, never a downloaded
// browser), against Ferry's relay and a Go replica. Run by the Go test
// TestBrowserPage, which serves the page and passes addresses in the
// environment.
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { setTimeout as sleep } from "node:timers/promises"
import { chromium } from "playwright-core"

const PAGE = process.env.FERRY_PAGE_URL
const CONTROL = process.env.FERRY_CONTROL
const SHOT = process.env.FERRY_SCREENSHOT // optional: where to save a picture
if (!PAGE || !CONTROL) throw new Error("run through go test ./examples/webtodo")

async function control(method, path, params = {}) {
  const res = await fetch(`${CONTROL}${path}?${new URLSearchParams(params)}`, { method })
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`)
  return res.json()
}

async function eventually(what, check, ms = 20000) {
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
    await sleep(100)
  }
}

const profile = mkdtempSync(join(tmpdir(), "ferry-chromium-"))
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
})
after(async () => {
  await browser.close()
  rmSync(profile, { recursive: true, force: true })
})

const titles = page => page.$$eval("#tasks li .title", els => els.map(e => e.textContent))

test("the page syncs with a Go replica and keeps working offline", async () => {
  const page = await browser.newPage()
  // Console errors are shown, without the credentials a failed WebSocket
  // URL carries.
  page.on("console", m => m.type() === "error" && console.log("page:", m.text().replace(/(api_key|token)=[^&\s']+/g, "$1=REDACTED")))
  await page.goto(PAGE)
  await page.waitForSelector("#status:has-text('task(s)')")
  await page.waitForSelector("#connection[data-state='connected']")

  // An item added on the page reaches the Go replica, and the page says
  // so: the relay said it has the task's changes.
  await page.fill("#title", "from the page")
  await page.click("#add button")
  const got = await eventually("Go to see the page's task", async () => {
    const r = await control("GET", "/find", { title: "from the page" })
    return r.found && r
  })
  assert.equal(got.done, false)
  await page.waitForSelector("#tasks li:not(.pending):has-text('from the page')")

  // A Go edit shows on the page: a new task, and the page's task done.
  await control("POST", "/put", { id: got.id, title: "from the page", done: "true" })
  await control("POST", "/put", { id: "01900000-0000-7000-8000-000000000001", title: "from go", done: "false" })
  await page.waitForSelector("#tasks li:has-text('from go')")
  await eventually("the page to show the task done", () =>
    page.$eval(`#tasks li[data-id] input:checked`, () => true).catch(() => false))
  // Presence: the page and a Go device see each other in the list's room.
  const room = "0193a000-0000-7000-8000-000000000001"
  await control("POST", "/presence/set", { id: room, user: "go-device" })
  await page.waitForSelector("#here:has-text('go-device')")
  const me = await page.evaluate(() => window.ferryTodo.me)
  await eventually("the Go device to see the page", async () =>
    Object.values(await control("GET", "/presence/peers", { id: room })).some(s => s.user === me))
  if (SHOT) await page.screenshot({ path: SHOT })

  // With the relay stopped, a reload shows the tasks from IndexedDB, and
  // the page still takes edits.
  // automerge-repo writes to IndexedDB a moment after each change; flush
  // so the reload finds everything (the page also flushes on pagehide,
  // best effort).
  await page.evaluate(() => window.ferryTodo.repo.flush())
  await control("POST", "/relay/stop")
  await page.reload()
  await eventually("the tasks after reload", async () => (await titles(page)).length === 2)
  assert.deepEqual((await titles(page)).sort(), ["from go", "from the page"])
  // The page says it is offline, and why; the tasks the relay has are not
  // shown as missing from it, and one added now is.
  await page.waitForSelector("#connection[data-state='offline']:has-text('does not answer')")
  assert.equal(await page.$$eval("#tasks li.pending", els => els.length), 0)
  await page.fill("#title", "added offline")
  await page.click("#add button")
  await page.waitForSelector("#tasks li.pending:has-text('added offline') .note:has-text('not on the relay yet')")
  await page.waitForSelector("#status:has-text('1 with changes not on the relay yet')")

  // Once the relay is back, the page catches up and says so.
  await control("POST", "/relay/start")
  await page.waitForSelector("#connection[data-state='connected']")
  await eventually("Go to see the offline task", async () => (await control("GET", "/find", { title: "added offline" })).found)
  await page.waitForSelector("#tasks li:not(.pending):has-text('added offline')")
  assert.equal(await page.$$eval("#tasks li.pending", els => els.length), 0)
  await page.close()
})

test("a page from an origin the relay does not allow says it is refused, and why", async () => {
  const page = await browser.newPage()
  // The relay allows the page's address as 127.0.0.1:PORT only.
  await page.goto(PAGE.replace("127.0.0.1", "localhost"))
  await page.waitForSelector("#connection[data-state='refused']:has-text('is not allowed to connect')")
  await page.close()
})

test("a page whose token the relay refuses says so, and why", async () => {
  const badToken = on => fetch(new URL(`test/bad-token?on=${on}`, PAGE), { method: "POST" })
  await badToken(1)
  try {
    const page = await browser.newPage()
    await page.goto(PAGE)
    await page.waitForSelector("#connection[data-state='refused']:has-text('token is malformed')")
    await page.close()
  } finally {
    await badToken(0)
  }
})
