import { describe, expect, it } from "vitest";
import { SseParser, type SseMessage } from "../src/parser.js";

function parse(chunks: string[], lastEventId = "") {
  const events: SseMessage[] = [];
  const retries: number[] = [];
  const comments: string[] = [];
  const positions: string[] = [];
  const p = new SseParser(
    {
      event: (m) => events.push(m),
      retry: (ms) => retries.push(ms),
      comment: (c) => comments.push(c),
      position: (id) => positions.push(id),
    },
    lastEventId,
  );
  for (const c of chunks) p.push(c);
  return { events, retries, comments, positions, parser: p };
}

describe("SseParser", () => {
  it("parses Herald's frames: retry, named events with ids, comments", () => {
    const { events, retries, comments } = parse([
      'retry: 2500\n\nevent: herald.connected\ndata: {"connection_id":"c1"}\n\n: ping\n\n',
      "id: 17\nevent: progress\ndata: 50\n\n",
    ]);
    expect(retries).toEqual([2500]);
    expect(comments).toEqual(["ping"]);
    expect(events.map((e) => [e.type, e.data, e.lastEventId, e.hasId])).toEqual([
      ["herald.connected", '{"connection_id":"c1"}', "", false],
      ["progress", "50", "17", true],
    ]);
  });

  it("joins data lines and treats CRLF, CR and LF alike, even split across chunks", () => {
    const { events } = parse(["data: a\r", "\ndata: b\rdata:c\n", "\r", "\n", "data\n\n"]);
    expect(events.map((e) => e.data)).toEqual(["a\nb\nc", ""]);
  });

  it("splits anywhere, including inside a field name and a multibyte text", () => {
    const text = "id: 5\nevent: chat\ndata: héllo ✓\n\n";
    for (let cut = 0; cut <= text.length; cut++) {
      const { events } = parse([text.slice(0, cut), text.slice(cut)]);
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ type: "chat", data: "héllo ✓", lastEventId: "5" });
    }
  });

  it("drops a leading BOM and an unfinished last block", () => {
    const { events, parser } = parse(["\ufeffdata: one\n\ndata: two"]);
    parser.end();
    expect(events.map((e) => e.data)).toEqual(["one"]);
  });

  it("keeps the last id across events and moves it with an id-only block", () => {
    const { events, positions, parser } = parse(
      ["id: 3\ndata: x\n\ndata: y\n\nid: 9\n\n", "event: e\ndata: z\n\n"],
      "1",
    );
    expect(events.map((e) => [e.data, e.lastEventId, e.hasId])).toEqual([
      ["x", "3", true],
      ["y", "3", false],
      ["z", "9", false],
    ]);
    expect(positions).toEqual(["9"]);
    expect(parser.lastId).toBe("9");
  });

  it("ignores ids with NUL, bad retry values, unknown fields; a missing space is fine", () => {
    const { events, retries } = parse(["id: a\0b\nretry: 10x\nfoo: bar\ndata:tight\n\n"]);
    expect(retries).toEqual([]);
    expect(events).toEqual([{ type: "message", data: "tight", lastEventId: "", hasId: false }]);
  });

  it("a block with only an event type dispatches nothing", () => {
    const { events } = parse(["event: lonely\n\ndata: after\n\n"]);
    expect(events.map((e) => e.type)).toEqual(["message"]);
  });
});
