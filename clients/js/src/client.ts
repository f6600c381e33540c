/**
 * HeraldClient: one SSE stream to a Herald hub, kept open.
 *
 * It streams with `fetch`, so it can send `Authorization` (EventSource
 * cannot), and does what EventSource leaves to applications: resumes with
 * the Last-Event-ID after any break, reconnects with exponential backoff
 * and full jitter (honouring `retry:` and `Retry-After`), notices a dead
 * connection by its missing heartbeats, refreshes an expired token and
 * resumes, keeps the retained state of its topics, and acknowledges events
 * that need it.
 */

import { Backoff, type BackoffOptions, parseRetryAfter } from "./backoff.js";
import { SseParser, type SseMessage } from "./parser.js";
import { type Applied, type Json, type StateChange, type StateEntry, StateStore } from "./state.js";

export interface HeraldClientOptions {
  /** Topics or patterns (`chat/*`, `jobs/**`). */
  topics: string[];
  /** Only these event types (the hub's `event=` filter). */
  events?: string[];
  /** A JWT sent as `Authorization: Bearer`. */
  token?: string;
  /** Called for a token before the first connect, on `herald.token_expired`
   * and once after a 401/403; its token replaces `token`. */
  getToken?: () => string | Promise<string>;
  /** Resume after this id on the first connect. */
  lastEventId?: string;
  /** On a first connect without `lastEventId`: the last N events first. */
  history?: number;
  backoff?: BackoffOptions;
  /** A stream silent for this long is dropped and reconnected. Default:
   * twice the hub's heartbeat interval plus 5 s (35 s with the default 15 s). */
  heartbeatTimeoutMs?: number;
  /** Event types acknowledged (`POST /v1/ack`) once every handler has
   * returned (or its promise resolved). Others can be acked with `ack()`. */
  ackTypes?: string[];
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Defaults to the global `fetch`. */
  fetch?: typeof fetch;
  /** Start connecting at once (default), or wait for `connect()`. */
  autoConnect?: boolean;
  /** How to receive: `fetch` streaming (default where the runtime can
   * stream a response body), native `eventsource` (the token goes in the
   * `access_token` query parameter; only event types with a handler, and
   * Herald's own, are seen), or `poll` (`GET /v1/poll`, for networks that
   * buffer streams). `auto` picks fetch, else EventSource, else poll. */
  transport?: "auto" | "fetch" | "eventsource" | "poll";
  /** The source of backoff jitter, in [0, 1). Default `Math.random`. */
  random?: () => number;
  /** Share one connection among the tabs of this origin that open the same
   * hub, topics and event types (default `true` where the browser has Web
   * Locks and BroadcastChannel). A string separates groups (use one per
   * user when tabs of one origin may belong to different users). */
  shareAcrossTabs?: boolean | string;
}

/** Messages between tabs sharing a connection. */
type Relay =
  | { t: "hello" }
  | { t: "event"; m: SseMessage }
  | { t: "position"; id: string }
  | { t: "status"; s: ConnectionState; q: Quality; c?: string }
  | {
      t: "sync";
      s: ConnectionState;
      q: Quality;
      c?: string;
      id: string;
      state: [string, string, StateEntry][];
    };

/** An event as handlers receive it. */
export interface HeraldEvent {
  type: string;
  data: string;
  /** The event's id (present on everything Herald logs). */
  id?: string;
  /** The stream's Last-Event-ID after this event. */
  lastEventId: string;
  /** `data` parsed as JSON. */
  json<T = unknown>(): T;
  /** Acknowledges this event (SPEC §7); batched. */
  ack(): void;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";
export type Quality = "excellent" | "good" | "fair" | "poor";

/** Why the client stopped for good, or a failure it will retry. */
export class HeraldError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly code?: string,
    /** True when the client stopped (it will not reconnect). */
    readonly fatal = false,
  ) {
    super(message);
    this.name = "HeraldError";
  }
}

type Handler = (event: HeraldEvent) => void | Promise<void>;
type Outcome = "ended" | "failed" | "refresh" | "fatal";

const RECENT_MS = 5 * 60 * 1000;

export class HeraldClient {
  private readonly base: string;
  private readonly options: HeraldClientOptions;
  private readonly fetchFn: typeof fetch;
  private readonly backoff: Backoff;
  private readonly handlers = new Map<string, Set<Handler>>();
  private readonly stateHandlers = new Set<(change: Applied) => void>();
  private readonly statusHandlers = new Set<(state: ConnectionState) => void>();
  private readonly qualityHandlers = new Set<(quality: Quality) => void>();
  private readonly errorHandlers = new Set<(error: HeraldError) => void>();
  private readonly store = new StateStore();
  private token: string | undefined;
  private needToken: boolean;
  private refreshedAfterRefusal = false;
  private lastId: string;
  private connectedOnce = false;
  private current: ConnectionState = "connecting";
  private currentQuality: Quality = "poor";
  private abort: AbortController | undefined;
  private wake: (() => void) | undefined;
  private closed = false;
  private running = false;
  private connection: string | undefined;
  private heartbeatMs = 15000;
  private lastPing = 0;
  private worstGap = 0;
  private reconnects: number[] = [];
  /** `leader` holds the connection for the tabs sharing it; `follower`
   * receives from the leader; `alone` shares nothing. */
  private role: "alone" | "leader" | "follower" = "alone";
  private channel: BroadcastChannel | undefined;
  private lockAbort: AbortController | undefined;
  /** Ids a follower has handled lately: a new leader's resume may repeat some. */
  private recent: string[] = [];
  /** Adds a listener to the open EventSource for a newly handled type. */
  private listenTo: ((type: string) => void) | undefined;
  private pendingAcks = new Set<string>();
  private ackTimer: ReturnType<typeof setTimeout> | undefined;

  /** `url` is the hub's base URL (`https://push.example.com`). */
  constructor(url: string, options: HeraldClientOptions) {
    this.base = url.replace(/\/+$/, "");
    this.options = options;
    const f = options.fetch ?? globalThis.fetch;
    if (!f) throw new Error("HeraldClient needs fetch (Node 18+ or a browser)");
    this.fetchFn = f.bind(globalThis);
    this.backoff = new Backoff(options.backoff, options.random);
    this.token = options.token;
    this.needToken = !options.token && !!options.getToken;
    this.lastId = options.lastEventId ?? "";
    if (options.autoConnect !== false) this.connect();
  }

  /** Starts (or restarts after `close()`) the connection loop. */
  connect(): void {
    if (this.running) return;
    this.closed = false;
    this.running = true;
    const key = this.shareKey();
    if (key) this.share(key);
    else void this.run();
  }

  /** Whether this client receives through another tab's connection. */
  get isFollower(): boolean {
    return this.role === "follower";
  }

  private shareKey(): string | undefined {
    const want = this.options.shareAcrossTabs ?? true;
    const nav = (globalThis as { navigator?: { locks?: LockManager } }).navigator;
    if (want === false || !nav?.locks || typeof BroadcastChannel === "undefined") return undefined;
    const what = JSON.stringify([
      this.base,
      [...this.options.topics].sort(),
      [...(this.options.events ?? [])].sort(),
      typeof want === "string" ? want : "",
    ]);
    return `herald-client:${what}`;
  }

  /** Follows the tab that holds the lock; takes the connection over when
   * the lock comes to this tab (its holder closed). */
  private share(key: string): void {
    this.role = "follower";
    const channel = new BroadcastChannel(key);
    this.channel = channel;
    channel.onmessage = (e: MessageEvent<Relay>) => this.relayed(e.data);
    channel.postMessage({ t: "hello" } satisfies Relay);
    const abort = new AbortController();
    this.lockAbort = abort;
    navigator.locks
      .request(key, { signal: abort.signal }, async () => {
        if (this.closed) return;
        this.role = "leader";
        // Resumes after the last event the old leader relayed: no gap.
        await this.run();
      })
      .catch(() => {
        // Aborted by close() while waiting.
      })
      .finally(() => {
        this.running = false;
      });
  }

  private relay(message: Relay): void {
    if (this.role === "leader") this.channel?.postMessage(message);
  }

  /** What the leader (or a new follower) sent. */
  private relayed(message: Relay): void {
    if (this.closed) return;
    if (this.role === "leader") {
      if (message.t === "hello") {
        const state: [string, string, StateEntry][] = [];
        for (const topic of this.store.topicNames())
          for (const [key, entry] of this.store.topic(topic)) state.push([topic, key, entry]);
        this.relay({
          t: "sync",
          s: this.current,
          q: this.currentQuality,
          c: this.connection,
          id: this.lastId,
          state,
        });
      }
      return;
    }
    if (this.role !== "follower") return;
    switch (message.t) {
      case "event":
        void this.follow(message.m);
        break;
      case "position":
        this.lastId = message.id;
        break;
      case "status":
        this.connection = message.c;
        this.followStatus(message.s, message.q);
        break;
      case "sync":
        if (!this.lastId) this.lastId = message.id;
        this.connection = message.c;
        for (const [topic, key, entry] of message.state) {
          if (!this.store.get(topic, key)) {
            this.store.set(topic, key, entry);
            this.stateChanged({ kind: "set", topic, key, entry });
          }
        }
        this.followStatus(message.s, message.q);
        break;
      default:
        break;
    }
  }

  private followStatus(state: ConnectionState, quality: Quality): void {
    this.setStatus(state);
    if (quality !== this.currentQuality) {
      this.currentQuality = quality;
      for (const h of this.qualityHandlers) h(quality);
    }
  }

  /** An event the leader received. */
  private async follow(m: SseMessage): Promise<void> {
    if (m.hasId) {
      if (this.recent.includes(m.lastEventId)) return;
      this.recent.push(m.lastEventId);
      if (this.recent.length > 256) this.recent.shift();
    }
    if (m.type === "herald.connected") {
      const info = safeJson(m.data) as { connection_id?: string } | undefined;
      this.connection = info?.connection_id;
    } else if (m.type === "state") {
      this.applyState(m.data);
    }
    this.lastId = m.lastEventId;
    await this.emit(m);
  }

  /** Handles events of one type (`message` for unnamed ones; `*` for all). */
  on(type: string, handler: Handler): () => void {
    let set = this.handlers.get(type);
    if (!set) {
      this.handlers.set(type, (set = new Set()));
      this.listenTo?.(type);
    }
    set.add(handler);
    return () => set!.delete(handler);
  }

  /** Changes of retained state (after they were applied to `state()`). */
  onState(handler: (change: Applied) => void): () => void {
    this.stateHandlers.add(handler);
    return () => this.stateHandlers.delete(handler);
  }

  onStatus(handler: (state: ConnectionState) => void): () => void {
    this.statusHandlers.add(handler);
    return () => this.statusHandlers.delete(handler);
  }

  onQuality(handler: (quality: Quality) => void): () => void {
    this.qualityHandlers.add(handler);
    return () => this.qualityHandlers.delete(handler);
  }

  onError(handler: (error: HeraldError) => void): () => void {
    this.errorHandlers.add(handler);
    return () => this.errorHandlers.delete(handler);
  }

  get status(): ConnectionState {
    return this.current;
  }

  get quality(): Quality {
    return this.currentQuality;
  }

  /** The id the next reconnect resumes after. */
  get lastEventId(): string {
    return this.lastId;
  }

  /** This stream's id at the hub (from `herald.connected`). */
  get connectionId(): string | undefined {
    return this.connection;
  }

  /** The retained state of a topic, by key. */
  state(topic: string): Map<string, StateEntry> {
    return this.store.topic(topic);
  }

  /** Acknowledges events by id (batched into one `POST /v1/ack`). */
  ack(...ids: string[]): void {
    for (const id of ids) this.pendingAcks.add(id);
    if (this.ackTimer === undefined) this.ackTimer = setTimeout(() => void this.flushAcks(), 20);
  }

  /** Stops for good (until `connect()`): no reconnect. */
  close(): void {
    this.closed = true;
    this.abort?.abort();
    this.wake?.();
    this.lockAbort?.abort();
    this.channel?.close();
    this.channel = undefined;
    this.role = "alone";
    this.setStatus("closed");
  }

  private async run(): Promise<void> {
    try {
      while (!this.closed) {
        this.setStatus(this.connectedOnce ? "reconnecting" : "connecting");
        const outcome = await this.connectOnce();
        if (this.closed) break;
        if (outcome === "fatal") {
          this.closed = true;
          this.setStatus("closed");
          break;
        }
        if (outcome === "refresh") continue;
        this.reconnects.push(Date.now());
        this.updateQuality();
        await this.sleep(this.backoff.next());
      }
    } finally {
      this.running = false;
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.wake = undefined;
        resolve();
      }
      this.wake = done;
    });
  }

  private url(): string {
    const q = new URLSearchParams();
    for (const t of this.options.topics) q.append("topic", t);
    for (const e of this.options.events ?? []) q.append("event", e);
    if (!this.lastId && !this.connectedOnce && this.options.history)
      q.set("history", String(this.options.history));
    return `${this.base}/v1/events?${q}`;
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { ...this.options.headers, ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  private async connectOnce(): Promise<Outcome> {
    if (this.needToken && this.options.getToken) {
      try {
        this.token = await this.options.getToken();
        this.needToken = false;
      } catch (e) {
        this.fail(new HeraldError(`getToken failed: ${e}`));
        return "failed";
      }
    }
    const abort = new AbortController();
    this.abort = abort;
    const transport = this.transport();
    if (transport === "poll") return this.poll(abort);
    if (transport === "eventsource") return this.eventSource(abort);
    const headers = this.headers({ Accept: "text/event-stream" });
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    let response: Response;
    try {
      response = await this.fetchFn(this.url(), { headers, signal: abort.signal, cache: "no-store" });
    } catch (e) {
      if (!this.closed) this.fail(new HeraldError(`connect failed: ${e}`));
      return "failed";
    }
    if (!response.ok) return this.refused(response);
    const type = response.headers.get("content-type") ?? "";
    if (!type.startsWith("text/event-stream") || !response.body) {
      this.fail(new HeraldError(`not an event stream: ${type}`, response.status));
      return "failed";
    }
    const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
    if (retryAfter !== undefined) this.backoff.setFloor(retryAfter);
    return this.read(response.body, abort);
  }

  private async refused(response: Response): Promise<Outcome> {
    let code: string | undefined;
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      code = body.error;
      message = body.message ?? message;
    } catch {
      // Not JSON: the status says enough.
    }
    const status = response.status;
    if ((status === 401 || status === 403) && this.options.getToken && !this.refreshedAfterRefusal) {
      this.refreshedAfterRefusal = true;
      this.needToken = true;
      return "refresh";
    }
    const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
    if (retryAfter !== undefined) this.backoff.setFloor(retryAfter);
    // Other 4xx will not change by retrying (408 and 429 may).
    const fatal = status >= 400 && status < 500 && status !== 408 && status !== 429;
    this.fail(new HeraldError(message, status, code, fatal));
    return fatal ? "fatal" : "failed";
  }

  private transport(): "fetch" | "eventsource" | "poll" {
    const want = this.options.transport ?? "auto";
    if (want !== "auto") return want;
    const streams =
      typeof ReadableStream !== "undefined" &&
      typeof Response !== "undefined" &&
      "body" in Response.prototype;
    if (streams) return "fetch";
    return typeof EventSource !== "undefined" ? "eventsource" : "poll";
  }

  /** Long polls until one fails or a handler ends the connection. */
  private async poll(abort: AbortController): Promise<Outcome> {
    while (!this.closed) {
      const q = new URLSearchParams(this.url().split("?")[1]);
      // The first poll answers at once, so the client knows it is through.
      q.set("timeout", this.current === "open" ? "25" : "0");
      if (this.lastId) q.set("lastEventId", this.lastId);
      let response: Response;
      try {
        response = await this.fetchFn(`${this.base}/v1/poll?${q}`, {
          headers: this.headers(),
          signal: abort.signal,
          cache: "no-store",
        });
      } catch (e) {
        if (!this.closed) this.fail(new HeraldError(`poll failed: ${e}`));
        return "failed";
      }
      if (!response.ok) return this.refused(response);
      let answer: {
        events: { id: string; event: string; data: string }[];
        last_event_id: string;
        reset: { reason: string } | null;
      };
      try {
        answer = await response.json();
      } catch (e) {
        this.fail(new HeraldError(`poll answer unreadable: ${e}`));
        return "failed";
      }
      if (this.current !== "open") {
        this.connectedOnce = true;
        this.refreshedAfterRefusal = false;
        this.backoff.reset();
        this.setStatus("open");
      }
      const messages: SseMessage[] = answer.events.map((e) => ({
        type: e.event,
        data: e.data,
        lastEventId: e.id,
        hasId: true,
      }));
      if (answer.reset) {
        messages.unshift({
          type: "herald.reset",
          data: JSON.stringify(answer.reset),
          lastEventId: answer.last_event_id,
          hasId: true,
        });
      }
      for (const m of messages) {
        const next = await this.handle(m, abort);
        if (next) return next;
      }
      this.lastId = answer.last_event_id;
      this.relay({ t: "position", id: this.lastId });
    }
    return "ended";
  }

  /** Native EventSource: it cannot send headers, so the token travels as
   * `access_token`; errors end it and the client's own backoff reconnects. */
  private eventSource(abort: AbortController): Promise<Outcome> {
    if (typeof EventSource === "undefined") {
      this.fail(new HeraldError("no EventSource in this runtime", undefined, undefined, true));
      return Promise.resolve("fatal");
    }
    const q = new URLSearchParams(this.url().split("?")[1]);
    if (this.token) q.set("access_token", this.token);
    if (this.lastId) q.set("lastEventId", this.lastId);
    const source = new EventSource(`${this.base}/v1/events?${q}`);
    return new Promise<Outcome>((resolve) => {
      let settled = false;
      let lastSeen = this.lastId;
      let chain = Promise.resolve();
      const finish = (outcome: Outcome) => {
        if (settled) return;
        settled = true;
        this.listenTo = undefined;
        source.close();
        resolve(outcome);
      };
      abort.signal.addEventListener("abort", () => finish("failed"));
      const onEvent = (ev: Event) => {
        const e = ev as MessageEvent<string>;
        const m: SseMessage = {
          type: e.type,
          data: e.data,
          lastEventId: e.lastEventId,
          hasId: e.lastEventId !== lastSeen,
        };
        lastSeen = e.lastEventId;
        // One at a time, in order, as the stream delivered them.
        chain = chain.then(async () => {
          if (settled) return;
          const next = await this.handle(m, abort);
          if (next) finish(next);
        });
      };
      const types = new Set([
        "message",
        "state",
        "herald.connected",
        "herald.reset",
        "herald.token_expired",
        "herald.refused",
        "herald.presence",
        ...[...this.handlers.keys()].filter((t) => t !== "*"),
      ]);
      types.forEach((t) => source.addEventListener(t, onEvent));
      this.listenTo = (t) => {
        if (t !== "*" && !types.has(t)) {
          types.add(t);
          source.addEventListener(t, onEvent);
        }
      };
      source.onerror = () => {
        // A refused request (401/403) closes it; a broken one would retry by
        // itself without a fresh token. Either way the loop takes over.
        const refused = source.readyState === EventSource.CLOSED && this.current !== "open";
        if (refused && this.options.getToken && !this.refreshedAfterRefusal) {
          this.refreshedAfterRefusal = true;
          this.needToken = true;
          finish("refresh");
        } else {
          finish("failed");
        }
      };
    });
  }

  private async read(body: ReadableStream<Uint8Array>, abort: AbortController): Promise<Outcome> {
    let outcome: Outcome = "ended";
    let watchdog: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(watchdog);
      const limit = this.options.heartbeatTimeoutMs ?? this.heartbeatMs * 2 + 5000;
      watchdog = setTimeout(() => {
        outcome = "failed";
        this.fail(new HeraldError(`no data or heartbeat for ${limit} ms; reconnecting`));
        abort.abort();
      }, limit);
    };
    const queue: SseMessage[] = [];
    const parser = new SseParser(
      {
        event: (m) => queue.push(m),
        retry: (ms) => this.backoff.setRetry(ms),
        comment: () => this.heartbeat(),
        position: (id) => {
          this.lastId = id;
          this.relay({ t: "position", id });
        },
      },
      this.lastId,
    );
    const reader = body.getReader();
    const decoder = new TextDecoder();
    arm();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        parser.push(decoder.decode(value, { stream: true }));
        for (let m = queue.shift(); m; m = queue.shift()) {
          const next = await this.handle(m, abort);
          if (next) {
            outcome = next;
            abort.abort();
            return outcome;
          }
        }
      }
    } catch {
      // Aborted (close, watchdog, token refresh) or the network broke.
      if (outcome === "ended" && !this.closed) outcome = "failed";
    } finally {
      clearTimeout(watchdog);
      parser.end();
      reader.cancel().catch(() => {});
    }
    return outcome;
  }

  /** One event from this tab's connection, whatever its transport (and
   * relayed to tabs that share it); returns an outcome when it ends the
   * connection. */
  private async handle(m: SseMessage, abort: AbortController): Promise<Outcome | undefined> {
    this.relay({ t: "event", m });
    switch (m.type) {
      case "herald.connected": {
        const info = safeJson(m.data) as { connection_id?: string; heartbeat_secs?: number } | undefined;
        this.connection = info?.connection_id;
        if (info?.heartbeat_secs) this.heartbeatMs = info.heartbeat_secs * 1000;
        this.connectedOnce = true;
        this.refreshedAfterRefusal = false;
        this.backoff.reset();
        this.lastPing = Date.now();
        this.worstGap = 0;
        this.setStatus("open");
        this.updateQuality();
        break;
      }
      case "herald.token_expired":
        await this.emit(m);
        if (!this.options.getToken) {
          this.fail(new HeraldError("the token expired and there is no getToken", 401, "token_expired", true));
          return "fatal";
        }
        this.needToken = true;
        return "refresh";
      case "herald.refused": {
        const info = safeJson(m.data) as { retry_after_ms?: number; message?: string } | undefined;
        if (info?.retry_after_ms) this.backoff.setFloor(info.retry_after_ms);
        this.fail(new HeraldError(info?.message ?? "refused for now", 200, "refused"));
        break;
      }
      case "state":
        this.applyState(m.data);
        break;
      case "herald.reset":
        // Events were missed: retained state may be stale. Fetch it again.
        void this.resync();
        break;
      default:
        break;
    }
    if (m.hasId) this.lastId = m.lastEventId;
    if (!abort.signal.aborted && m.type !== "herald.token_expired") await this.emit(m);
    return undefined;
  }

  private async emit(m: SseMessage): Promise<void> {
    const id = m.hasId ? m.lastEventId : undefined;
    const event: HeraldEvent = {
      type: m.type,
      data: m.data,
      id,
      lastEventId: m.lastEventId,
      json: <T>() => JSON.parse(m.data) as T,
      ack: () => {
        if (id) this.ack(id);
      },
    };
    const targets = [...(this.handlers.get(m.type) ?? []), ...(this.handlers.get("*") ?? [])];
    for (const handler of targets) {
      try {
        await handler(event);
      } catch (e) {
        // A handler's failure is its own; the stream goes on, unacked.
        this.fail(new HeraldError(`handler for ${m.type} threw: ${e}`));
        return;
      }
    }
    if (id && this.options.ackTypes?.includes(m.type)) this.ack(id);
  }

  private applyState(data: string): void {
    const change = safeJson(data) as StateChange | undefined;
    if (!change || typeof change.topic !== "string" || typeof change.key !== "string") return;
    const applied = this.store.apply(change);
    if (applied.kind === "stale") void this.refetch(change.topic, change.key);
    else if (applied.kind !== "old") this.stateChanged(applied);
  }

  /** A change arrived that does not follow what is held: fetch the key. */
  private async refetch(topic: string, key: string): Promise<void> {
    try {
      const path = `${topic}/${key}`.split("/").map(encodeURIComponent).join("/");
      const r = await this.fetchFn(`${this.base}/v1/state/${path}`, { headers: this.headers() });
      if (r.status === 404) {
        this.store.apply({ topic, key, version: Number.MAX_SAFE_INTEGER, deleted: true });
        this.stateChanged({ kind: "deleted", topic, key });
        return;
      }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const body = (await r.json()) as { version: number; value: Json };
      const entry = { version: body.version, value: body.value };
      this.store.set(topic, key, entry);
      this.stateChanged({ kind: "set", topic, key, entry });
    } catch (e) {
      this.fail(new HeraldError(`could not refetch state ${topic} ${key}: ${e}`));
    }
  }

  /** Fetches the retained state of every exact topic held or subscribed. */
  private async resync(): Promise<void> {
    const topics = new Set([
      ...this.store.topicNames(),
      ...this.options.topics.filter((t) => !t.includes("*")),
    ]);
    for (const topic of topics) {
      try {
        const path = topic.split("/").map(encodeURIComponent).join("/");
        const r = await this.fetchFn(`${this.base}/v1/state/${path}`, { headers: this.headers() });
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        const body = (await r.json()) as { keys: Record<string, StateEntry> };
        const keys = new Map(Object.entries(body.keys ?? {}));
        for (const change of this.store.replaceTopic(topic, keys)) this.stateChanged(change);
      } catch (e) {
        this.fail(new HeraldError(`could not fetch the state of ${topic} again: ${e}`));
      }
    }
  }

  private stateChanged(change: Applied): void {
    for (const h of this.stateHandlers) h(change);
  }

  private async flushAcks(): Promise<void> {
    this.ackTimer = undefined;
    const ids = [...this.pendingAcks].slice(0, 1000);
    ids.forEach((id) => this.pendingAcks.delete(id));
    if (this.pendingAcks.size > 0) this.ackTimer = setTimeout(() => void this.flushAcks(), 0);
    if (ids.length === 0) return;
    try {
      const r = await this.fetchFn(`${this.base}/v1/ack`, {
        method: "POST",
        headers: this.headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ ids }),
      });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
    } catch (e) {
      // Unacknowledged events come again on the next connect.
      this.fail(new HeraldError(`ack failed: ${e}`));
    }
  }

  private heartbeat(): void {
    const now = Date.now();
    if (this.lastPing) this.worstGap = Math.max(this.worstGap * 0.5, now - this.lastPing);
    this.lastPing = now;
    this.updateQuality();
  }

  private updateQuality(): void {
    if (this.role === "follower") return;
    const now = Date.now();
    this.reconnects = this.reconnects.filter((t) => now - t < RECENT_MS);
    const r = this.reconnects.length;
    const lag = this.worstGap / this.heartbeatMs;
    let q: Quality;
    if (this.current !== "open") q = "poor";
    else if (r === 0 && lag <= 1.2) q = "excellent";
    else if (r <= 1 && lag <= 1.5) q = "good";
    else if (r <= 3 && lag <= 2) q = "fair";
    else q = "poor";
    if (q !== this.currentQuality) {
      this.currentQuality = q;
      for (const h of this.qualityHandlers) h(q);
      this.relay({ t: "status", s: this.current, q, c: this.connection });
    }
  }

  private setStatus(state: ConnectionState): void {
    if (state === this.current) return;
    this.current = state;
    for (const h of this.statusHandlers) h(state);
    this.updateQuality();
    if (state !== "closed") this.relay({ t: "status", s: state, q: this.currentQuality, c: this.connection });
  }

  private fail(error: HeraldError): void {
    for (const h of this.errorHandlers) h(error);
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
