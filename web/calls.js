// The web client's way to the service, on the page's own origin: who the
// calls are made as, the calls themselves, and the live stream. No DOM here:
// what the page shows of a call is for its callers (state.js, app.js).
//
// - calls (New, History, Send, Edit, Delete, ListChats, MarkRead, ReadState,
//   Presence, Typing) are HTTP/JSON POSTs; each answers for itself, so a
//   message's fate is known: sent (with its seq), failed (a permanent error,
//   shown with its id) or retried with the same client_id (the network, 429
//   or 5xx), which the server stores once however often it arrives;
// - a room follows its chat over the WebSocket Connect (Stream, below) with
//   events=all and since_seq = the newest seq the page has, so nothing
//   between the History page and the live stream is missed or shown twice;
//   it reconnects by itself with backoff and jitter, again from the newest
//   seq it has.
//
// The user id is remembered in localStorage, a token only for the tab
// (sessionStorage).

/// A page of History or ListChats.
export const PAGE = 50;

/// Who the calls are made as: the user id they carry, and the bearer token.
export const me = {
  user: localStorage.getItem("chat.user") || "",
  token: sessionStorage.getItem("chat.token") || "",
};

/// Sets who the calls are made as (the user id defaults to the token's
/// subject), and remembers it.
export function setCredentials(user, token) {
  me.token = token || "";
  me.user = user || subject(me.token) || "";
  if (me.token) sessionStorage.setItem("chat.token", me.token);
  else sessionStorage.removeItem("chat.token");
  if (me.user) localStorage.setItem("chat.user", me.user);
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
export const retryable = (e) => e.status === 0 || e.status === 429 || e.status >= 500;

export async function call(method, body) {
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
export function backoff(attempt, base = 500) {
  const ms = Math.min(30000, base * 2 ** attempt);
  return ms / 2 + Math.random() * (ms / 2);
}

/// A client_id: one per message, edit or deletion, kept across its retries.
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/// One chat's live stream: the WebSocket Connect from `since()` (the newest
/// seq the page has, asked at each connect), reopened by itself with backoff
/// and jitter until closed. What it hears goes to its owner:
/// - `onStatus(state, text)`: the connection's state, for the header;
/// - `onOpen()`: the socket is open (after `onStatus("open", …)`);
/// - `onMessage(m)`: a message or event of the chat, as sent.
/// `attempt` counts the tries in a row that failed; the room's History
/// retries count on it too (`nextWait`), so a connect after them says
/// "reconnecting…".
export class Stream {
  constructor(chatId, { since, onStatus, onOpen, onMessage }) {
    this.chatId = chatId;
    this.since = since;
    this.onStatus = onStatus;
    this.onOpen = onOpen;
    this.onMessage = onMessage;
    this.socket = null;
    this.attempt = 0;
    this.closed = false;
  }

  /// How long to wait before the next try, counting one more failed one.
  nextWait() {
    return backoff(this.attempt++);
  }

  connect() {
    if (this.closed) return;
    const query = new URLSearchParams({ chat_id: this.chatId, user_id: me.user, since_seq: String(this.since()), events: "all" });
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}${location.pathname.replace(/[^/]*$/, "")}chat/Chat/Connect?${query}`;
    let socket;
    try {
      socket = me.token ? new WebSocket(url, ["chat.v1", "bearer." + me.token]) : new WebSocket(url, ["chat.v1"]);
    } catch (e) {
      this.onStatus("failed", `cannot open a WebSocket: ${e.message}`);
      return;
    }
    this.socket = socket;
    let opened = false;
    this.onStatus("connecting", this.attempt ? "reconnecting…" : "connecting…");
    socket.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.onStatus("open", "connected");
      this.onOpen();
    };
    socket.onmessage = (event) => this.onMessage(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (this.closed || socket !== this.socket) return;
      if (event.code === 4401) {
        this.onStatus("unauthenticated", "your token is invalid or has expired: sign in with a fresh one");
        return;
      }
      if (event.code === 4403) {
        this.onStatus("forbidden", "you are not a member of this chat");
        return;
      }
      const wait = this.nextWait();
      const why = opened ? `disconnected (${event.code})` : "cannot connect";
      this.onStatus("closed", `${why}; reconnecting in ${Math.ceil(wait / 1000)} s…`);
      setTimeout(() => this.connect(), wait);
    };
  }

  close() {
    this.closed = true;
    if (this.socket) this.socket.close(1000);
  }
}
