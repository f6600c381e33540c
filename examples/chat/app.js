// The chat page: one herald-client per room (history for new joiners,
// presence, typing) plus private messages, which reach every connection of
// the user wherever they are and wait while they are offline.
export class Chat {
  constructor(HeraldClient, hub, rooms, doc) {
    Object.assign(this, { HeraldClient, hub, rooms, doc });
    this.members = new Set();
    this.dmItems = new Map(); // dm id -> <li>
    this.receipts = new Map(); // dm id -> who read it
    this.typingTimer = undefined;
    this.lastTypingSent = 0;
    this.$("login").onsubmit = (e) => {
      e.preventDefault();
      this.login(new FormData(e.target).get("name"));
    };
    this.$("send").onsubmit = (e) => {
      e.preventDefault();
      const text = e.target.text.value.trim();
      if (text) this.post("/send", { room: this.room, text });
      e.target.reset();
    };
    this.$("send").text.oninput = () => {
      if (Date.now() - this.lastTypingSent > 1500) {
        this.lastTypingSent = Date.now();
        this.post("/typing", { room: this.room });
      }
    };
    this.$("dm").onsubmit = async (e) => {
      e.preventDefault();
      const to = e.target.to.value.trim();
      const text = e.target.text.value.trim();
      if (to && text) await this.post("/dm", { to, text });
      e.target.text.value = "";
    };
  }

  $(id) {
    return this.doc.getElementById(id);
  }

  async login(name) {
    const r = await fetch("/login", { method: "POST", body: JSON.stringify({ name }) });
    const answer = await r.json();
    if (!r.ok) return alert(answer.message ?? answer.error);
    this.user = answer.user;
    this.token = answer.token;
    this.$("me").textContent = this.user;
    this.$("login").hidden = true;
    this.$("app").hidden = false;
    this.$("rooms").replaceChildren(
      ...this.rooms.map((room) => {
        const b = this.doc.createElement("button");
        b.textContent = `#${room}`;
        b.dataset.room = room;
        b.onclick = () => this.join(room);
        return b;
      }),
    );
    this.join(this.rooms[0]);
  }

  join(room) {
    this.client?.close();
    this.room = room;
    for (const b of this.$("rooms").children) b.setAttribute("aria-pressed", String(b.dataset.room === room));
    this.$("messages").replaceChildren();
    this.members.clear();
    this.renderMembers();
    const c = new this.HeraldClient(this.hub, {
      topics: [`chat/rooms/${room}`],
      token: this.token,
      history: 50,
      // Tabs of one user in one room share a connection.
      shareAcrossTabs: this.user,
    });
    this.client = c;
    c.onStatus((s) => {
      this.$("status").textContent = `(${s})`;
      if (s === "open") this.refreshMembers();
    });
    c.on("chat", (e) => {
      const m = e.json();
      this.line(m.from, m.text);
    });
    c.on("typing", (e) => {
      const { from } = e.json();
      if (from === this.user) return;
      this.$("typing").textContent = `${from} is typing…`;
      clearTimeout(this.typingTimer);
      this.typingTimer = setTimeout(() => (this.$("typing").textContent = ""), 3000);
    });
    c.on("herald.presence", (e) => {
      const { user, action } = e.json();
      this.line(null, `${user} ${action === "join" ? "joined" : "left"}`);
      this.refreshMembers();
    });
    c.on("dm", async (e) => {
      const m = e.json();
      if (this.dmItems.has(e.id)) return;
      this.dm(e.id, `${m.from} → you`, m.text);
      // Read: acknowledged at the hub (it stops waiting for this user) and
      // a receipt for the sender.
      e.ack();
      await this.post("/read", { id: e.id, from: m.from });
    });
    c.on("dm-sent", (e) => {
      const m = e.json();
      if (!this.dmItems.has(m.id)) this.dm(m.id, `you → ${m.to}`, m.text);
    });
    c.on("receipt", (e) => {
      const { id, by } = e.json();
      // A receipt can overtake the copy of the message it is for (the
      // reader may answer before the backend has published that copy).
      this.receipts.set(id, by);
      this.markRead(id);
    });
  }

  line(from, text) {
    const li = this.doc.createElement("li");
    if (from) {
      const who = this.doc.createElement("span");
      who.className = "from";
      who.textContent = from;
      li.append(who, text);
    } else {
      li.className = "system";
      li.textContent = text;
    }
    this.$("messages").append(li);
    li.scrollIntoView({ block: "nearest" });
  }

  dm(id, who, text) {
    const li = this.doc.createElement("li");
    li.dataset.id = id;
    li.textContent = `${who}: ${text}`;
    this.dmItems.set(id, li);
    this.$("dms").append(li);
    this.markRead(id);
  }

  markRead(id) {
    const li = this.dmItems.get(id);
    const by = this.receipts.get(id);
    if (li && by && !li.querySelector(".receipt")) {
      const mark = this.doc.createElement("span");
      mark.className = "receipt";
      mark.textContent = `✓ read by ${by}`;
      li.append(mark);
    }
  }

  async refreshMembers() {
    const r = await fetch(`/members?room=${this.room}`, { headers: { Authorization: `Bearer ${this.token}` } });
    if (!r.ok) return;
    this.members = new Set((await r.json()).members);
    this.renderMembers();
  }

  renderMembers() {
    this.$("members").replaceChildren(
      ...[...this.members].map((m) => {
        const li = this.doc.createElement("li");
        li.textContent = m;
        return li;
      }),
    );
  }

  post(path, body) {
    return fetch(path, {
      method: "POST",
      headers: { Authorization: `Bearer ${this.token}` },
      body: JSON.stringify(body),
    });
  }
}
