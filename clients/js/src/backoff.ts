/**
 * Reconnection delays: exponential backoff with full jitter. Attempt `n`
 * (from 0) waits a uniformly random time in `[0, min(max, base * 2^n)]`,
 * so a hub that restarts is not met by all its clients at the same moment.
 * The base is the larger of `initialMs` and the stream's `retry:`; a
 * `Retry-After` from the hub is a floor for the next attempt.
 */

export interface BackoffOptions {
  /** First delay bound, in milliseconds. Default 1000. */
  initialMs?: number;
  /** Largest delay, in milliseconds. Default 30000. */
  maxMs?: number;
}

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  private attempt = 0;
  private retryMs = 0;
  private floorMs = 0;

  constructor(
    options: BackoffOptions = {},
    private readonly random: () => number = Math.random,
  ) {
    this.initialMs = Math.max(0, options.initialMs ?? 1000);
    this.maxMs = Math.max(this.initialMs, options.maxMs ?? 30000);
  }

  /** The stream's `retry:` field. */
  setRetry(ms: number): void {
    this.retryMs = Math.max(0, ms);
  }

  /** A `Retry-After` (in milliseconds): the next delay is at least this. */
  setFloor(ms: number): void {
    this.floorMs = Math.max(this.floorMs, ms);
  }

  /** A connection worked: the next failure starts from the first delay. */
  reset(): void {
    this.attempt = 0;
  }

  /** How many delays were taken since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The delay before the next attempt. */
  next(): number {
    const base = Math.max(this.initialMs, this.retryMs);
    const bound = Math.min(this.maxMs, base * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    const floor = this.floorMs;
    this.floorMs = 0;
    // Above a floor the jitter still spreads clients, over a tenth of it.
    if (floor > 0) return floor + this.random() * Math.min(bound, floor / 10);
    return this.random() * bound;
  }
}

/** `Retry-After` as milliseconds: delta seconds or an HTTP date. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
