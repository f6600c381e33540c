// The dashboard's page logic: samples into sparklines, alerts into a list,
// connection status and quality into the header. Redraws once per frame at
// most, however fast samples come.
const KEEP = 120;

export class Dashboard {
  constructor(herald, doc) {
    this.doc = doc;
    this.series = new Map();
    this.samples = 0;
    this.dirty = false;
    herald.on("sample", (e) => this.sample(e.json()));
    herald.on("alert", (e) => this.alert(e.json()));
    herald.onStatus((s) => {
      const el = doc.getElementById("status");
      el.textContent = s;
      el.dataset.status = s;
    });
    herald.onQuality((q) => (doc.getElementById("quality").textContent = `quality: ${q}`));
  }

  sample({ name, value }) {
    this.samples += 1;
    const points = this.series.get(name) ?? [];
    points.push(value);
    if (points.length > KEEP) points.shift();
    this.series.set(name, points);
    if (!this.dirty) {
      this.dirty = true;
      requestAnimationFrame(() => this.draw());
    }
  }

  alert({ level, text }) {
    const li = this.doc.createElement("li");
    li.textContent = `${new Date().toLocaleTimeString()} ${level}: ${text}`;
    this.doc.getElementById("alerts").prepend(li);
  }

  draw() {
    this.dirty = false;
    for (const [name, points] of this.series) {
      const card = this.doc.querySelector(`[data-metric="${name}"]`);
      if (!card) continue;
      card.querySelector(".value").textContent = points[points.length - 1];
      const canvas = card.querySelector("canvas");
      const w = (canvas.width = canvas.clientWidth);
      const h = (canvas.height = canvas.clientHeight);
      const ctx = canvas.getContext("2d");
      const lo = Math.min(...points);
      const hi = Math.max(...points);
      ctx.strokeStyle = "#2060c0";
      ctx.lineWidth = 2;
      ctx.beginPath();
      points.forEach((v, i) => {
        const x = (i / (KEEP - 1)) * w;
        const y = h - 4 - ((v - lo) / (hi - lo || 1)) * (h - 8);
        i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
      });
      ctx.stroke();
    }
  }
}
