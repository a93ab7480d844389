/*!
 * <herald-inbox> 1.0: Herald's in-app inbox as a custom element. One file, no framework.
 * Served by Herald at /static/herald-inbox-1.js (this major version; cached for a year) and
 * /static/herald-inbox.js (always the newest; revalidated). Documented in docs/console.md.
 *
 * Attributes
 *   user       the user id (required)
 *   token      an inbox token from POST /v1/users/{id}/inbox-token (required; set it again
 *              when the element fires `herald-inbox:token-expired`)
 *   base-url   where Herald is, e.g. https://herald.example.com ("" or absent: this origin)
 *   page-size  items per page (default 20)
 *   lang       built-in strings: en (default), de, fr, es; the `strings` property overrides
 *   align      "end" (default: the list opens towards the left, for a bell at the right
 *              of a bar) or "start" (towards the right)
 *   open       present while the list is open
 *
 * Events (bubbling, composed; details in event.detail)
 *   herald-inbox:unread         {count}            the unread count changed
 *   herald-inbox:item           {item}             a new item arrived live
 *   herald-inbox:read           {id | null}        one item (or, with null, all) marked read
 *   herald-inbox:connection     {state}            "live", "reconnecting" or "offline"
 *   herald-inbox:token-expired  {}                 give the element a new `token`
 *
 * Styling: CSS custom properties --herald-inbox-accent, --herald-inbox-bg, --herald-inbox-ink,
 * --herald-inbox-muted, --herald-inbox-line, --herald-inbox-width, --herald-inbox-font, and
 * parts: bell, badge, panel, header, list, item, item-title, item-body, item-time, mark-read,
 * mark-all, more, empty, status.
 */
const STRINGS = {
  en: { title: "Notifications", bell: "Notifications", unread: (n) => `${n} unread`, markAll: "Mark all read",
        markRead: "Mark read", more: "Show more", empty: "Nothing here yet.", reconnecting: "Reconnecting…",
        offline: "Offline: new items will show when the connection is back." },
  de: { title: "Benachrichtigungen", bell: "Benachrichtigungen", unread: (n) => `${n} ungelesen`,
        markAll: "Alle als gelesen markieren", markRead: "Gelesen", more: "Mehr anzeigen", empty: "Noch nichts da.",
        reconnecting: "Verbinde neu…", offline: "Offline: Neues erscheint, sobald die Verbindung zurück ist." },
  fr: { title: "Notifications", bell: "Notifications", unread: (n) => `${n} non lues`, markAll: "Tout marquer comme lu",
        markRead: "Marquer comme lu", more: "Afficher plus", empty: "Rien pour l’instant.",
        reconnecting: "Reconnexion…", offline: "Hors ligne : les nouveautés s’afficheront au retour de la connexion." },
  es: { title: "Notificaciones", bell: "Notificaciones", unread: (n) => `${n} sin leer`, markAll: "Marcar todo como leído",
        markRead: "Marcar como leído", more: "Ver más", empty: "Nada por ahora.", reconnecting: "Reconectando…",
        offline: "Sin conexión: lo nuevo aparecerá al volver la conexión." },
};

const CSS = `
:host { --_accent: var(--herald-inbox-accent, #3557d6); --_bg: var(--herald-inbox-bg, #fff);
  --_ink: var(--herald-inbox-ink, #1c2330); --_muted: var(--herald-inbox-muted, #5d6878);
  --_line: var(--herald-inbox-line, #dde2ea); position: relative; display: inline-block;
  font: var(--herald-inbox-font, 14px/1.45 system-ui, sans-serif); color: var(--_ink); }
button { font: inherit; cursor: pointer; }
.bell { position: relative; background: transparent; border: 1px solid var(--_line); border-radius: 999px;
  width: 2.5rem; height: 2.5rem; display: grid; place-items: center; color: var(--_ink); }
.bell:focus-visible, button:focus-visible { outline: 3px solid var(--_accent); outline-offset: 2px; }
.bell svg { width: 1.25rem; height: 1.25rem; }
.badge { position: absolute; top: -.3rem; right: -.3rem; min-width: 1.2rem; height: 1.2rem; padding: 0 .3rem;
  border-radius: 999px; background: var(--_accent); color: #fff; font-size: .72rem; font-weight: 700;
  display: grid; place-items: center; }
.badge[hidden] { display: none; }
.panel { position: absolute; right: 0; top: calc(100% + .4rem); width: var(--herald-inbox-width, min(24rem, 92vw));
  max-height: 70vh; overflow: auto; background: var(--_bg); border: 1px solid var(--_line); border-radius: 10px;
  box-shadow: 0 10px 30px rgb(16 24 40 / 18%); z-index: 1000; }
.panel[hidden] { display: none; }
:host([align="start"]) .panel { right: auto; left: 0; }
.header { display: flex; justify-content: space-between; align-items: center; padding: .6rem .8rem;
  border-bottom: 1px solid var(--_line); position: sticky; top: 0; background: var(--_bg); }
.header h2 { font-size: 1rem; margin: 0; }
.link { background: none; border: 0; color: var(--_accent); padding: .2rem; }
ul { list-style: none; margin: 0; padding: 0; }
li { padding: .6rem .8rem; border-bottom: 1px solid var(--_line); display: grid; gap: .15rem; }
li.unread { background: color-mix(in srgb, var(--_accent) 7%, var(--_bg)); }
li.unread .item-title::before { content: "●"; color: var(--_accent); margin-right: .35rem; font-size: .7rem; vertical-align: 1px; }
.item-title { font-weight: 600; }
.item-body { color: var(--_ink); white-space: pre-wrap; }
.row { display: flex; justify-content: space-between; align-items: center; gap: .5rem; }
.item-time { color: var(--_muted); font-size: .8rem; }
.empty, .status { padding: 1rem .8rem; color: var(--_muted); text-align: center; margin: 0; }
.status { font-size: .8rem; padding: .4rem .8rem; }
.status[hidden], .more[hidden] { display: none; }
.more { width: 100%; padding: .6rem; background: none; border: 0; color: var(--_accent); }
`;

const BELL = '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" aria-hidden="true">' +
  '<path d="M6 8a6 6 0 1 1 12 0c0 7 3 9 3 9H3s3-2 3-9"/><path d="M10.3 21a1.94 1.94 0 0 0 3.4 0"/></svg>';

let sheet = null;
function styles() {
  if (sheet === null && "adoptedStyleSheets" in Document.prototype) {
    sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS); // a constructed sheet: allowed under a CSP without 'unsafe-inline'
  }
  return sheet;
}

export class HeraldInbox extends HTMLElement {
  static observedAttributes = ["user", "token", "base-url", "lang", "page-size"];

  #items = new Map(); // id -> item, the list shown (newest first by created_at)
  #unread = 0;
  #cursor = null;
  #source = null;
  #lastEventId = null;
  #retry = 0;
  #retryTimer = null;
  #strings = null;
  #connected = false;
  #dropped = false;

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    const css = styles();
    if (css) root.adoptedStyleSheets = [css];
    root.innerHTML = `
      <button class="bell" part="bell" aria-haspopup="true" aria-expanded="false">${BELL}
        <span class="badge" part="badge" hidden></span></button>
      <section class="panel" part="panel" hidden>
        <div class="header" part="header"><h2></h2><button class="link mark-all" part="mark-all"></button></div>
        <p class="status" part="status" role="status" hidden></p>
        <ul part="list"></ul>
        <p class="empty" part="empty" hidden></p>
        <button class="more" part="more" hidden></button>
      </section>`;
    this.$ = (selector) => root.querySelector(selector);
    this.$(".bell").addEventListener("click", () => this.toggle());
    this.$(".mark-all").addEventListener("click", () => this.markAllRead());
    this.$(".more").addEventListener("click", () => this.#loadPage());
    this.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.hasAttribute("open")) { this.toggle(false); this.$(".bell").focus(); }
    });
  }

  /** Strings to use instead of the built-in ones (any subset of the keys of STRINGS.en). */
  set strings(value) { this.#strings = value; this.#renderText(); this.#renderList(); }
  get strings() { return { ...(STRINGS[this.getAttribute("lang")] || STRINGS.en), ...(this.#strings || {}) }; }
  get unreadCount() { return this.#unread; }
  get items() { return [...this.#items.values()]; }

  connectedCallback() { this.#connected = true; this.#renderText(); this.#start(); }
  disconnectedCallback() { this.#connected = false; this.#close(); }
  attributeChangedCallback(name, before, after) {
    if (!this.#connected || before === after) return;
    if (name === "lang") { this.#renderText(); this.#renderList(); return; }
    if (name === "token") { this.#close(); this.#open(); return; } // a new token: reconnect, keep the list
    this.#start();
  }

  toggle(open = !this.hasAttribute("open")) {
    this.toggleAttribute("open", open);
    this.$(".panel").hidden = !open;
    this.$(".bell").setAttribute("aria-expanded", String(open));
  }

  async markRead(id) {
    const item = this.#items.get(id);
    if (!item || item.read) return;
    const response = await this.#fetch(`/inbox/${encodeURIComponent(id)}/read`, { method: "POST" });
    if (!response.ok) return;
    item.read = true;
    this.#setUnread(this.#unread - 1);
    this.#renderList();
    this.#emit("read", { id });
  }

  async markAllRead() {
    const response = await this.#fetch("/inbox/read-all", { method: "POST" });
    if (!response.ok) return;
    for (const item of this.#items.values()) item.read = true;
    this.#setUnread(0);
    this.#renderList();
    this.#emit("read", { id: null });
  }

  // -- loading and live updates ----------------------------------------------------------

  async #start() {
    this.#close();
    this.#items.clear();
    this.#cursor = null;
    this.#lastEventId = null;
    if (!this.getAttribute("user") || !this.getAttribute("token")) return;
    await this.#loadPage();
    this.#open();
  }

  #url(path) {
    const base = (this.getAttribute("base-url") || "").replace(/\/$/, "");
    return `${base}/v1/users/${encodeURIComponent(this.getAttribute("user"))}${path}`;
  }

  #fetch(path, init = {}) {
    return fetch(this.#url(path), {
      ...init,
      headers: { Authorization: `Bearer ${this.getAttribute("token")}`, ...(init.headers || {}) },
    });
  }

  async #loadPage() {
    const size = Number(this.getAttribute("page-size")) || 20;
    const query = new URLSearchParams({ limit: String(size) });
    if (this.#cursor) query.set("cursor", this.#cursor);
    const response = await this.#fetch(`/inbox?${query}`);
    if (!response.ok) return;
    const page = await response.json();
    for (const item of page.items) if (!this.#items.has(item.id)) this.#items.set(item.id, item);
    if (this.#lastEventId === null && page.items.length && !this.#cursor) this.#lastEventId = page.items[0].id;
    this.#cursor = page.next_cursor;
    this.#setUnread(page.unread_count);
    this.#renderList();
  }

  /** The newest page merged in: what the stream's replay (Last-Event-ID) covers too, and
   *  what it cannot, when no event id was known yet. An item is never shown twice. */
  async #catchUp() {
    const response = await this.#fetch(`/inbox?limit=${Number(this.getAttribute("page-size")) || 20}`);
    if (!response.ok) return;
    const page = await response.json();
    for (const item of page.items) if (!this.#items.has(item.id)) this.#items.set(item.id, item);
    this.#setUnread(page.unread_count);
    this.#renderList();
  }

  #open() {
    if (!this.getAttribute("token") || !window.EventSource) return;
    const query = new URLSearchParams({ token: this.getAttribute("token") });
    // The browser sends Last-Event-ID itself when it reconnects a stream; a stream opened
    // anew (after the server went away for good, or a new token) names it in the URL.
    if (this.#lastEventId) query.set("last_event_id", this.#lastEventId);
    const source = new EventSource(this.#url(`/inbox/stream?${query}`));
    this.#source = source;
    source.addEventListener("open", () => {
      this.#retry = 0;
      this.#status("live");
    });
    // Subscribed: what is stored from now on comes through the stream. The newest page is
    // read once more after a drop, and when there was no event id to replay from (the first
    // page was empty), for what was stored while the stream was away or connecting.
    source.addEventListener("ready", () => {
      if (this.#dropped || this.#lastEventId === null) this.#catchUp();
      this.#dropped = false;
    });
    source.addEventListener("inbox", (event) => this.#arrived(event));
    source.addEventListener("expired", () => { this.#close(); this.#emit("token-expired", {}); });
    source.addEventListener("error", () => {
      this.#dropped = true;
      if (source.readyState === EventSource.CLOSED && this.#source === source) this.#reopenLater();
      else this.#status("reconnecting");
    });
  }

  #reopenLater() {
    this.#close();
    this.#status(navigator.onLine === false ? "offline" : "reconnecting");
    const delay = Math.min(30000, 500 * 2 ** this.#retry++) * (0.8 + Math.random() * 0.4);
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  #close() {
    clearTimeout(this.#retryTimer);
    if (this.#source) this.#source.close();
    this.#source = null;
  }

  #arrived(event) {
    if (event.lastEventId) this.#lastEventId = event.lastEventId;
    const item = JSON.parse(event.data);
    if (this.#items.has(item.id)) return; // already shown (a replay after a reconnect)
    this.#items = new Map([[item.id, item], ...this.#items]);
    if (!item.read) this.#setUnread(this.#unread + 1);
    this.#renderList();
    this.#emit("item", { item });
  }

  // -- rendering -----------------------------------------------------------------------

  #setUnread(count) {
    const next = Math.max(0, count);
    const changed = next !== this.#unread;
    this.#unread = next;
    const badge = this.$(".badge");
    badge.textContent = next > 99 ? "99+" : String(next);
    badge.hidden = next === 0;
    this.$(".bell").setAttribute("aria-label", `${this.strings.bell}, ${this.strings.unread(next)}`);
    if (changed) this.#emit("unread", { count: next });
  }

  #status(state) {
    const line = this.$(".status");
    line.hidden = state === "live";
    line.textContent = state === "offline" ? this.strings.offline : this.strings.reconnecting;
    this.#emit("connection", { state });
  }

  #renderText() {
    const s = this.strings;
    this.$(".header h2").textContent = s.title;
    this.$(".mark-all").textContent = s.markAll;
    this.$(".more").textContent = s.more;
    this.$(".empty").textContent = s.empty;
    this.#setUnread(this.#unread);
  }

  #renderList() {
    const s = this.strings;
    const list = this.$("ul");
    const items = [...this.#items.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    list.replaceChildren(...items.map((item) => {
      const li = document.createElement("li");
      li.setAttribute("part", "item");
      li.dataset.id = item.id;
      if (!item.read) li.className = "unread";
      const title = document.createElement("span");
      title.className = "item-title";
      title.setAttribute("part", "item-title");
      title.textContent = item.title || ""; // text, never markup
      li.append(title);
      if (item.body) {
        const body = document.createElement("span");
        body.className = "item-body";
        body.setAttribute("part", "item-body");
        body.textContent = item.body;
        li.append(body);
      }
      const row = document.createElement("div");
      row.className = "row";
      const time = document.createElement("time");
      time.className = "item-time";
      time.setAttribute("part", "item-time");
      time.dateTime = item.created_at;
      time.textContent = new Date(item.created_at).toLocaleString(this.getAttribute("lang") || undefined);
      row.append(time);
      if (!item.read) {
        const mark = document.createElement("button");
        mark.className = "link";
        mark.setAttribute("part", "mark-read");
        mark.textContent = s.markRead;
        mark.addEventListener("click", () => this.markRead(item.id));
        row.append(mark);
      }
      li.append(row);
      return li;
    }));
    this.$(".empty").hidden = items.length > 0;
    this.$(".more").hidden = !this.#cursor;
  }

  #emit(name, detail) {
    this.dispatchEvent(new CustomEvent(`herald-inbox:${name}`, { detail, bubbles: true, composed: true }));
  }
}

if (!customElements.get("herald-inbox")) customElements.define("herald-inbox", HeraldInbox);
