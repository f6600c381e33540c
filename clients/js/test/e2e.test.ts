// The client against a real hub: E2E_HERALD_BIN names the `herald` binary
// (not HERALD_*: the hub reads those as settings)
// (tests/js_client.rs sets it; without it these tests are skipped).
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { HeraldClient, type HeraldEvent } from "../src/index.js";

const BIN = process.env.E2E_HERALD_BIN;
const SECRET = "client-e2e-secret-long-enough-0123456789";
const API_KEY = "client-e2e-api-key";

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

class Hub {
  child: ChildProcess | undefined;
  constructor(
    readonly port: number,
    readonly dataDir: string,
    readonly settings: string[],
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const args = ["serve", "--log", process.env.E2E_LOG ?? "warn", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir];
    for (const s of this.settings) args.push("--set", s);
    this.child = spawn(BIN!, args, { stdio: ["ignore", "ignore", "inherit"] });
    for (let i = 0; i < 500; i++) {
      try {
        if ((await fetch(`${this.url}/healthz`)).ok) return;
      } catch {
        // not up yet
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error("hub did not start");
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    await new Promise((r) => {
      child.once("exit", r);
      child.kill("SIGTERM");
    });
  }

  async publish(body: unknown, key?: string): Promise<string> {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    const r = await fetch(`${this.url}/v1/publish`, { method: "POST", headers, body: JSON.stringify(body) });
    const answer = await r.json();
    if (!r.ok) throw new Error(JSON.stringify(answer));
    return answer.id;
  }

  async admin(path: string, init: RequestInit = {}): Promise<any> {
    const r = await fetch(`${this.url}${path}`, {
      ...init,
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    });
    return r.json();
  }
}

function token(claims: Record<string, unknown>, lifetimeSecs = 3600): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = { ...claims, exp: Math.floor(Date.now() / 1000) + lifetimeSecs };
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(body)}`;
  const sig = createHmac("sha256", SECRET).update(unsigned).digest("base64url");
  return `${unsigned}.${sig}`;
}

/** Resolves when `cond` holds: checked on every event of the client, and
 * every 20 ms for what changes between events (handlers still running). */
function until(client: HeraldClient, cond: () => boolean, what: string, ms = 15000): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      clearInterval(poll);
      off();
      offState();
    };
    const check = () => {
      if (cond()) {
        done();
        resolve();
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out waiting for ${what}`));
    }, ms);
    const poll = setInterval(check, 20);
    const off = client.on("*", check);
    const offState = client.onState(check);
    check();
  });
}

const hubs: Hub[] = [];
const clients: HeraldClient[] = [];
const dirs: string[] = [];

async function hub(settings: string[] = []): Promise<Hub> {
  const dir = mkdtempSync(join(tmpdir(), "herald-client-e2e-"));
  dirs.push(dir);
  const h = new Hub(await freePort(), dir, settings);
  hubs.push(h);
  await h.start();
  return h;
}

function client(h: Hub, options: ConstructorParameters<typeof HeraldClient>[1]): HeraldClient {
  const c = new HeraldClient(h.url, options);
  clients.push(c);
  return c;
}

afterEach(async () => {
  clients.splice(0).forEach((c) => c.close());
  await Promise.all(hubs.splice(0).map((h) => h.stop()));
  dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true }));
});

const authed = [`auth.jwt_secret="${SECRET}"`, `auth.api_keys=["${API_KEY}"]`, "auth.leeway_secs=0"];

describe.skipIf(!BIN)("against a real hub", () => {
  it("resumes with Last-Event-ID after the hub restarts: nothing lost, nothing twice", async () => {
    const h = await hub();
    const got: string[] = [];
    const statuses: string[] = [];
    // Every reconnect waits the full 1.5 s, so the hub is back well before it.
    const c = client(h, { topics: ["jobs/*"], backoff: { initialMs: 1500, maxMs: 1500 }, random: () => 1 });
    c.on("progress", (e) => {
      got.push(e.data);
    });
    c.onStatus((s) => statuses.push(s));
    await until(c, () => c.status === "open", "the first connect");
    await h.publish({ topic: "jobs/1", event: "progress", data: "10" });
    await until(c, () => got.length === 1, "the first event");
    const firstConnection = c.connectionId;

    await h.stop();
    await h.start();
    // Published while the client waits out its backoff: only a resume from
    // its Last-Event-ID can bring these.
    await h.publish({ topic: "jobs/1", event: "progress", data: "20" });
    await h.publish({ topic: "jobs/2", event: "progress", data: "30" });
    expect((await (await fetch(`${h.url}/v1/stats`)).json()).connections).toBe(0);
    await until(c, () => got.length >= 3, "the missed events");
    await h.publish({ topic: "jobs/1", event: "progress", data: "40" });
    await until(c, () => got.length >= 4, "live events after the resume");
    expect(got).toEqual(["10", "20", "30", "40"]);
    expect(c.connectionId).not.toBe(firstConnection);
    expect(statuses).toContain("reconnecting");
  });

  it("long-polls when asked, with the same resume", async () => {
    const h = await hub();
    const got: string[] = [];
    const c = client(h, {
      topics: ["jobs/*"],
      transport: "poll",
      backoff: { initialMs: 1500, maxMs: 1500 },
      random: () => 1,
    });
    c.on("progress", (e) => {
      got.push(e.data);
    });
    await until(c, () => c.status === "open", "the first poll");
    await h.publish({ topic: "jobs/1", event: "progress", data: "10" });
    await until(c, () => got.length === 1, "the first event");
    await h.stop();
    await h.start();
    await h.publish({ topic: "jobs/1", event: "progress", data: "20" });
    await h.publish({ topic: "jobs/2", event: "progress", data: "30" });
    await until(c, () => got.length >= 3, "the missed events");
    await h.publish({ topic: "jobs/1", event: "progress", data: "40" });
    await until(c, () => got.length >= 4, "events after the resume");
    expect(got).toEqual(["10", "20", "30", "40"]);
    // Polls are not streams: the hub saw no SSE connection.
    expect(c.connectionId).toBeUndefined();
  });

  it("refreshes an expiring token and resumes without a gap", async () => {
    const h = await hub(authed);
    let calls = 0;
    const getToken = () => {
      calls += 1;
      // The first token lives 2 s; the hub ends the stream when it expires.
      return token({ sub: "ann", "herald.subscribe": ["news"] }, calls === 1 ? 2 : 3600);
    };
    const got: string[] = [];
    const expired: HeraldEvent[] = [];
    const c = client(h, { topics: ["news"], getToken, backoff: { initialMs: 50 } });
    c.on("message", (e) => {
      got.push(e.data);
    });
    c.on("herald.token_expired", (e) => {
      expired.push(e);
    });
    await until(c, () => c.status === "open", "the first connect");
    await h.publish({ topic: "news", data: "before" }, API_KEY);
    await until(c, () => expired.length === 1, "herald.token_expired", 10000);
    await h.publish({ topic: "news", data: "after" }, API_KEY);
    await until(c, () => got.length === 2, "the event after the refresh");
    expect(got).toEqual(["before", "after"]);
    expect(calls).toBe(2);
  });

  it("tries a fresh token once after a 401, and stops on a second refusal", async () => {
    const h = await hub(authed);
    const tokens = ["not-a-token", token({ sub: "bo", "herald.subscribe": ["t"] })];
    let calls = 0;
    const ok = client(h, { topics: ["t"], getToken: () => tokens[calls++] });
    await until(ok, () => ok.status === "open", "the connect with the second token");
    expect(calls).toBe(2);

    const errors: number[] = [];
    const refused = client(h, { topics: ["t"], getToken: () => "still-not-a-token" });
    refused.onError((e) => {
      if (e.status) errors.push(e.status);
    });
    await new Promise<void>((resolve) => refused.onStatus((s) => s === "closed" && resolve()));
    expect(errors).toEqual([401]);
  });

  it("keeps retained state from the snapshot and later patches", async () => {
    const h = await hub(authed);
    await h.admin("/v1/state/boards/1/score", { method: "PUT", body: JSON.stringify({ home: 0, away: 0 }) });
    const c = client(h, { topics: ["boards/1"], token: token({ sub: "cy", "herald.subscribe": ["boards/*"] }) });
    await until(c, () => c.state("boards/1").has("score"), "the snapshot");
    expect(c.state("boards/1").get("score")).toEqual({ version: 1, value: { home: 0, away: 0 } });
    await fetch(`${h.url}/v1/state/boards/1/score`, {
      method: "PATCH",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/merge-patch+json" },
      body: JSON.stringify({ home: 1 }),
    });
    await until(c, () => c.state("boards/1").get("score")?.version === 2, "the patch");
    expect(c.state("boards/1").get("score")?.value).toEqual({ home: 1, away: 0 });
  });

  it("fetches retained state again after herald.reset", async () => {
    const h = await hub(authed);
    await h.admin("/v1/state/boards/2/score", { method: "PUT", body: JSON.stringify({ home: 3 }) });
    const resets: HeraldEvent[] = [];
    // An id this hub never issued: the stream starts with herald.reset and
    // no snapshot, so only a fetch can fill the state.
    const c = client(h, {
      topics: ["boards/2"],
      token: token({ sub: "eve", "herald.subscribe": ["boards/*"] }),
      lastEventId: "12345",
    });
    c.on("herald.reset", (e) => {
      resets.push(e);
    });
    await until(c, () => resets.length === 1, "herald.reset");
    await until(c, () => c.state("boards/2").has("score"), "the state fetched again");
    expect(c.state("boards/2").get("score")).toEqual({ version: 1, value: { home: 3 } });
  });

  it("acknowledges the event types it is told to, once handlers return", async () => {
    const h = await hub(authed);
    const c = client(h, {
      topics: ["inbox/dee"],
      token: token({ sub: "dee", "herald.subscribe": ["inbox/*"] }),
      ackTypes: ["alert"],
    });
    const seen: string[] = [];
    c.on("alert", async (e) => {
      await new Promise((r) => setTimeout(r, 10));
      seen.push(e.data);
    });
    await until(c, () => c.status === "open", "the connect");
    await h.publish(
      { topic: "inbox/dee", event: "alert", data: "disk full", to: { users: ["dee"] }, require_ack: true },
      API_KEY,
    );
    await until(c, () => seen.length === 1, "the alert");
    for (let i = 0; i < 200; i++) {
      const user = await h.admin("/v1/users/dee");
      if (user.inbox.pending_acks === 0) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error("the alert was never acknowledged");
  });
});
