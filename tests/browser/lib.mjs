// What the browser test scripts share: waiting for a condition, Chromium,
// free ports, and serving herald-client's build to a test page.
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { chromium } from "playwright-core";

/** Resolves with `cond()`'s first truthy value, checking every 25 ms;
 * throws after `ms`. An awaited condition, not a sleep. */
export async function until(what, cond, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await cond();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Debian's Chromium. */
export function launch() {
  return chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
}

export async function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Answers `/dist/FILE` from `dist` (herald-client's build); false when
 * `path` is not such a file, for the caller to go on. */
export async function serveDist(res, dist, path) {
  if (!path.startsWith("/dist/") || path.includes("..")) return false;
  try {
    const body = await readFile(join(dist, path.slice("/dist/".length)));
    res.writeHead(200, { "content-type": "text/javascript" });
    res.end(body);
    return true;
  } catch {
    return false;
  }
}
