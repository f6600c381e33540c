/**
 * Retained state kept on the client: Herald sends a `state` event per key
 * to a fresh stream, then one per change, with data `{topic, key, version,
 * value}`, `{..., patch}` (RFC 7396 merge patch) or `{..., deleted: true}`.
 * A change whose version does not follow the one held means something was
 * missed (a `herald.reset`): the key is reported stale so the caller can
 * fetch it again.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface StateEntry {
  version: number;
  value: Json;
}

export interface StateChange {
  topic: string;
  key: string;
  version: number;
  value?: Json;
  patch?: Json;
  deleted?: boolean;
}

export type Applied =
  | { kind: "set"; topic: string; key: string; entry: StateEntry }
  | { kind: "deleted"; topic: string; key: string }
  | { kind: "stale"; topic: string; key: string }
  | { kind: "old"; topic: string; key: string };

/** RFC 7396: objects merge recursively, `null` removes, anything else replaces. */
export function mergePatch(target: Json, patch: Json): Json {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const base: { [key: string]: Json } =
    target !== null && typeof target === "object" && !Array.isArray(target) ? { ...target } : {};
  for (const [name, value] of Object.entries(patch)) {
    if (value === null) delete base[name];
    else base[name] = mergePatch(base[name] ?? null, value);
  }
  return base;
}

export class StateStore {
  private topics = new Map<string, Map<string, StateEntry>>();

  /** The keys of a topic and their entries (a copy). */
  topic(topic: string): Map<string, StateEntry> {
    return new Map(this.topics.get(topic) ?? []);
  }

  /** The topics that hold keys. */
  topicNames(): string[] {
    return [...this.topics.keys()];
  }

  get(topic: string, key: string): StateEntry | undefined {
    return this.topics.get(topic)?.get(key);
  }

  /** Sets an entry from an authoritative source (a full value). */
  set(topic: string, key: string, entry: StateEntry): void {
    let keys = this.topics.get(topic);
    if (!keys) this.topics.set(topic, (keys = new Map()));
    keys.set(key, entry);
  }

  /** Applies one `state` event. */
  apply(change: StateChange): Applied {
    const { topic, key, version } = change;
    const held = this.get(topic, key);
    if (held && version <= held.version) return { kind: "old", topic, key };
    if (change.deleted) {
      this.topics.get(topic)?.delete(key);
      return { kind: "deleted", topic, key };
    }
    if (change.value !== undefined) {
      const entry = { version, value: change.value };
      this.set(topic, key, entry);
      return { kind: "set", topic, key, entry };
    }
    if (change.patch !== undefined) {
      // A patch applies only to the version right before it.
      if (!held || held.version !== version - 1) return { kind: "stale", topic, key };
      const entry = { version, value: mergePatch(held.value, change.patch) };
      this.set(topic, key, entry);
      return { kind: "set", topic, key, entry };
    }
    return { kind: "stale", topic, key };
  }

  /** Replaces a topic's keys with an authoritative copy (a fetch after
   * events were missed); returns what changed. */
  replaceTopic(topic: string, keys: Map<string, StateEntry>): Applied[] {
    const changes: Applied[] = [];
    const held = this.topics.get(topic) ?? new Map<string, StateEntry>();
    for (const key of held.keys()) {
      if (!keys.has(key)) changes.push({ kind: "deleted", topic, key });
    }
    for (const [key, entry] of keys) {
      const before = held.get(key);
      if (!before || before.version !== entry.version) changes.push({ kind: "set", topic, key, entry });
    }
    if (keys.size > 0) this.topics.set(topic, new Map(keys));
    else this.topics.delete(topic);
    return changes;
  }

  clear(): void {
    this.topics.clear();
  }
}
