// herald-client in Debian's Chromium against hubs this script starts and
// restarts itself (tests/browser_client.rs): it resumes after the hub
// restarts without losing or repeating an event, and refreshes an expiring
// token and resumes.
//
// Usage: node client_hub.mjs HERALD_BINARY CLIENT_DIST_DIR
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, launch, serveDist, until } from "./lib.mjs";

const [binary, dist] = process.argv.slice(2);
const SECRET = "browser-client-secret-long-enough-01234567";
const API_KEY = "browser-client-api-key";

class Hub {
  constructor(settings) {
    this.settings = settings;
    this.dir = mkdtempSync(join(tmpdir(), "herald-browser-"));
  }
  async start() {
    this.port ??= await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    const args = ["serve", "--log", "warn", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dir];
    for (const s of this.settings) args.push("--set", s);
    this.child = spawn(binary, args, { stdio: ["ignore", "ignore", "inherit"] });
    await until("the hub", async () => {
      try {
        return (await fetch(`${this.url}/healthz`)).ok;
      } catch {
        return false;
      }
    });
  }
  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    await new Promise((r) => {
      this.child.once("exit", r);
      this.child.kill("SIGTERM");
    });
  }
  async publish(body, key) {
    const headers = { "content-type": "application/json" };
    if (key) headers.authorization = `Bearer ${key}`;
    const r = await fetch(`${this.url}/v1/publish`, { method: "POST", headers, body: JSON.stringify(body) });
    if (!r.ok) throw new Error(`publish: ${r.status} ${await r.text()}`);
  }
  async connections(key) {
    const headers = key ? { authorization: `Bearer ${key}` } : {};
    return (await (await fetch(`${this.url}/v1/stats`, { headers })).json()).connections;
  }
}

function token(sub, lifetimeSecs) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const claims = { sub, "herald.subscribe": ["news"], exp: Math.floor(Date.now() / 1000) + lifetimeSecs };
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
}

// The page's origin: serves the client and hands out tokens, the first one
// living two seconds.
let tokensIssued = 0;
const page = (hub, withToken) => `<!doctype html><meta charset="utf-8"><script type="module">
  import { HeraldClient } from "/dist/index.js";
  window.got = [];
  window.expired = 0;
  const client = new HeraldClient(${JSON.stringify(hub)}, {
    topics: ["news"],
    backoff: { initialMs: 1500, maxMs: 1500 },
    random: () => 1,
    shareAcrossTabs: false,
    ${withToken ? 'getToken: () => fetch("/token").then((r) => r.text()),' : ""}
  });
  client.on("message", (e) => { window.got.push(e.data); });
  client.on("herald.token_expired", () => { window.expired += 1; });
  window.client = client;
</script>`;
const hubs = {};
const server = createServer(async (req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/token") {
    tokensIssued += 1;
    res.writeHead(200, { "content-type": "text/plain" });
    return res.end(token("ann", tokensIssued === 1 ? 2 : 3600));
  }
  if (url.pathname === "/page") {
    const hub = hubs[url.searchParams.get("hub")];
    res.writeHead(200, { "content-type": "text/html" });
    return res.end(page(hub.url, url.searchParams.get("hub") === "auth"));
  }
  if (await serveDist(res, dist, url.pathname)) return;
  res.writeHead(404);
  res.end();
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

hubs.plain = new Hub([`cors.allowed_origins=["${origin}"]`]);
hubs.auth = new Hub([
  `cors.allowed_origins=["${origin}"]`,
  `auth.jwt_secret="${SECRET}"`,
  `auth.api_keys=["${API_KEY}"]`,
  "auth.leeway_secs=0",
]);
const browser = await launch();
try {
  await hubs.plain.start();
  await hubs.auth.start();
  const errors = [];
  const open = async (hub) => {
    const p = await browser.newPage();
    p.on("pageerror", (e) => errors.push(String(e)));
    await p.goto(`${origin}/page?hub=${hub}`);
    await until("the client to be open", () => p.evaluate(() => window.client?.status === "open"));
    return p;
  };
  const got = (p) => p.evaluate(() => window.got.slice());

  // The hub restarts: the page resumes from its Last-Event-ID.
  const a = await open("plain");
  await hubs.plain.publish({ topic: "news", data: "one" });
  await until("one", async () => (await got(a)).length === 1);
  await hubs.plain.stop();
  await hubs.plain.start();
  // While the page waits out its 1.5 s backoff: only a resume brings these.
  await hubs.plain.publish({ topic: "news", data: "two" });
  await hubs.plain.publish({ topic: "news", data: "three" });
  if ((await hubs.plain.connections()) !== 0) throw new Error("the page reconnected before the publishes");
  await until("the missed events", async () => (await got(a)).length >= 3);
  await hubs.plain.publish({ topic: "news", data: "four" });
  await until("four", async () => (await got(a)).length >= 4);
  if (JSON.stringify(await got(a)) !== JSON.stringify(["one", "two", "three", "four"]))
    throw new Error(`after the restart the page has ${JSON.stringify(await got(a))}`);

  // The token expires: the stream ends with herald.token_expired, the
  // client fetches a new token and resumes.
  const b = await open("auth");
  await hubs.auth.publish({ topic: "news", data: "before" }, API_KEY);
  await until("herald.token_expired", () => b.evaluate(() => window.expired === 1), 10000);
  await hubs.auth.publish({ topic: "news", data: "after" }, API_KEY);
  await until("after", async () => (await got(b)).length === 2);
  if (JSON.stringify(await got(b)) !== JSON.stringify(["before", "after"]))
    throw new Error(`around the expiry the page has ${JSON.stringify(await got(b))}`);
  if (tokensIssued !== 2) throw new Error(`expected 2 tokens, issued ${tokensIssued}`);
  await until("one connection", async () => (await hubs.auth.connections(API_KEY)) === 1);
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log("client hub test passed");
} finally {
  await browser.close();
  server.close();
  for (const h of Object.values(hubs)) {
    await h.stop();
    rmSync(h.dir, { recursive: true, force: true });
  }
}
