// The upload progress example in Debian's Chromium (tests/examples.rs):
// several files at once each show their own progress to the end, a refused
// type and a file over the limit show their errors, and a cancel during
// processing stops that file only.
//
// Usage: node uploads.mjs HUB_URL PAGE_URL
import { launch, until } from "./lib.mjs";

const [, pageUrl] = process.argv.slice(2);

const file = (name, kib) => ({ name, mimeType: "application/octet-stream", buffer: Buffer.alloc(kib * 1024, 7) });

const browser = await launch();
try {
  const p = await browser.newPage({ viewport: { width: 900, height: 400 } });
  const errors = [];
  p.on("pageerror", (e) => errors.push(String(e)));
  await p.goto(pageUrl);
  await until("the stream", () => p.evaluate(() => window.uploads.herald.status === "open"));
  const stage = (name) => p.locator("#uploads tr", { hasText: name }).locator(".stage").textContent();

  await p.setInputFiles("#files", [file("report.pdf", 300), file("photo.jpg", 200), file("setup.exe", 10)]);
  await until("report.pdf done", async () => (await stage("report.pdf")) === "done 100%");
  await until("photo.jpg done", async () => (await stage("photo.jpg")) === "done 100%");
  await until("setup.exe refused", async () => (await stage("setup.exe")) === "error: executables are not accepted");
  // Progress was shown on the way, not only the end.
  const steps = await p.evaluate(() => window.uploads.seen.get("f1"));
  const middle = steps.filter((s) => /^processing:([1-9]\d?)$/.test(s));
  if (middle.length < 3) throw new Error(`report.pdf showed too few steps: ${JSON.stringify(steps)}`);

  await p.setInputFiles("#files", [file("huge.iso", 6 * 1024)]);
  await until("huge.iso refused", async () => (await stage("huge.iso"))?.startsWith("error: ") &&
    (await stage("huge.iso")).includes("over the"));

  await p.setInputFiles("#files", [file("video.mov", 1024)]);
  await until("video.mov processing", async () => (await stage("video.mov"))?.startsWith("processing"));
  await p.locator("#uploads tr", { hasText: "video.mov" }).locator("button").click();
  await until("video.mov cancelled", async () => (await stage("video.mov"))?.startsWith("cancelled"));
  if ((await stage("report.pdf")) !== "done 100%") throw new Error("the cancel touched another file");
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  if (process.env.SCREENSHOT) await p.screenshot({ path: process.env.SCREENSHOT });
  console.log("uploads test passed");
} finally {
  await browser.close();
}
