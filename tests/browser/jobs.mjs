// The job queue example in Debian's Chromium (tests/examples.rs): two tabs
// share one connection; a job started in one shows and progresses in both;
// a cancel from the other reaches both; a failing job fails in both; a tab
// opened later starts from the snapshot.
//
// Usage: node jobs.mjs HUB_URL PAGE_URL
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { launch, until } from "./lib.mjs";

const [hub, pageUrl] = process.argv.slice(2);
const modules = join(dirname(fileURLToPath(import.meta.url)), "node_modules");

const browser = await launch();
try {
  const context = await browser.newContext({ viewport: { width: 900, height: 500 } });
  // The page loads htmx from its CDN; tests have no network.
  await context.route("https://unpkg.com/htmx.org@2.0.11/dist/htmx.min.js", (r) =>
    r.fulfill({ path: join(modules, "htmx.org/dist/htmx.min.js"), contentType: "text/javascript" }));
  const errors = [];
  const open = async () => {
    const p = await context.newPage();
    p.on("pageerror", (e) => errors.push(String(e)));
    await p.goto(pageUrl);
    await until("the tab to be open", async () => (await p.locator("#status").textContent()) === "open");
    return p;
  };
  const row = (p, name) => p.locator("#jobs tr", { hasText: name });
  const status = async (p, name) => (await row(p, name).count()) ? row(p, name).locator(".state").textContent() : null;

  const a = await open();
  const b = await open();
  if (!(await b.evaluate(() => window.herald.isFollower))) throw new Error("the second tab should share");
  const stats = await (await fetch(`${hub}/v1/stats`)).json();
  if (stats.connections !== 1) throw new Error(`expected one connection, got ${stats.connections}`);

  // Started in tab A: both tabs see it run to the end.
  await a.fill("input[name=name]", "build #1");
  await a.click("button:has-text('Start')");
  for (const p of [a, b]) await until("build #1 in both tabs", async () => (await status(p, "build #1")) !== null);
  await until("build #1 running", async () => (await status(b, "build #1")) === "running");
  for (const p of [a, b]) await until("build #1 done in both tabs", async () => (await status(p, "build #1")) === "done");

  // Started in tab B and cancelled from tab A.
  await b.fill("input[name=name]", "nightly export");
  await b.click("button:has-text('Start')");
  await until("the cancel button in tab A", async () => (await row(a, "nightly export").locator("button").count()) === 1);
  await row(a, "nightly export").locator("button").click();
  for (const p of [a, b])
    await until("cancelled in both tabs", async () => (await status(p, "nightly export")) === "cancelled");

  // A job that fails.
  await a.fill("input[name=name]", "fail on purpose");
  await a.click("button:has-text('Start')");
  for (const p of [a, b]) await until("failed in both tabs", async () => (await status(p, "fail on purpose")) === "failed");

  // A tab opened now starts from the current state.
  const c = await open();
  await until("the snapshot in a new tab", async () => (await c.locator("#jobs tr").count()) === 3);
  const finals = [];
  for (const name of ["build #1", "nightly export", "fail on purpose"]) finals.push(await status(c, name));
  if (JSON.stringify(finals) !== JSON.stringify(["done", "cancelled", "failed"]))
    throw new Error(`the new tab shows ${JSON.stringify(finals)}`);
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  if (process.env.SCREENSHOT) await c.screenshot({ path: process.env.SCREENSHOT });
  console.log("jobs test passed");
} finally {
  await browser.close();
}
