// Herald console: polls /v1/stats and /v1/topics, watches a pattern with
// EventSource, publishes with fetch. Every URL is relative to the page, so
// the console works wherever the hub's router is mounted.
"use strict";

const api = (path) => new URL("../" + path, location.href);
const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem("herald-token") || "";
tokenInput.addEventListener("change", () => {
  sessionStorage.setItem("herald-token", tokenInput.value);
  refresh();
});

function headers(extra = {}) {
  const token = tokenInput.value.trim();
  return token ? { ...extra, Authorization: "Bearer " + token } : extra;
}

async function getJson(path) {
  const res = await fetch(api(path), { headers: headers() });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.message || res.status + " " + res.statusText);
  return body;
}

// Rates from the differences between two stats snapshots.
const history = [];
let previous = null;

function setStatus(text, bad) {
  $("status").textContent = text;
  $("status").className = "status" + (bad ? " bad" : "");
}

async function refresh() {
  try {
    const [stats, topics] = await Promise.all([getJson("v1/stats"), getJson("v1/topics")]);
    $("connections").textContent = stats.connections;
    $("subscriptions").textContent = stats.subscriptions;
    $("queued").textContent = stats.queued_now;
    $("published").textContent = stats.events_dispatched;
    $("delivered").textContent = stats.deliveries_queued;
    $("dropped").textContent = stats.deliveries_dropped;
    const now = performance.now();
    if (previous) {
      const secs = (now - previous.at) / 1000;
      history.push({
        published: (stats.events_dispatched - previous.stats.events_dispatched) / secs,
        delivered: (stats.deliveries_queued - previous.stats.deliveries_queued) / secs,
      });
      if (history.length > 60) history.shift();
    }
    previous = { at: now, stats };
    drawChart();
    const rows = topics.map((t) => {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = t.pattern;
      const n = document.createElement("td");
      n.className = "n";
      n.textContent = t.connections;
      tr.append(name, n);
      return tr;
    });
    $("topics").replaceChildren(...rows);
    setStatus("live · log " + stats.log + " · head " + stats.head, false);
  } catch (err) {
    setStatus(err.message, true);
  }
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const max = Math.max(1, ...history.flatMap((h) => [h.published, h.delivered]));
  const line = (key, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((h, i) => {
      // The newest sample at the right edge; the chart fills leftwards.
      const x = width - 1 - ((history.length - 1 - i) / 59) * (width - 1);
      const y = height - 4 - (h[key] / max) * (height - 8);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  };
  line("published", "#3656d8");
  line("delivered", "#27ae60");
  ctx.fillStyle = "#6b7385";
  ctx.fillText(max.toFixed(1) + "/s", 4, 12);
}

// The inspector reads the stream with fetch rather than EventSource: it
// sees every event type (EventSource delivers named types only to listeners
// registered for them by name) and sends the token in a header.
let watching = null;

function show(event) {
  const li = document.createElement("li");
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = "#" + event.id + " · " + event.type + " · " + new Date().toLocaleTimeString();
  const data = document.createElement("div");
  data.className = "data";
  data.textContent = event.data;
  li.append(meta, data);
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

// Minimal SSE parsing: fields per line, an event per blank line.
function parser(onEvent) {
  let buffer = "";
  let event = { id: "", type: "message", data: [] };
  let lastId = "";
  return (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (event.data.length) onEvent({ id: lastId, type: event.type, data: event.data.join("\n") });
        event = { id: "", type: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") event.data.push(value);
      else if (field === "event") event.type = value;
      else if (field === "id") lastId = value;
    }
  };
}

async function watch(pattern) {
  if (watching) watching.abort();
  const controller = new AbortController();
  watching = controller;
  const status = $("watch-status");
  const url = api("v1/events");
  url.searchParams.set("topic", pattern);
  status.textContent = "connecting…";
  try {
    const res = await fetch(url, { headers: headers({ Accept: "text/event-stream" }), signal: controller.signal });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      status.textContent = "refused: " + (body.message || res.status);
      return;
    }
    const feed = parser((e) => {
      if (e.type === "herald.connected") status.textContent = "watching " + pattern;
      else if (e.type === "herald.refused") status.textContent = "refused for now: " + e.data;
      else show(e);
    });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      feed(value);
    }
    status.textContent = "stream ended";
  } catch (err) {
    if (err.name !== "AbortError") status.textContent = "stream failed: " + err.message;
  }
}

$("watch-form").addEventListener("submit", (e) => {
  e.preventDefault();
  watch($("watch-pattern").value.trim());
});

$("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const status = $("publish-status");
  const raw = $("pub-data").value;
  let data = raw;
  try {
    data = JSON.parse(raw);
  } catch {
    // not JSON: sent as text
  }
  const event = { topic: $("pub-topic").value.trim(), data };
  const type = $("pub-event").value.trim();
  if (type) event.event = type;
  const res = await fetch(api("v1/publish"), {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(event),
  });
  const body = await res.json().catch(() => ({}));
  status.textContent = res.ok ? "published #" + body.id : "refused: " + (body.message || res.status);
  status.className = res.ok ? "note" : "error";
});

refresh();
setInterval(refresh, 1000);
