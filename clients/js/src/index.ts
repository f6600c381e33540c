export { HeraldClient, HeraldError } from "./client.js";
export type {
  ConnectionState,
  HeraldClientOptions,
  HeraldEvent,
  Quality,
} from "./client.js";
export { Backoff, parseRetryAfter } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { SseParser } from "./parser.js";
export type { ParserSink, SseMessage } from "./parser.js";
export { StateStore, mergePatch } from "./state.js";
export type { Applied, Json, StateChange, StateEntry } from "./state.js";
