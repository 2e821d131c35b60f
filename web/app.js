// The chat service's web client: a start screen (your user id, your chats
// with unread counts, start or open a chat) and a chat room.
//
// How it talks to the service, on the page's own origin:
// - calls (New, History, Send, Edit, Delete, ListChats, MarkRead, ReadState,
//   Presence, Typing) are HTTP/JSON POSTs; each answers for itself, so a
//   message's fate is known: sent (with its seq), failed (a permanent error,
//   shown with its id) or retried with the same client_id (the network, 429
//   or 5xx), which the server stores once however often it arrives;
// - the room follows the chat over the WebSocket Connect with events=all and
//   since_seq = the newest seq the page has, so nothing between the History
//   page and the live stream is missed or shown twice; it reconnects by
//   itself with backoff and jitter, again from the newest seq it has.
//
// Text is only ever set as text (textContent), never parsed as HTML.
//
// Deep links: #chat=ID opens a chat; #user=ID and #token=JWT sign in (the
// fragment is never sent to a server). The user id is remembered in
// localStorage, a token only for the tab (sessionStorage).

const $ = (id) => document.getElementById(id);
const PAGE = 50;
const TYPING_EVERY = 3000;
const TYPING_SHOWN = 5000;

const me = {
  user: localStorage.getItem("chat.user") || "",
  token: sessionStorage.getItem("chat.token") || "",
};

/// A refused or failed call: `status` 0 is the network.
class CallError extends Error {
  constructor(status, body) {
    super(`${body.id || "error"}: ${body.detail || "HTTP " + status}`);
    this.status = status;
    this.id = body.id || (status === 0 ? "chat.Network" : "chat.Error");
    this.detail = body.detail || "";
  }
}

/// Worth retrying with the same client_id: the network, 429, 5xx.
const retryable = (e) => e.status === 0 || e.status === 429 || e.status >= 500;

async function call(method, body) {
  const headers = { "content-type": "application/json" };
  if (me.token) headers.authorization = "Bearer " + me.token;
  let resp;
  try {
    resp = await fetch(`chat/Chat/${method}`, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (e) {
    throw new CallError(0, { detail: `the server cannot be reached (${e.message})` });
  }
  const json = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new CallError(resp.status, json);
  return json;
}

/// Backoff with jitter: about `base` doubled per attempt, at most 30 s.
function backoff(attempt, base = 500) {
  const ms = Math.min(30000, base * 2 ** attempt);
  return ms / 2 + Math.random() * (ms / 2);
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/// The subject of a JWT, for display and as the user id (the server checks it).
function subject(jwt) {
  try {
    const b64 = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, "=")), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes)).sub || "";
  } catch (e) {
    return "";
  }
}

function setConn(state, text) {
  document.body.dataset.state = state;
  $("conn").textContent = text;
}

function signIn(user, token) {
  me.token = token || "";
  me.user = user || subject(me.token) || "";
  if (me.token) sessionStorage.setItem("chat.token", me.token);
  else sessionStorage.removeItem("chat.token");
  if (me.user) localStorage.setItem("chat.user", me.user);
  $("who").textContent = me.user ? `as ${me.user}` : "";
}

/// A call refused for the credential: back to the start, asking for a token.
function needToken(e) {
  const error = `${e.id}: ${e.detail} — give a valid token.`;
  if (document.body.dataset.view !== "start") showStart(error, false);
  $("start-error").textContent = error;
  $("token-box").open = true;
  $("token").focus();
}

// ---------------------------------------------------------------- start

let inboxCursor = "";
let inboxTimer = null;

function showStart(error = "", inbox = true) {
  // Back from a chat: the list shown before it is stale (its unread counts
  // above all), so it goes until the fresh one is there.
  if (room) $("inbox").replaceChildren();
  if (room) room.close();
  room = null;
  document.body.dataset.view = "start";
  $("room").hidden = true;
  $("start").hidden = false;
  $("user").value = me.user;
  $("token").value = me.token;
  $("lobby").hidden = !me.user;
  $("start-error").textContent = error;
  setConn("idle", "");
  if (me.user && inbox) refreshInbox(true);
}

function chatTitle(members) {
  const others = members.filter((m) => m !== me.user);
  if (members.length === 0) return "open chat";
  return others.length ? others.join(", ") : "just you";
}

async function refreshInbox(fromStart) {
  clearTimeout(inboxTimer);
  if (document.body.dataset.view !== "start" || !me.user) return;
  try {
    const page = await call("ListChats", { user_id: me.user, limit: PAGE, cursor: fromStart ? "" : inboxCursor });
    const list = $("inbox");
    if (fromStart) list.replaceChildren();
    for (const c of page.chats || []) list.append(inboxEntry(c));
    inboxCursor = page.next_cursor || "";
    $("inbox-more").hidden = !inboxCursor;
    $("inbox-status").textContent = list.children.length ? "" : "No chats yet: start one below.";
  } catch (e) {
    if (e.status === 401) return needToken(e);
    $("inbox-status").textContent = `Cannot list your chats (${e.message}).`;
  }
  // Unread counts move while the start screen is open.
  if (fromStart) inboxTimer = setTimeout(() => refreshInbox(true), 10000);
}

function inboxEntry(c) {
  const li = document.createElement("li");
  li.dataset.chat = c.chat_id;
  const a = document.createElement("a");
  a.href = `#chat=${c.chat_id}`;
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = chatTitle(c.user_ids || []);
  const preview = document.createElement("span");
  preview.className = "preview";
  const last = c.last_message;
  preview.textContent = last ? `${last.user_id}: ${last.text}` : "no messages yet";
  a.append(title, preview);
  const unread = Number(c.unread || 0);
  if (unread > 0) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = String(unread);
    badge.setAttribute("aria-label", `${unread} unread`);
    a.append(badge);
  }
  li.append(a);
  return li;
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("user").value.trim(), $("token").value.trim());
  showStart();
});

$("inbox-more").addEventListener("click", () => refreshInbox(false));

$("new-chat").addEventListener("submit", async (event) => {
  event.preventDefault();
  const others = $("members").value.split(",").map((s) => s.trim()).filter(Boolean);
  const user_ids = others.length ? [me.user, ...others] : [];
  try {
    const made = await call("New", { user_ids });
    location.hash = `chat=${made.chat_id}`;
  } catch (e) {
    if (e.status === 401) return needToken(e);
    $("start-error").textContent = e.message;
  }
});

$("open-chat").addEventListener("submit", (event) => {
  event.preventDefault();
  location.hash = `chat=${$("chat-id").value.trim()}`;
});

// ---------------------------------------------------------------- room

let room = null;

class Room {
  constructor(chatId) {
    this.chatId = chatId;
    this.newest = 0; // the highest seq of the log seen: where the stream resumes
    this.oldest = null; // the lowest message seq shown: where older pages start
    this.hasOlder = false;
    this.loadingOlder = false;
    this.pending = new Map(); // client_id -> {text, li, attempts, timer}
    this.editing = null; // the seq being edited from the composer
    this.readers = new Map(); // user -> read seq
    this.present = new Set();
    this.typing = new Map(); // user -> timer
    this.members = [];
    this.socket = null;
    this.attempt = 0;
    this.closed = false;
    this.lastTyping = 0;
    this.readTimer = null;
    this.markedRead = 0;
    // Until the reader scrolls up, the newest message stays in view,
    // whatever changes size around it (the header, the typing line, a phone's keyboard).
    this.atBottom = true;
    this.resized = new ResizeObserver(() => this.atBottom && this.scrollToBottom());
    this.resized.observe($("scroller"));
    this.resized.observe($("messages"));
  }

  async open() {
    document.body.dataset.view = "room";
    $("start").hidden = true;
    $("room").hidden = false;
    $("messages").replaceChildren();
    $("typing").textContent = "";
    $("present").textContent = "";
    $("room-title").textContent = `Chat ${this.chatId}`;
    $("history-status").textContent = "Loading…";
    setConn("connecting", "connecting…");
    let page;
    try {
      page = await call("History", { chat_id: this.chatId, limit: PAGE });
    } catch (e) {
      if (e.status === 401) return needToken(e);
      if (retryable(e) && !this.closed) {
        $("history-status").textContent = `${e.message}; retrying…`;
        setTimeout(() => this.closed || this.open(), backoff(this.attempt++));
        return;
      }
      return showStart(`Cannot open chat ${this.chatId}: ${e.message}`);
    }
    if (this.closed) return;
    const messages = page.messages || [];
    for (const m of messages) this.place(m);
    this.newest = messages.length ? Number(messages[messages.length - 1].seq) : 0;
    this.hasOlder = !!page.has_more;
    this.showHistoryStatus();
    this.scrollToBottom();
    this.loadPeople();
    this.connect();
    this.markReadSoon();
    $("text").focus();
  }

  close() {
    this.closed = true;
    this.resized?.disconnect();
    if (this.socket) this.socket.close(1000);
    for (const p of this.pending.values()) clearTimeout(p.timer);
    clearTimeout(this.readTimer);
  }

  async loadPeople() {
    const [inbox, readers, present] = await Promise.allSettled([
      call("ListChats", { user_id: me.user, limit: 500 }),
      call("ReadState", { chat_id: this.chatId }),
      call("Presence", { chat_id: this.chatId }),
    ]);
    if (this.closed) return;
    const mine = inbox.status === "fulfilled" && (inbox.value.chats || []).find((c) => c.chat_id === this.chatId);
    if (mine) this.members = mine.user_ids || [];
    $("room-title").textContent = mine ? chatTitle(this.members) : `Chat ${this.chatId}`;
    if (readers.status === "fulfilled") {
      for (const p of readers.value.positions || []) this.readers.set(p.user_id, Number(p.read_seq || 0));
      this.showReceipts();
    }
    if (present.status === "fulfilled") {
      this.present = new Set(present.value.user_ids || []);
      this.showPresent();
    }
  }

  showHistoryStatus() {
    $("history-status").textContent = this.hasOlder
      ? "Scroll up for older messages"
      : $("messages").children.length ? "The beginning of the chat" : "No messages yet";
  }

  // ---- the live stream

  connect() {
    if (this.closed) return;
    const query = new URLSearchParams({ chat_id: this.chatId, user_id: me.user, since_seq: String(this.newest), events: "all" });
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}${location.pathname.replace(/[^/]*$/, "")}chat/Chat/Connect?${query}`;
    let socket;
    try {
      socket = me.token ? new WebSocket(url, ["chat.v1", "bearer." + me.token]) : new WebSocket(url, ["chat.v1"]);
    } catch (e) {
      setConn("failed", `cannot open a WebSocket: ${e.message}`);
      return;
    }
    this.socket = socket;
    let opened = false;
    setConn("connecting", this.attempt ? "reconnecting…" : "connecting…");
    socket.onopen = () => {
      opened = true;
      this.attempt = 0;
      setConn("open", "connected");
      // Who came and went while the page was away.
      call("Presence", { chat_id: this.chatId }).then((p) => {
        this.present = new Set(p.user_ids || []);
        this.showPresent();
      }, () => {});
      // Sends that waited for the connection go now (same client_ids).
      for (const p of this.pending.values()) if (p.waiting) this.trySend(p);
    };
    socket.onmessage = (event) => this.receive(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (this.closed || socket !== this.socket) return;
      if (event.code === 4401) {
        setConn("unauthenticated", "your token is invalid or has expired: sign in with a fresh one");
        return;
      }
      if (event.code === 4403) {
        setConn("forbidden", "you are not a member of this chat");
        return;
      }
      const wait = backoff(this.attempt++);
      const why = opened ? `disconnected (${event.code})` : "cannot connect";
      setConn("closed", `${why}; reconnecting in ${Math.ceil(wait / 1000)} s…`);
      setTimeout(() => this.connect(), wait);
    };
  }

  receive(m) {
    const kind = m.kind || "KIND_MESSAGE";
    const seq = Number(m.seq || 0);
    if (seq) {
      if (seq <= this.newest) return; // never twice
      this.newest = seq;
    }
    switch (kind) {
      case "KIND_MESSAGE": {
        if (m.deleted) return;
        const mine = m.user_id === me.user && this.pending.get(m.client_id);
        if (mine) this.confirm(mine, m);
        else {
          const nearBottom = this.nearBottom();
          this.place(m);
          if (nearBottom) this.scrollToBottom();
          this.clearTyping(m.user_id);
        }
        this.showHistoryStatus();
        this.markReadSoon();
        break;
      }
      case "KIND_EDIT": {
        const li = this.find(m.target_seq);
        if (li && !m.deleted) this.setText(li, { ...m, seq: m.target_seq, edited_at: m.sent_at });
        break;
      }
      case "KIND_DELETE":
        this.find(m.target_seq)?.remove();
        this.regroupAll();
        break;
      case "KIND_READ":
        this.readers.set(m.user_id, Math.max(this.readers.get(m.user_id) || 0, Number(m.target_seq || 0)));
        this.showReceipts();
        break;
      case "KIND_TYPING":
        if (m.user_id !== me.user) this.showTyping(m.user_id);
        break;
      case "KIND_JOIN":
        this.present.add(m.user_id);
        this.showPresent();
        break;
      case "KIND_LEAVE":
        this.present.delete(m.user_id);
        this.showPresent();
        break;
    }
  }

  // ---- sending

  send(text) {
    if (this.editing !== null) return this.edit(this.editing, text);
    const p = { clientId: uuid(), text, attempts: 0, li: null, timer: null, waiting: false };
    p.li = this.place({ client_id: p.clientId, user_id: me.user, text, sent_at: String(Math.floor(Date.now() / 1000)) }, true);
    this.pending.set(p.clientId, p);
    this.scrollToBottom();
    this.trySend(p);
  }

  async trySend(p) {
    p.waiting = false;
    clearTimeout(p.timer);
    this.setState(p.li, "pending", p.attempts ? "retrying…" : "sending…");
    try {
      const r = await call("Send", { chat_id: this.chatId, user_id: me.user, client_id: p.clientId, text: p.text });
      this.confirm(p, r.message);
    } catch (e) {
      if (!this.pending.has(p.clientId)) return; // its echo confirmed it meanwhile
      if (e.status === 401) {
        this.setState(p.li, "failed", `${e.id}: ${e.detail}`);
        return;
      }
      if (retryable(e)) {
        // The same client_id: the server stores it once however often it arrives.
        const wait = backoff(p.attempts++, 1000);
        this.setState(p.li, "pending", `not sent yet (${e.id}); retrying in ${Math.ceil(wait / 1000)} s`);
        p.waiting = true;
        p.timer = setTimeout(() => p.waiting && this.trySend(p), wait);
        return;
      }
      this.pending.delete(p.clientId);
      this.setState(p.li, "failed", `not sent: ${e.id}: ${e.detail}`);
    }
  }

  confirm(p, m) {
    if (!this.pending.has(p.clientId)) return;
    this.pending.delete(p.clientId);
    clearTimeout(p.timer);
    const existing = this.find(m.seq);
    if (existing && existing !== p.li) {
      p.li.remove();
      return;
    }
    p.li.classList.remove("pending");
    this.fill(p.li, m);
    this.setState(p.li, "sent", "sent");
    this.position(p.li);
    this.showReceipts();
    this.showHistoryStatus();
  }

  async edit(seq, text) {
    this.stopEditing();
    const li = this.find(seq);
    // One client_id for every attempt of this edit, even if another starts meanwhile.
    const clientId = li?.dataset.editId || uuid();
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await call("Edit", { chat_id: this.chatId, user_id: me.user, client_id: clientId, seq: String(seq), text });
        if (li) this.setText(li, r.message);
        return;
      } catch (e) {
        if (!retryable(e) || this.closed) {
          if (li) this.setState(li, "failed", `not edited: ${e.id}: ${e.detail}`);
          return;
        }
        await new Promise((ok) => setTimeout(ok, backoff(attempt, 1000)));
      }
    }
  }

  async remove(li) {
    if (li.dataset.deleting) return; // one delete per message, however often clicked
    li.dataset.deleting = "1";
    const clientId = uuid();
    for (let attempt = 0; ; attempt++) {
      try {
        await call("Delete", { chat_id: this.chatId, user_id: me.user, client_id: clientId, seq: li.dataset.seq });
        li.remove();
        this.regroupAll();
        return;
      } catch (e) {
        if (!retryable(e) || this.closed) {
          this.setState(li, "failed", `not deleted: ${e.id}: ${e.detail}`);
          return;
        }
        await new Promise((ok) => setTimeout(ok, backoff(attempt, 1000)));
      }
    }
  }

  startEditing(li) {
    this.editing = Number(li.dataset.seq);
    li.dataset.editId = uuid();
    $("text").value = li.querySelector(".bubble").textContent;
    $("send").textContent = "Save";
    $("text").focus();
  }

  stopEditing() {
    this.editing = null;
    $("send").textContent = "Send";
  }

  typed() {
    const now = Date.now();
    if (now - this.lastTyping < TYPING_EVERY) return;
    this.lastTyping = now;
    call("Typing", { chat_id: this.chatId, user_id: me.user }).catch(() => {});
  }

  // ---- reading

  markReadSoon() {
    clearTimeout(this.readTimer);
    this.readTimer = setTimeout(() => this.markRead(), 300);
  }

  markRead() {
    if (this.closed || document.hidden || this.newest <= this.markedRead) return;
    const seq = this.newest;
    call("MarkRead", { chat_id: this.chatId, user_id: me.user, seq: String(seq) }).then(
      () => (this.markedRead = Math.max(this.markedRead, seq)),
      () => {},
    );
  }

  async loadOlder() {
    if (!this.hasOlder || this.loadingOlder || this.oldest === null) return;
    this.loadingOlder = true;
    $("history-status").textContent = "Loading older messages…";
    const scroller = $("scroller");
    try {
      const page = await call("History", { chat_id: this.chatId, limit: PAGE, before_seq: String(this.oldest) });
      const before = scroller.scrollHeight;
      for (const m of page.messages || []) this.place(m);
      // Keep what the reader was looking at where it was.
      scroller.scrollTop += scroller.scrollHeight - before;
      this.hasOlder = !!page.has_more;
    } catch (e) {
      $("history-status").textContent = `${e.message}`;
      this.loadingOlder = false;
      return;
    }
    this.loadingOlder = false;
    this.showHistoryStatus();
  }

  // ---- the message list, in seq order (pending ones last)

  find(seq) {
    return $("messages").querySelector(`li[data-seq="${Number(seq)}"]`);
  }

  /// Adds a message (or a pending one) where it belongs; returns its element.
  place(m, pending = false) {
    if (!pending && this.find(m.seq)) return this.find(m.seq);
    const li = document.createElement("li");
    const meta = document.createElement("div");
    meta.className = "meta";
    const sender = document.createElement("span");
    sender.className = "sender";
    const time = document.createElement("time");
    const edited = document.createElement("span");
    edited.className = "edited";
    meta.append(sender, " ", time, " ", edited);
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    const state = document.createElement("div");
    state.className = "state";
    li.append(meta, bubble, state);
    this.fill(li, m);
    if (pending) {
      li.classList.add("pending");
      $("messages").append(li);
    } else {
      this.position(li);
      const seq = Number(m.seq);
      if (this.oldest === null || seq < this.oldest) this.oldest = seq;
    }
    this.regroup(li);
    return li;
  }

  fill(li, m) {
    if (m.seq) li.dataset.seq = String(Number(m.seq));
    li.dataset.user = m.user_id;
    li.dataset.clientId = m.client_id || "";
    const mine = m.user_id === me.user;
    li.classList.toggle("mine", mine);
    li.querySelector(".sender").textContent = m.user_id;
    const at = new Date(Number(m.sent_at || 0) * 1000);
    const time = li.querySelector("time");
    time.dateTime = at.toISOString();
    time.title = at.toLocaleString();
    time.textContent = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    this.setText(li, m);
    if (mine && m.seq && !li.querySelector(".actions")) {
      const actions = document.createElement("span");
      actions.className = "actions";
      const edit = document.createElement("button");
      edit.type = "button";
      edit.className = "edit";
      edit.textContent = "Edit";
      edit.setAttribute("aria-label", "edit this message");
      edit.onclick = () => this.startEditing(li);
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.textContent = "Delete";
      del.setAttribute("aria-label", "delete this message");
      del.onclick = () => this.remove(li);
      actions.append(edit, del);
      li.querySelector(".meta").append(actions);
    }
  }

  setText(li, m) {
    li.querySelector(".bubble").textContent = m.text || "";
    const edited = Number(m.edited_at || 0);
    li.querySelector(".edited").textContent = edited ? "(edited)" : "";
  }

  setState(li, state, text) {
    li.classList.toggle("pending", state === "pending");
    li.classList.toggle("failed", state === "failed");
    li.dataset.state = state;
    li.querySelector(".state").textContent = text;
  }

  position(li) {
    const list = $("messages");
    const seq = Number(li.dataset.seq);
    let after = null;
    for (const other of list.children) {
      if (other === li) continue;
      if (!other.dataset.seq || Number(other.dataset.seq) > seq) {
        after = other;
        break;
      }
    }
    list.insertBefore(li, after);
    this.regroup(li);
  }

  /// Consecutive messages by one sender are one group: only the first shows the sender.
  regroup(li) {
    for (const el of [li, li.nextElementSibling]) {
      if (!el) continue;
      const prev = el.previousElementSibling;
      el.classList.toggle("first", !prev || prev.dataset.user !== el.dataset.user);
    }
  }

  regroupAll() {
    for (const li of $("messages").children) this.regroup(li);
  }

  showReceipts() {
    let read = 0;
    for (const [user, seq] of this.readers) if (user !== me.user) read = Math.max(read, seq);
    for (const li of $("messages").querySelectorAll("li.mine[data-state='sent'], li.mine:not([data-state])")) {
      if (!li.dataset.seq) continue;
      const seen = Number(li.dataset.seq) <= read;
      li.dataset.state = "sent";
      li.querySelector(".state").textContent = seen ? "read" : "sent";
    }
  }

  showPresent() {
    const others = [...this.present].filter((u) => u !== me.user).sort();
    $("present").textContent = others.length ? `online: ${others.join(", ")}` : "";
  }

  showTyping(user) {
    clearTimeout(this.typing.get(user));
    this.typing.set(user, setTimeout(() => this.clearTyping(user), TYPING_SHOWN));
    this.renderTyping();
  }

  clearTyping(user) {
    clearTimeout(this.typing.get(user));
    if (this.typing.delete(user)) this.renderTyping();
  }

  renderTyping() {
    const users = [...this.typing.keys()].sort();
    $("typing").textContent = users.length ? `${users.join(", ")} ${users.length > 1 ? "are" : "is"} typing…` : "";
  }

  nearBottom() {
    const s = $("scroller");
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  scrollToBottom() {
    const s = $("scroller");
    s.scrollTop = s.scrollHeight;
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!room || !text.trim()) return;
  room.send(text);
  $("text").value = "";
  $("text").focus();
});

$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  } else if (event.key === "Escape" && room && room.editing !== null) {
    room.stopEditing();
    $("text").value = "";
  }
});

$("text").addEventListener("input", () => room && room.typed());

$("scroller").addEventListener("scroll", () => {
  if (!room) return;
  room.atBottom = room.nearBottom();
  if ($("scroller").scrollTop < 120) room.loadOlder();
});

document.addEventListener("visibilitychange", () => room && room.markReadSoon());

// ---------------------------------------------------------------- routing

function route() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has("user") || hash.has("token")) {
    signIn(hash.get("user") || me.user, hash.get("token") || me.token);
    if (hash.has("token")) {
      // Kept for the tab (sessionStorage), not in the address bar or its history.
      hash.delete("token");
      history.replaceState(null, "", `${location.pathname}${location.search}#${hash}`);
    }
  } else {
    signIn(me.user, me.token);
  }
  const chat = hash.get("chat");
  if (me.user && chat) {
    if (room && room.chatId === chat) return;
    if (room) room.close();
    room = new Room(chat);
    room.open();
  } else {
    showStart();
  }
}

window.addEventListener("hashchange", route);
route();
