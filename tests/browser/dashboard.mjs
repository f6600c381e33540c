// The dashboard example in Debian's Chromium (tests/examples.rs): a
// scripted journey. The page connects, every chart fills, an alert shows,
// and when the hub drops the stream the page reconnects and goes on.
//
// Usage: node dashboard.mjs HUB_URL PAGE_URL
import { launch, until } from "./lib.mjs";

const [hub, pageUrl] = process.argv.slice(2);

const browser = await launch();
try {
  const p = await browser.newPage({ viewport: { width: 1000, height: 600 } });
  const errors = [];
  p.on("pageerror", (e) => errors.push(String(e)));
  await p.goto(pageUrl);
  const status = () => p.locator("#status").textContent();
  await until("the stream to open", async () => (await status()) === "open");
  for (const metric of ["cpu", "requests", "orders"]) {
    await until(`a ${metric} value`, async () =>
      /\d/.test(await p.locator(`[data-metric="${metric}"] .value`).textContent()));
  }
  await until("charts with history", () => p.evaluate(() => window.dashboard.samples >= 60));

  const r = await fetch(`${hub}/v1/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: "alerts", event: "alert", data: { level: "critical", text: "disk full on db-1" } }),
  });
  if (!r.ok) throw new Error(`publish: ${r.status}`);
  await until("the alert", async () => (await p.locator("#alerts").textContent()).includes("critical: disk full on db-1"));

  // The hub drops the page's stream: it reconnects by itself and goes on.
  const id = await p.evaluate(() => window.dashboardClient?.connectionId ?? null);
  const stats = await (await fetch(`${hub}/v1/stats`)).json();
  if (stats.connections !== 1) throw new Error(`expected one stream, got ${stats.connections}`);
  const users = await (await fetch(`${hub}/v1/presence/metrics/cpu`)).json();
  if (users.connections !== 1) throw new Error(`expected one stream on metrics/cpu: ${JSON.stringify(users)}`);
  const drop = await fetch(`${hub}/v1/connections/${id}`, { method: "DELETE" });
  if (!drop.ok) throw new Error(`drop: ${drop.status}`);
  const before = await p.evaluate(() => window.dashboard.samples);
  await until("a new stream", async () =>
    (await p.evaluate(() => window.dashboardClient.connectionId)) !== id && (await status()) === "open");
  await until("samples after the reconnect", () => p.evaluate((n) => window.dashboard.samples > n + 20, before));
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  if (process.env.SCREENSHOT) await p.screenshot({ path: process.env.SCREENSHOT });
  console.log("dashboard test passed");
} finally {
  await browser.close();
}
