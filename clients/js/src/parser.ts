/**
 * An incremental parser for the `text/event-stream` format, as the HTML
 * standard's "interpret an event stream" defines it: lines end in CRLF, LF
 * or CR (also split across chunks); a leading BOM is dropped; `data`,
 * `event`, `id` and `retry` fields; comments start with `:`; a blank line
 * dispatches. An `id` block without data moves the last event id and
 * dispatches nothing (Herald sends one after events that waited for a user).
 */

/** One dispatched event. */
export interface SseMessage {
  /** The event type: `message` when the stream named none. */
  type: string;
  data: string;
  /** The last event id after this event (the stream's, not only this block's). */
  lastEventId: string;
  /** Whether this block carried its own `id:` field. */
  hasId: boolean;
}

export interface ParserSink {
  event(message: SseMessage): void;
  /** A `retry:` field: the reconnection time in milliseconds. */
  retry?(ms: number): void;
  /** A comment line (Herald's heartbeat is `: ping`). */
  comment?(text: string): void;
  /** The last event id changed without an event (an `id`-only block). */
  position?(lastEventId: string): void;
}

export class SseParser {
  private buffer = "";
  private data = "";
  private hasData = false;
  private type = "";
  private lastEventId: string;
  private idInBlock = false;
  private sawCarriageReturn = false;
  private first = true;

  constructor(
    private readonly sink: ParserSink,
    lastEventId = "",
  ) {
    this.lastEventId = lastEventId;
  }

  /** The last event id the stream has set so far. */
  get lastId(): string {
    return this.lastEventId;
  }

  /** Feeds decoded text; may dispatch any number of events. */
  push(text: string): void {
    if (this.first && text.length > 0) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    // A CR that ended the previous chunk may be the first half of a CRLF.
    if (this.sawCarriageReturn && text.startsWith("\n")) text = text.slice(1);
    this.sawCarriageReturn = false;
    this.buffer += text;
    let start = 0;
    for (;;) {
      let end = -1;
      let next = -1;
      for (let i = start; i < this.buffer.length; i++) {
        const c = this.buffer.charCodeAt(i);
        if (c === 10) {
          end = i;
          next = i + 1;
          break;
        }
        if (c === 13) {
          end = i;
          if (i + 1 === this.buffer.length) {
            this.sawCarriageReturn = true;
            next = i + 1;
          } else {
            next = this.buffer.charCodeAt(i + 1) === 10 ? i + 2 : i + 1;
          }
          break;
        }
      }
      if (end < 0) break;
      this.line(this.buffer.slice(start, end));
      start = next;
    }
    this.buffer = this.buffer.slice(start);
  }

  /** Ends the stream: an unfinished block is dropped, as the standard says. */
  end(): void {
    this.buffer = "";
    this.resetBlock();
  }

  private line(line: string): void {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) {
      this.sink.comment?.(line.slice(1).replace(/^ /, ""));
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data":
        this.data += value + "\n";
        this.hasData = true;
        break;
      case "event":
        this.type = value;
        break;
      case "id":
        // An id containing NUL is ignored.
        if (!value.includes("\0")) {
          this.lastEventId = value;
          this.idInBlock = true;
        }
        break;
      case "retry":
        if (/^\d+$/.test(value)) this.sink.retry?.(Number(value));
        break;
      default:
        break;
    }
  }

  private dispatch(): void {
    if (!this.hasData) {
      if (this.idInBlock) this.sink.position?.(this.lastEventId);
      this.resetBlock();
      return;
    }
    const message: SseMessage = {
      type: this.type || "message",
      data: this.data.endsWith("\n") ? this.data.slice(0, -1) : this.data,
      lastEventId: this.lastEventId,
      hasId: this.idInBlock,
    };
    this.resetBlock();
    this.sink.event(message);
  }

  private resetBlock(): void {
    this.data = "";
    this.hasData = false;
    this.type = "";
    this.idInBlock = false;
  }
}
