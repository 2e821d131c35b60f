// The chat service's web client: a start screen (your user id, your chats
// with unread counts, start or open a chat) and a chat room. This module is
// the page itself, which index.html loads: the start screen (sign-in, the
// inbox, New, open by id), routing (the fragment decides which screen), and
// the wiring of the page's events to the room open at the time. The rest is
// in modules of their own, so that each can be read alone:
// - calls.js: who the calls are made as, the HTTP/JSON calls, and the
//   WebSocket stream with its reconnects (no DOM);
// - state.js: an open chat (Room): its messages' seqs, pending sends and
//   their retries, edits, deletions, read positions, presence, typing;
// - view.js: the room's DOM: the message list, scrolling, the composer.
//
// Text is only ever set as text (textContent), never parsed as HTML.
//
// Deep links: #chat=ID opens a chat; #user=ID and #token=JWT sign in (the
// fragment is never sent to a server). The user id is remembered in
// localStorage, a token only for the tab (sessionStorage).

import { PAGE, call, me, setCredentials } from "./calls.js";
import { Room } from "./state.js";
import { $, chatTitle, setConn } from "./view.js";

function signIn(user, token) {
  setCredentials(user, token);
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

/// The chat open (state.js), or null on the start screen.
let room = null;

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
  room.scrolled();
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
    room = new Room(chat, { needToken, showStart });
    room.open();
  } else {
    showStart();
  }
}

window.addEventListener("hashchange", route);
route();
