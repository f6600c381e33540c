// herald-client in Debian's Chromium (tests/browser_client.rs): two tabs
// share one connection, the second takes over when the first closes, and
// nothing is lost or doubled on the way.
//
// Usage: node client.mjs HUB_URL CLIENT_DIST_DIR
import { createServer } from "node:http";
import { launch, serveDist, until } from "./lib.mjs";

const [hub, dist] = process.argv.slice(2);
const page = `<!doctype html><meta charset="utf-8"><title>client test</title>
<script type="module">
  import { HeraldClient } from "/dist/index.js";
  window.got = [];
  window.statuses = [];
  const transport = new URLSearchParams(location.search).get("transport") ?? "auto";
  const client = new HeraldClient(${JSON.stringify(hub)}, {
    topics: ["news"],
    backoff: { initialMs: 300, maxMs: 300 },
    random: () => 1,
    transport,
    shareAcrossTabs: transport === "auto",
  });
  client.on("message", (e) => { window.got.push(e.data); });
  client.onStatus((s) => window.statuses.push(s));
  window.client = client;
</script>`;

const server = createServer(async (req, res) => {
  if (req.url === "/" || req.url.startsWith("/?")) {
    res.writeHead(200, { "content-type": "text/html" });
    return res.end(page);
  }
  if (await serveDist(res, dist, req.url)) return;
  res.writeHead(404);
  res.end();
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

const stats = async () => (await fetch(`${hub}/v1/stats`)).json();
async function publish(data) {
  const r = await fetch(`${hub}/v1/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: "news", data }),
  });
  if (!r.ok) throw new Error(`publish: ${r.status} ${await r.text()}`);
}
const got = (p) => p.evaluate(() => window.got.slice());

const browser = await launch();
try {
  const context = await browser.newContext();
  const errors = [];
  const open = async (query = "") => {
    const p = await context.newPage();
    p.on("pageerror", (e) => errors.push(String(e)));
    await p.goto(`${origin}/${query}`);
    await until("the client to be open", () => p.evaluate(() => window.client?.status === "open"));
    return p;
  };
  const first = await open();
  const second = await open();
  if (await first.evaluate(() => window.client.isFollower)) throw new Error("the first tab should lead");
  if (!(await second.evaluate(() => window.client.isFollower))) throw new Error("the second tab should follow");
  // One connection for both tabs.
  await until("one connection at the hub", async () => (await stats()).connections === 1);
  const s = await stats();
  if (s.connections !== 1) throw new Error(`expected one connection, got ${s.connections}`);

  await publish("one");
  await until("both tabs to get one", async () =>
    (await got(first)).length === 1 && (await got(second)).length === 1);

  // The leader goes; the follower takes over and resumes where it stood.
  await first.close();
  await publish("two");
  await until("the second tab to lead", () => second.evaluate(() => !window.client.isFollower));
  await until("the new connection", async () => (await stats()).connections === 1);
  await publish("three");
  await until("all three in the second tab", async () => (await got(second)).length >= 3);
  const all = await got(second);
  if (JSON.stringify(all) !== JSON.stringify(["one", "two", "three"]))
    throw new Error(`second tab got ${JSON.stringify(all)}`);

  // Native EventSource as the transport: named events, and a reconnect
  // (the hub drops the stream) resumes from its last id.
  const es = await open("?transport=eventsource");
  await until("two connections", async () => (await stats()).connections === 2);
  await publish("four");
  await until("the EventSource tab to get four", async () => (await got(es)).length === 1);
  const esId = await es.evaluate(() => window.client.connectionId);
  const drop = await fetch(`${hub}/v1/connections/${esId}`, { method: "DELETE" });
  if (!drop.ok) throw new Error(`drop: ${drop.status}`);
  await publish("five");
  await until("five after the reconnect", async () => (await got(es)).length >= 2);
  await until("a new EventSource connection", () =>
    es.evaluate((old) => window.client.status === "open" && window.client.connectionId !== old, esId));
  await publish("six");
  await until("six", async () => (await got(es)).length >= 3);
  const esGot = await got(es);
  if (JSON.stringify(esGot) !== JSON.stringify(["four", "five", "six"]))
    throw new Error(`EventSource tab got ${JSON.stringify(esGot)}`);
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log("client test passed");
} finally {
  await browser.close();
  server.close();
}
