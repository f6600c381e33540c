// Renders the `queue` topic's retained state: one row per job, kept current
// by the snapshot and then the merge patches herald-client applies. Rows are
// updated in place, so a button stays where the user is about to click.
export class JobTable {
  constructor(herald, doc) {
    this.herald = herald;
    this.doc = doc;
    herald.onState(() => this.render());
    herald.onStatus((s) => {
      const el = doc.getElementById("status");
      el.textContent = s;
      el.dataset.status = s;
      doc.getElementById("tabs").textContent = herald.isFollower
        ? "(sharing another tab's connection)"
        : "";
    });
  }

  render() {
    const jobs = [...this.herald.state("queue")]
      .map(([id, { value }]) => ({ id, ...value }))
      .sort((a, b) => a.created - b.created);
    const body = this.doc.getElementById("jobs");
    const rows = new Map([...body.children].map((tr) => [tr.dataset.job, tr]));
    jobs.forEach((job, i) => {
      let tr = rows.get(job.id);
      if (!tr) {
        tr = this.doc.createElement("tr");
        tr.dataset.job = job.id;
        tr.innerHTML = `<td class="name"></td><td class="state"></td>
          <td><progress max="100"></progress> <span class="pct"></span></td><td class="actions"></td>`;
        tr.querySelector(".name").textContent = job.name;
      }
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] ?? null);
      rows.delete(job.id);
      const state = tr.querySelector(".state");
      state.textContent = job.status;
      state.className = `state ${job.status}`;
      state.title = job.error ?? "";
      tr.querySelector("progress").value = job.progress;
      tr.querySelector(".pct").textContent = `${job.progress}%`;
      const actions = tr.querySelector(".actions");
      const active = job.status === "queued" || job.status === "running";
      if (active && !actions.firstChild) {
        const cancel = this.doc.createElement("button");
        cancel.textContent = "Cancel";
        cancel.setAttribute("hx-post", `/jobs/${job.id}/cancel`);
        cancel.setAttribute("hx-swap", "none");
        actions.append(cancel);
        // Let htmx wire up the new button.
        globalThis.htmx?.process(cancel);
      } else if (!active) {
        actions.replaceChildren();
      }
    });
    for (const gone of rows.values()) gone.remove();
  }
}
