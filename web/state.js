// One open chat (Room): its state and what moves it. The seqs that bound
// what is shown (the newest, where the stream resumes; the oldest, where
// older pages start), the sends still pending and their retry state (one
// client_id each, kept across retries), the edit under way, read
// positions, who is online and who is typing; and the calls and stream
// events that change them: History pages, Send/Edit/Delete with their
// retries, MarkRead, Typing, and the live stream (calls.js), where each seq
// is taken once. What it shows goes through view.js; the messages
// themselves are the list's elements there (found by seq), which also keep
// an edit's client_id and a deletion under way (data-edit-id, data-deleting).
//
// The page's own screens are app.js's: a refused credential or a chat that
// cannot be opened goes back to them through `exits` ({needToken(e),
// showStart(error)}).

import { PAGE, Stream, backoff, call, me, retryable, uuid } from "./calls.js";
import * as view from "./view.js";

const TYPING_EVERY = 3000;
const TYPING_SHOWN = 5000;

export class Room {
  constructor(chatId, exits) {
    this.chatId = chatId;
    this.exits = exits;
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
    this.closed = false;
    this.lastTyping = 0;
    this.readTimer = null;
    this.markedRead = 0;
    // What a message's Edit and Delete buttons do.
    this.actions = { edit: (li) => this.startEditing(li), remove: (li) => this.remove(li) };
    this.stream = new Stream(chatId, {
      since: () => this.newest,
      onStatus: view.setConn,
      onOpen: () => this.streamOpened(),
      onMessage: (m) => this.receive(m),
    });
    this.bottom = new view.StickToBottom();
  }

  async open() {
    view.showRoom(this.chatId);
    view.setConn("connecting", "connecting…");
    let page;
    try {
      page = await call("History", { chat_id: this.chatId, limit: PAGE });
    } catch (e) {
      if (e.status === 401) return this.exits.needToken(e);
      if (retryable(e) && !this.closed) {
        view.setHistoryStatus(`${e.message}; retrying…`);
        setTimeout(() => this.closed || this.open(), this.stream.nextWait());
        return;
      }
      return this.exits.showStart(`Cannot open chat ${this.chatId}: ${e.message}`);
    }
    if (this.closed) return;
    const messages = page.messages || [];
    for (const m of messages) this.place(m);
    this.newest = messages.length ? Number(messages[messages.length - 1].seq) : 0;
    this.hasOlder = !!page.has_more;
    this.showHistoryStatus();
    view.scrollToBottom();
    this.loadPeople();
    this.stream.connect();
    this.markReadSoon();
    view.focusComposer();
  }

  close() {
    this.closed = true;
    this.bottom?.stop();
    this.stream.close();
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
    view.setTitle(mine ? view.chatTitle(this.members) : `Chat ${this.chatId}`);
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
    view.renderHistoryStatus(this.hasOlder);
  }

  // ---- the live stream

  streamOpened() {
    // Who came and went while the page was away.
    call("Presence", { chat_id: this.chatId }).then((p) => {
      this.present = new Set(p.user_ids || []);
      this.showPresent();
    }, () => {});
    // Sends that waited for the connection go now (same client_ids).
    for (const p of this.pending.values()) if (p.waiting) this.trySend(p);
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
          const nearBottom = view.nearBottom();
          this.place(m);
          if (nearBottom) view.scrollToBottom();
          this.clearTyping(m.user_id);
        }
        this.showHistoryStatus();
        this.markReadSoon();
        break;
      }
      case "KIND_EDIT": {
        const li = view.find(m.target_seq);
        if (li && !m.deleted) view.setText(li, { ...m, seq: m.target_seq, edited_at: m.sent_at });
        break;
      }
      case "KIND_DELETE":
        view.deleted(view.find(m.target_seq));
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
    view.scrollToBottom();
    this.trySend(p);
  }

  async trySend(p) {
    p.waiting = false;
    clearTimeout(p.timer);
    view.setState(p.li, "pending", p.attempts ? "retrying…" : "sending…");
    try {
      const r = await call("Send", { chat_id: this.chatId, user_id: me.user, client_id: p.clientId, text: p.text });
      this.confirm(p, r.message);
    } catch (e) {
      if (!this.pending.has(p.clientId)) return; // its echo confirmed it meanwhile
      if (e.status === 401) {
        view.setState(p.li, "failed", `${e.id}: ${e.detail}`);
        return;
      }
      if (retryable(e)) {
        // The same client_id: the server stores it once however often it arrives.
        const wait = backoff(p.attempts++, 1000);
        view.setState(p.li, "pending", `not sent yet (${e.id}); retrying in ${Math.ceil(wait / 1000)} s`);
        p.waiting = true;
        p.timer = setTimeout(() => p.waiting && this.trySend(p), wait);
        return;
      }
      this.pending.delete(p.clientId);
      view.setState(p.li, "failed", `not sent: ${e.id}: ${e.detail}`);
    }
  }

  confirm(p, m) {
    if (!this.pending.has(p.clientId)) return;
    this.pending.delete(p.clientId);
    clearTimeout(p.timer);
    const existing = view.find(m.seq);
    if (existing && existing !== p.li) {
      view.drop(p.li);
      return;
    }
    view.sent(p.li, m, this.actions);
    this.showReceipts();
    this.showHistoryStatus();
  }

  async edit(seq, text) {
    this.stopEditing();
    const li = view.find(seq);
    // One client_id for every attempt of this edit, even if another starts meanwhile.
    const clientId = li?.dataset.editId || uuid();
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await call("Edit", { chat_id: this.chatId, user_id: me.user, client_id: clientId, seq: String(seq), text });
        if (li) view.setText(li, r.message);
        return;
      } catch (e) {
        if (!retryable(e) || this.closed) {
          if (li) view.setState(li, "failed", `not edited: ${e.id}: ${e.detail}`);
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
        view.deleted(li);
        return;
      } catch (e) {
        if (!retryable(e) || this.closed) {
          view.setState(li, "failed", `not deleted: ${e.id}: ${e.detail}`);
          return;
        }
        await new Promise((ok) => setTimeout(ok, backoff(attempt, 1000)));
      }
    }
  }

  startEditing(li) {
    this.editing = Number(li.dataset.seq);
    li.dataset.editId = uuid();
    view.editInComposer(li);
  }

  stopEditing() {
    this.editing = null;
    view.sendInComposer();
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
    if (this.closed || view.pageHidden() || this.newest <= this.markedRead) return;
    const seq = this.newest;
    call("MarkRead", { chat_id: this.chatId, user_id: me.user, seq: String(seq) }).then(
      () => (this.markedRead = Math.max(this.markedRead, seq)),
      () => {},
    );
  }

  /// After the reader scrolled: the bottom held or let go, and near the top
  /// the older page.
  scrolled() {
    this.bottom.scrolled();
    if (view.nearTop()) this.loadOlder();
  }

  async loadOlder() {
    if (!this.hasOlder || this.loadingOlder || this.oldest === null) return;
    this.loadingOlder = true;
    view.setHistoryStatus("Loading older messages…");
    try {
      const page = await call("History", { chat_id: this.chatId, limit: PAGE, before_seq: String(this.oldest) });
      view.keepingPlace(() => {
        for (const m of page.messages || []) this.place(m);
      });
      this.hasOlder = !!page.has_more;
    } catch (e) {
      view.setHistoryStatus(`${e.message}`);
      this.loadingOlder = false;
      return;
    }
    this.loadingOlder = false;
    this.showHistoryStatus();
  }

  // ---- the messages shown

  /// Shows a message (or a pending one) where it belongs, once; returns its element.
  place(m, pending = false) {
    if (!pending && view.find(m.seq)) return view.find(m.seq);
    const li = view.place(m, pending, this.actions);
    if (!pending) {
      const seq = Number(m.seq);
      if (this.oldest === null || seq < this.oldest) this.oldest = seq;
    }
    return li;
  }

  showReceipts() {
    let read = 0;
    for (const [user, seq] of this.readers) if (user !== me.user) read = Math.max(read, seq);
    view.renderReceipts(read);
  }

  showPresent() {
    view.renderPresent([...this.present].filter((u) => u !== me.user).sort());
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
    view.renderTyping([...this.typing.keys()].sort());
  }
}
