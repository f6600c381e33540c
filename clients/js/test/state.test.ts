import { describe, expect, it } from "vitest";
import { StateStore, mergePatch } from "../src/state.js";

describe("mergePatch (RFC 7396)", () => {
  it("merges objects, removes with null, replaces the rest", () => {
    expect(mergePatch({ a: 1, b: { c: 2, d: 3 } }, { b: { c: null, e: 4 }, f: [1] })).toEqual({
      a: 1,
      b: { d: 3, e: 4 },
      f: [1],
    });
    expect(mergePatch({ a: 1 }, "x")).toBe("x");
    expect(mergePatch([1, 2], { a: 1 })).toEqual({ a: 1 });
    expect(mergePatch({ a: [1, 2] }, { a: [3] })).toEqual({ a: [3] });
  });
});

describe("StateStore", () => {
  it("applies snapshots, patches in sequence and deletions", () => {
    const s = new StateStore();
    expect(s.apply({ topic: "t", key: "k", version: 1, value: { n: 1, m: 1 } }).kind).toBe("set");
    expect(s.apply({ topic: "t", key: "k", version: 2, patch: { n: 2, m: null } })).toEqual({
      kind: "set",
      topic: "t",
      key: "k",
      entry: { version: 2, value: { n: 2 } },
    });
    expect(s.apply({ topic: "t", key: "k", version: 2, patch: { n: 9 } }).kind).toBe("old");
    expect(s.get("t", "k")).toEqual({ version: 2, value: { n: 2 } });
    expect(s.apply({ topic: "t", key: "k", version: 3, deleted: true }).kind).toBe("deleted");
    expect(s.topic("t").size).toBe(0);
  });

  it("reports a patch that skips a version, or has nothing to apply to, as stale", () => {
    const s = new StateStore();
    expect(s.apply({ topic: "t", key: "k", version: 4, patch: { a: 1 } }).kind).toBe("stale");
    s.apply({ topic: "t", key: "k", version: 1, value: {} });
    expect(s.apply({ topic: "t", key: "k", version: 3, patch: { a: 1 } }).kind).toBe("stale");
    expect(s.get("t", "k")?.version).toBe(1);
  });

  it("replaces a topic with a fetched copy and says what changed", () => {
    const s = new StateStore();
    s.apply({ topic: "t", key: "a", version: 1, value: 1 });
    s.apply({ topic: "t", key: "b", version: 1, value: 1 });
    const changes = s.replaceTopic(
      "t",
      new Map([
        ["a", { version: 1, value: 1 }],
        ["c", { version: 4, value: "new" }],
      ]),
    );
    expect(changes.map((c) => [c.kind, c.key])).toEqual([
      ["deleted", "b"],
      ["set", "c"],
    ]);
    expect([...s.topic("t").keys()]).toEqual(["a", "c"]);
  });
});
