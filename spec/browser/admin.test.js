// The admin page in a real browser (Debian's chromium, driven by
// playwright-core) against two real pksync sites on loopback. Run by
// spec/browser_spec.lua, which starts the sites and passes them here:
//   A_ADMIN, B_ADMIN  the admin pages' URLs      B_URL  site B's URL
//   PASSWORD          both sites' admin password  SHOTS  screenshot directory
//   PLAYWRIGHT_CORE   the playwright-core module   CHROMIUM  the browser
// Prints one "ok - step" line per step; exits non-zero at the first failure.
"use strict";
const path = require("path");
const fs = require("fs");
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const env = (k) => { if (!process.env[k]) throw new Error("missing " + k); return process.env[k]; };
const A_ADMIN = env("A_ADMIN"), B_ADMIN = env("B_ADMIN"), B_URL = env("B_URL");
const PASSWORD = env("PASSWORD"), SHOTS = env("SHOTS");
const TIMEOUT = 20000;

function check(cond, what) { if (!cond) throw new Error("check failed: " + what); }
function ok(step) { console.log("ok - " + step); }

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage: true });
}

/** A page that records every request, so the test can tell none left loopback. */
async function newPage(browser, width) {
  const context = await browser.newContext({ viewport: { width, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.requests = [];
  page.on("request", (r) => page.requests.push(r.url()));
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  return page;
}

async function login(page, url, byKeyboard) {
  await page.goto(url);
  await page.locator("#login-password").waitFor({ state: "visible" });
  if (byKeyboard) {
    // focus is in the password field on arrival; Enter submits the form
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press("Enter");
  } else {
    await page.getByLabel("Admin password").fill(PASSWORD);
    await page.getByRole("button", { name: "Log in" }).click();
  }
  await page.locator("#nav").waitFor({ state: "visible" });
  await page.getByRole("heading", { name: "Overview" }).waitFor();
}

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const args = process.getuid && process.getuid() === 0 ? ["--no-sandbox"] : [];
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args });
  try {
    await run(browser);
  } finally {
    await browser.close();
  }
}

async function run(browser) {
  const a = await newPage(browser, 1280);
  const b = await newPage(browser, 1280);

  // a wrong password is refused in words
  await a.goto(A_ADMIN);
  await a.getByLabel("Admin password").fill("not the password");
  await a.getByRole("button", { name: "Log in" }).click();
  await a.locator("#notice.error", { hasText: "Wrong password." }).waitFor();
  ok("a wrong password is refused in words");

  await login(a, A_ADMIN, false);
  check(await a.locator("#password-state").textContent() === "not set", "incoming password state shown");
  await shot(a, "overview");
  ok("logged in on site A; overview shown");

  // set the incoming password on the overview, then clear it again
  await a.getByLabel("New incoming password").fill("incoming secret");
  await a.getByRole("button", { name: "Save settings" }).click();
  await a.locator("#password-state", { hasText: /^set$/ }).waitFor();
  await a.getByRole("button", { name: "Clear the incoming password" }).click();
  await a.locator("#password-state", { hasText: "not set" }).waitFor();
  ok("set and cleared the incoming password on the overview");

  // create a sender connection to B
  await a.getByRole("link", { name: "Connections" }).click();
  await a.getByRole("heading", { name: "New sender connection" }).waitFor();
  await a.getByLabel("Name", { exact: true }).fill("Shop to B");
  await a.getByLabel("Receiving site's URL").fill(B_URL);
  await a.getByLabel("Allowed tables").fill("customers, orders, products, order_items");
  await a.getByLabel("Requests per minute").fill("0");
  await a.getByLabel("Default strategy").selectOption("overwrite");
  await a.getByRole("button", { name: "Create sender connection" }).click();
  const token = (await a.locator("#raw-token").textContent()).trim();
  check(/^[A-Za-z0-9_-]{43}$/.test(token), "the raw token is shown once: " + token);
  check(await a.locator("#copy-token").isVisible(), "a copy button beside the token");
  const answer = await a.locator("#peer-answer").textContent();
  check(answer.startsWith("Registered on the other site: "), "the peer's answer is shown: " + answer);
  const row = a.locator("#connections tr", { hasText: "Shop to B" });
  await row.getByText("pending").waitFor();
  const tokenCell = (await row.locator("code").textContent()).replace("…", "");
  check(tokenCell.length === 8, "the hash is cut to 8 characters: " + tokenCell);
  await shot(a, "connections");
  ok("created a sender connection to site B; token shown once, hash cut to 8 characters");

  // reload: the token is gone for good
  await a.reload();
  await a.getByRole("heading", { name: "Connections" }).waitFor();
  check(!(await a.content()).includes(token), "the token is not shown again");
  ok("the raw token is not shown again after a reload");

  // approve it on B (logged in with the keyboard only)
  await login(b, B_ADMIN, true);
  await b.getByRole("link", { name: "Connections" }).click();
  const brow = b.locator("#connections tr", { hasText: "Shop to B" });
  await brow.getByText("pending").waitFor();
  await brow.getByRole("button", { name: /^Approve/ }).click();
  await b.locator("#confirm").waitFor({ state: "visible" });
  await b.locator("#confirm-ok").click();
  await b.locator("#connections tr", { hasText: "Shop to B" }).getByText("active").waitFor();
  check((await b.locator("#peer-answer").textContent()).includes("nothing to tell"), "the peer's answer after approve");
  ok("approved the connection on site B, with a confirmation");

  // a live check of the remote side, from B
  await b.locator("#connections tr", { hasText: "Shop to B" }).getByRole("button", { name: /^Check/ }).click();
  await b.locator("#check-result", { hasText: "sync enabled" }).waitFor();
  ok("a live check of the sender from site B");

  // the sync page: pick orders, its parent customers comes along
  await b.locator("#connections tr", { hasText: "Shop to B" }).getByRole("link", { name: "Sync…" }).click();
  await b.locator("#sync-tables").waitFor();
  const state = await b.locator("#sync-tables tr[data-table=orders]").locator(".status").textContent();
  check(state === "differs", "orders differs locally before the sync: " + state);
  await b.getByLabel("orders", { exact: true }).check();
  check(await b.getByLabel("customers", { exact: true }).isChecked(), "customers added as the parent of orders");
  await b.locator("#parents-note", { hasText: "customers" }).waitFor();
  await b.getByLabel("Strategy for orders").selectOption("merge");
  await shot(b, "sync-choose");
  ok("sync page: sender's tables beside ours; choosing orders added customers");

  // a dry run first: it reports and writes nothing
  await b.getByRole("button", { name: "Dry run" }).click();
  await b.locator("#report", { hasText: "nothing was written" }).waitFor();
  ok("dry run reported what would change");

  await b.getByRole("button", { name: "Run sync" }).click();
  await b.locator("#report h3", { hasText: /^Report$/ }).waitFor({ timeout: 60000 });
  const done = await b.locator("#progress tbody tr").evaluateAll((rows) =>
    rows.map((r) => [r.dataset.table, r.dataset.done, r.querySelector("progress").value]));
  check(done.length === 2, "two progress rows: " + JSON.stringify(done));
  for (const [name, d, v] of done) check(d === "true" && v === 100, name + " reached the end: " + d + " " + v);
  const report = await b.locator("#report").textContent();
  check(report.includes("orders") && report.includes("customers") && report.includes("2,000"), "report totals: " + report);
  await b.locator("#sync-tables tr[data-table=orders] .status", { hasText: "unchanged" }).waitFor();
  await shot(b, "sync");
  ok("ran the sync: per-table progress reached the end and the report appeared");

  // schedule: the receiver connection with its auto-sync state
  await b.getByRole("link", { name: "Schedule" }).click();
  await b.locator("#schedule tr", { hasText: "From: Shop to B" }).waitFor();
  const sched = await b.locator("#schedule").textContent();
  check(sched.includes("never run") && sched.includes("off"), "schedule row: " + sched);
  await shot(b, "schedule");
  ok("the schedule page lists the receiver connection");

  // history: find the transfer, open its detail
  await b.getByRole("link", { name: "History" }).click();
  await b.locator("#transfers").waitFor();
  await b.getByLabel("Direction").selectOption("receive");
  await b.locator("#transfers tr", { hasText: "orders" }).first().waitFor();
  await b.getByLabel("Connection").selectOption({ label: "From: Shop to B" });
  const link = b.locator("#transfers a", { hasText: /^orders$/ }).first();
  await link.waitFor();
  await shot(b, "history");
  await link.click();
  await b.getByRole("heading", { name: "Transfer of orders" }).waitFor();
  const facts = await b.locator("#transfer-facts").textContent();
  check(facts.includes("1,500") && facts.includes("completed"), "transfer detail: " + facts);
  check(!(await b.locator("#page").textContent()).includes("null"), "no stray null on the detail page");
  await shot(b, "transfer");
  ok("found the transfer in the history and opened its detail");

  // readable on a phone: nothing wider than the screen
  const phone = await newPage(browser, 390);
  await login(phone, B_ADMIN, false);
  for (const [hash, name] of [["#/connections", "connections-390"], ["#/schedule", "schedule-390"], ["#/history", "history-390"]]) {
    await phone.goto(B_ADMIN + hash);
    await phone.locator("table.stack").first().waitFor();
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 390, name + " fits 390 px: " + width);
    await shot(phone, name);
  }
  ok("connections, schedule and history fit a 390 px screen");

  // log out and be refused
  await b.getByRole("button", { name: "Log out" }).click();
  await b.locator("#login-password").waitFor({ state: "visible" });
  await b.locator("#notice", { hasText: "Logged out." }).waitFor();
  const status = await b.evaluate(async () => (await fetch("api/overview")).status);
  check(status === 401, "the API refuses after logout: " + status);
  await b.goto(B_ADMIN + "#/history");
  await b.locator("#login-password").waitFor({ state: "visible" });
  check(!(await b.locator("#nav").isVisible()), "no navigation without a session");
  ok("logged out on site B; the page and the API refuse");

  for (const p of [a, b, phone]) {
    const away = p.requests.filter((u) => !/^http:\/\/127\.0\.0\.1:\d+\//.test(u));
    check(away.length === 0, "every request stayed on loopback: " + away.join(" "));
    check(p.errors.length === 0, "no script errors: " + p.errors.join("; "));
  }
  ok("no request left loopback (no CDN, no web fonts), no script errors");
}

main().then(() => process.exit(0), (e) => {
  console.log("not ok - " + (e && e.stack || e));
  process.exit(1);
});
