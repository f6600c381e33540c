// Sends each chosen file with fetch and shows the backend's progress for it,
// read from the file's own topic on Herald. One connection covers every
// file of the page: it subscribes to `uploads/{session}/*`.
export class Uploads {
  constructor(HeraldClient, hub, doc) {
    this.doc = doc;
    this.session = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
    this.seen = new Map(); // file -> every pct shown, for the curious
    this.herald = new HeraldClient(hub, { topics: [`uploads/${this.session}/*`], shareAcrossTabs: false });
    this.herald.on("progress", (e) => this.show(e.json()));
    this.ready = new Promise((resolve) => this.herald.onStatus((s) => s === "open" && resolve()));
    doc.getElementById("files").addEventListener("change", (e) => {
      for (const f of e.target.files) this.upload(f);
      e.target.value = "";
    });
    this.next = 0;
  }

  async upload(file) {
    await this.ready;
    const id = `f${++this.next}`;
    const tr = this.doc.createElement("tr");
    tr.dataset.file = id;
    tr.innerHTML = `<td class="name"></td><td><progress max="100" value="0"></progress></td>
      <td class="stage">waiting</td><td><button>Cancel</button></td>`;
    tr.querySelector(".name").textContent = file.name;
    this.doc.getElementById("uploads").append(tr);
    const abort = new AbortController();
    tr.querySelector("button").onclick = () => {
      abort.abort();
      fetch(`/uploads/${this.session}/${id}/cancel`, { method: "POST" });
    };
    try {
      await fetch(`/uploads/${this.session}/${id}`, {
        method: "POST",
        body: file,
        headers: { "X-File-Name": file.name },
        signal: abort.signal,
      });
    } catch {
      // Cancelled: the backend reports it on the stream.
    }
  }

  show({ file, name, stage, pct, error }) {
    const tr = this.doc.querySelector(`tr[data-file="${file}"]`);
    if (!tr) return;
    const seen = this.seen.get(file) ?? [];
    seen.push(`${stage}:${pct ?? ""}`);
    this.seen.set(file, seen);
    if (pct !== undefined) tr.querySelector("progress").value = pct;
    const cell = tr.querySelector(".stage");
    cell.textContent = error ? `${stage}: ${error}` : `${stage}${pct !== undefined ? ` ${pct}%` : ""}`;
    cell.className = `stage ${stage}`;
    if (stage === "done" || stage === "error" || stage === "cancelled") tr.querySelector("button")?.remove();
  }
}
