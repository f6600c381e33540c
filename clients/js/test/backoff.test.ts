import { describe, expect, it } from "vitest";
import { Backoff, parseRetryAfter } from "../src/backoff.js";

describe("Backoff", () => {
  it("doubles the bound from 1 s to the 30 s cap, with full jitter", () => {
    const top = new Backoff({}, () => 0.999999);
    const bounds = Array.from({ length: 8 }, () => Math.round(top.next()));
    expect(bounds).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    const bottom = new Backoff({}, () => 0);
    expect(Array.from({ length: 5 }, () => bottom.next())).toEqual([0, 0, 0, 0, 0]);
  });

  it("spreads delays over the whole range", () => {
    const b = new Backoff({ initialMs: 1000, maxMs: 1000 });
    const delays = Array.from({ length: 2000 }, () => b.next());
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...delays)).toBeLessThanOrEqual(1000);
    const low = delays.filter((d) => d < 500).length;
    expect(low).toBeGreaterThan(800);
    expect(low).toBeLessThan(1200);
  });

  it("starts over after reset, and takes retry: as a larger base", () => {
    const b = new Backoff({ initialMs: 100, maxMs: 10000 }, () => 1);
    b.next();
    b.next();
    b.reset();
    expect(b.next()).toBe(100);
    b.setRetry(3000);
    b.reset();
    expect(b.next()).toBe(3000);
    expect(b.next()).toBe(6000);
  });

  it("never retries before Retry-After, and only once", () => {
    const b = new Backoff({}, () => 0);
    b.setFloor(5000);
    expect(b.next()).toBe(5000);
    expect(b.next()).toBe(0);
  });
});

describe("parseRetryAfter", () => {
  it("reads seconds and HTTP dates", () => {
    expect(parseRetryAfter("3")).toBe(3000);
    const now = Date.parse("Mon, 30 Nov 2026 10:00:00 GMT");
    expect(parseRetryAfter("Mon, 30 Nov 2026 10:00:07 GMT", now)).toBe(7000);
    expect(parseRetryAfter(null)).toBeUndefined();
    expect(parseRetryAfter("soon")).toBeUndefined();
  });
});
