// The web console in a real browser: counts move, an event published
// through the API appears in the inspector, the page's own form publishes.
// Usage: node console.mjs http://127.0.0.1:PORT
import { chromium } from "playwright-core";

const base = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // The page runs under its Content-Security-Policy: anything it refuses
  // is a failure.
  page.on("console", (m) => {
    if (m.type() === "error" && m.text().includes("Content Security Policy")) errors.push(m.text());
  });
  page.setDefaultTimeout(15000);
  // Waits until the text of #id passes `ok`, read from outside the page
  // (the policy forbids evaluating strings in it).
  const until = async (id, ok) => {
    const deadline = Date.now() + 15000;
    for (;;) {
      const t = await page.textContent("#" + id);
      if (ok(t)) return;
      if (Date.now() > deadline) throw new Error(`#${id} never matched; it reads ${JSON.stringify(t)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  await page.goto(base + "/console/");
  await until("status", (t) => t.startsWith("live"));
  const publishedBefore = Number(await page.textContent("#published"));

  await page.fill("#watch-pattern", "demo/*");
  await page.click("#watch");
  await until("watch-status", (t) => t === "watching demo/*");
  // The inspector's own stream shows in the counts and the topic list.
  await until("connections", (t) => Number(t) >= 1);
  await until("topics", (t) => t.includes("demo/*"));

  const marker = "from-the-api-" + Date.now();
  const res = await fetch(base + "/v1/publish", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ topic: "demo/x", event: "progress", data: { marker } }),
  });
  if (!res.ok) throw new Error("publish failed: " + res.status);
  await until("events", (t) => t.includes(marker));
  const shown = await page.textContent("#events li");
  if (!shown.includes("progress")) throw new Error("the event type is not shown: " + shown);

  await page.fill("#pub-topic", "demo/y");
  await page.fill("#pub-data", "typed into the form");
  await page.click("#publish");
  await until("publish-status", (t) => t.startsWith("published #"));
  await until("events", (t) => t.includes("typed into the form"));
  await until("published", (t) => Number(t) >= publishedBefore + 2);

  if (errors.length) throw new Error("errors in the page: " + errors.join("; "));
  console.log("console test passed");
} finally {
  await browser.close();
}
