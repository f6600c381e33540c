// The chat example in Debian's Chromium (tests/examples.rs): two users in a
// room see each other's messages, typing and presence; a private message is
// read with a receipt; one sent while its reader is offline waits for them;
// a late joiner gets the room's history.
//
// Usage: node chat.mjs HUB_URL PAGE_URL
import { launch, until } from "./lib.mjs";

const [, pageUrl] = process.argv.slice(2);

const browser = await launch();
const errors = [];
async function login(name) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 650 } });
  const p = await context.newPage();
  p.on("pageerror", (e) => errors.push(String(e)));
  await p.goto(pageUrl);
  await p.fill("#login input[name=name]", name);
  await p.click("#login button");
  await until(`${name} connected`, async () => (await p.locator("#status").textContent()) === "(open)");
  return p;
}
const text = (p, sel) => p.locator(sel).innerText();
const has = async (p, sel, s) => (await text(p, sel)).includes(s);

try {
  const alice = await login("alice");
  const bob = await login("bob");
  await until("alice to see bob in the room", async () => has(alice, "#members", "bob"));
  await until("bob joined, in alice's room", async () => has(alice, "#messages", "bob joined"));

  await alice.fill("#send input[name=text]", "hello bob");
  await alice.click("#send button");
  await until("bob to read alice", async () => has(bob, "#messages", "alicehello bob"));

  await bob.type("#send input[name=text]", "hi");
  await until("alice to see bob typing", async () => (await text(alice, "#typing")) === "bob is typing…");

  await alice.fill("#dm input[name=to]", "bob");
  await alice.fill("#dm input[name=text]", "secret plan");
  await alice.click("#dm button");
  await until("bob's private message", async () => has(bob, "#dms", "alice → you: secret plan"));
  await until("alice's read receipt", async () => has(alice, "#dms", "you → bob: secret plan✓ read by bob"));

  // Bob leaves; a message to him waits until he is back.
  await bob.context().close();
  await until("bob left", async () => has(alice, "#messages", "bob left"));
  await until("bob out of the member list", async () => !(await has(alice, "#members", "bob")));
  await alice.fill("#dm input[name=text]", "are you there?");
  await alice.click("#dm button");
  await until("alice's own copy", async () => has(alice, "#dms", "you → bob: are you there?"));
  const bobAgain = await login("bob");
  await until("the waiting message", async () => has(bobAgain, "#dms", "alice → you: are you there?"));
  await until("its receipt", async () => has(alice, "#dms", "you → bob: are you there?✓ read by bob"));

  // A late joiner reads the room's history.
  const carol = await login("carol");
  await until("history for carol", async () => has(carol, "#messages", "alicehello bob"));
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  if (process.env.SCREENSHOT) await alice.screenshot({ path: process.env.SCREENSHOT });
  console.log("chat test passed");
} finally {
  await browser.close();
}
