// examples/htmx-feed/index.html in Debian's Chromium (tests/htmx.rs): stock
// htmx-ext-sse against Herald unchanged swaps the HTML fragments published.
//
// Usage: node htmx.mjs HUB_URL PAGE_FILE PAGE_PORT
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { launch, until } from "./lib.mjs";

const [hub, pageFile, pagePort] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
// The page as users get it, with the CDN scripts served from node_modules
// (tests run without network).
const page = (await readFile(pageFile, "utf8"))
  .replaceAll("{{HUB}}", hub)
  .replace("https://unpkg.com/htmx.org@2.0.11/dist/htmx.min.js", "/htmx.min.js")
  .replace("https://unpkg.com/htmx-ext-sse@2.2.4/dist/sse.js", "/sse.js");
if (!page.includes('src="/htmx.min.js"') || !page.includes('src="/sse.js"'))
  throw new Error("the page no longer loads the pinned htmx versions");
const files = {
  "/htmx.min.js": join(here, "node_modules/htmx.org/dist/htmx.min.js"),
  "/sse.js": join(here, "node_modules/htmx-ext-sse/dist/sse.js"),
};
const server = createServer(async (req, res) => {
  if (req.url === "/") {
    res.writeHead(200, { "content-type": "text/html" });
    return res.end(page);
  }
  if (files[req.url]) {
    res.writeHead(200, { "content-type": "text/javascript" });
    return res.end(await readFile(files[req.url]));
  }
  res.writeHead(404);
  res.end();
});
await new Promise((r) => server.listen(Number(pagePort), "127.0.0.1", r));

async function publish(event, data) {
  const r = await fetch(`${hub}/v1/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: "feed", event, data }),
  });
  if (!r.ok) throw new Error(`publish: ${r.status} ${await r.text()}`);
}

const browser = await launch();
try {
  const p = await browser.newPage();
  const errors = [];
  p.on("pageerror", (e) => errors.push(String(e)));
  await p.goto(`http://127.0.0.1:${server.address().port}/`);
  await until("the page's stream", async () => (await (await fetch(`${hub}/v1/stats`)).json()).connections === 1);
  // A fragment over several data: lines arrives whole.
  await publish("item", "<li class=\"item\">\n  <b>first</b>\n</li>");
  await publish("status", "1 item");
  await until("the first item", async () => (await p.locator("#feed li").count()) === 1);
  await publish("item", "<li class=\"item\"><b>second</b></li>");
  await until("the second item", async () => (await p.locator("#feed li").count()) === 2);
  const items = await p.locator("#feed li b").allTextContents();
  if (JSON.stringify(items) !== JSON.stringify(["second", "first"]))
    throw new Error(`feed reads ${JSON.stringify(items)}; afterbegin puts the newest first`);
  await until("the status swap", async () => (await p.locator("#status").textContent()) === "1 item");
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log("htmx test passed");
} finally {
  await browser.close();
  server.close();
}
