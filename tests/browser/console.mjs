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
const text = (id) => `document.getElementById(${JSON.stringify(id)}).textContent`;
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.setDefaultTimeout(15000);

  await page.goto(base + "/console/");
  await page.waitForFunction(`${text("status")}.startsWith("live")`);
  const publishedBefore = Number(await page.textContent("#published"));

  await page.fill("#watch-pattern", "demo/*");
  await page.click("#watch");
  await page.waitForFunction(`${text("watch-status")} === "watching demo/*"`);
  // The inspector's own stream shows in the counts and the topic list.
  await page.waitForFunction(`Number(${text("connections")}) >= 1`);
  await page.waitForFunction(`${text("topics")}.includes("demo/*")`);

  const marker = "from-the-api-" + Date.now();
  const res = await fetch(base + "/v1/publish", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ topic: "demo/x", event: "progress", data: { marker } }),
  });
  if (!res.ok) throw new Error("publish failed: " + res.status);
  await page.waitForFunction(`${text("events")}.includes(${JSON.stringify(marker)})`);
  const shown = await page.textContent("#events li");
  if (!shown.includes("progress")) throw new Error("the event type is not shown: " + shown);

  await page.fill("#pub-topic", "demo/y");
  await page.fill("#pub-data", "typed into the form");
  await page.click("#publish");
  await page.waitForFunction(`${text("publish-status")}.startsWith("published #")`);
  await page.waitForFunction(`${text("events")}.includes("typed into the form")`);
  await page.waitForFunction(`Number(${text("published")}) >= ${publishedBefore + 2}`);

  if (errors.length) throw new Error("errors in the page: " + errors.join("; "));
  console.log("console test passed");
} finally {
  await browser.close();
}
