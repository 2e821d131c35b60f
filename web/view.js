// The chat room's DOM: the message list in seq order (pending ones last),
// each message's element and its Edit/Delete buttons, the header's
// connection state, the title, presence and typing lines, scrolling (and
// staying at the bottom), and the composer. It shows what state.js decides
// and calls no service; clicks on a message's buttons go back to the room
// through the `actions` it is given ({edit(li), remove(li)}).
//
// Text is only ever set as text (textContent), never parsed as HTML.
//
// Nothing here runs at import: every function reads the DOM when called.

import { me } from "./calls.js";

export const $ = (id) => document.getElementById(id);

/// The connection's state in the header (and on the body, for the style).
export function setConn(state, text) {
  document.body.dataset.state = state;
  $("conn").textContent = text;
}

/// A chat's title from its members.
export function chatTitle(members) {
  const others = members.filter((m) => m !== me.user);
  if (members.length === 0) return "open chat";
  return others.length ? others.join(", ") : "just you";
}

/// The room in place of the start screen, empty, loading `chatId`.
export function showRoom(chatId) {
  document.body.dataset.view = "room";
  $("start").hidden = true;
  $("room").hidden = false;
  $("messages").replaceChildren();
  $("typing").textContent = "";
  $("present").textContent = "";
  $("room-title").textContent = `Chat ${chatId}`;
  $("history-status").textContent = "Loading…";
}

export function setTitle(text) {
  $("room-title").textContent = text;
}

export function setHistoryStatus(text) {
  $("history-status").textContent = text;
}

export function renderHistoryStatus(hasOlder) {
  $("history-status").textContent = hasOlder
    ? "Scroll up for older messages"
    : $("messages").children.length ? "The beginning of the chat" : "No messages yet";
}

/// Whether the page is hidden (another tab, minimised): nothing is read then.
export const pageHidden = () => document.hidden;

// ---- the message list, in seq order (pending ones last)

export function find(seq) {
  return $("messages").querySelector(`li[data-seq="${Number(seq)}"]`);
}

/// Adds a new element for a message (or a pending one) where it belongs;
/// returns it. The caller has checked it is not shown yet.
export function place(m, pending, actions) {
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
  fill(li, m, actions);
  if (pending) {
    li.classList.add("pending");
    $("messages").append(li);
  } else {
    position(li);
  }
  regroup(li);
  return li;
}

/// A pending message's element, now sent as `m`: filled in and moved to its seq.
export function sent(li, m, actions) {
  li.classList.remove("pending");
  fill(li, m, actions);
  setState(li, "sent", "sent");
  position(li);
}

function fill(li, m, actions) {
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
  setText(li, m);
  if (mine && m.seq && !li.querySelector(".actions")) {
    const buttons = document.createElement("span");
    buttons.className = "actions";
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit";
    edit.textContent = "Edit";
    edit.setAttribute("aria-label", "edit this message");
    edit.onclick = () => actions.edit(li);
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "Delete";
    del.setAttribute("aria-label", "delete this message");
    del.onclick = () => actions.remove(li);
    buttons.append(edit, del);
    li.querySelector(".meta").append(buttons);
  }
}

export function setText(li, m) {
  li.querySelector(".bubble").textContent = m.text || "";
  const edited = Number(m.edited_at || 0);
  li.querySelector(".edited").textContent = edited ? "(edited)" : "";
}

export function setState(li, state, text) {
  li.classList.toggle("pending", state === "pending");
  li.classList.toggle("failed", state === "failed");
  li.dataset.state = state;
  li.querySelector(".state").textContent = text;
}

/// Takes an element from the list (a pending one whose message is shown already).
export function drop(li) {
  li.remove();
}

/// A deleted message goes (if shown), and the groups around it are redone.
export function deleted(li) {
  li?.remove();
  regroupAll();
}

function position(li) {
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
  regroup(li);
}

/// Consecutive messages by one sender are one group: only the first shows the sender.
function regroup(li) {
  for (const el of [li, li.nextElementSibling]) {
    if (!el) continue;
    const prev = el.previousElementSibling;
    el.classList.toggle("first", !prev || prev.dataset.user !== el.dataset.user);
  }
}

function regroupAll() {
  for (const li of $("messages").children) regroup(li);
}

/// Your sent messages, marked read up to `read` (the furthest another member has read).
export function renderReceipts(read) {
  for (const li of $("messages").querySelectorAll("li.mine[data-state='sent'], li.mine:not([data-state])")) {
    if (!li.dataset.seq) continue;
    const seen = Number(li.dataset.seq) <= read;
    li.dataset.state = "sent";
    li.querySelector(".state").textContent = seen ? "read" : "sent";
  }
}

/// The other members online, sorted.
export function renderPresent(others) {
  $("present").textContent = others.length ? `online: ${others.join(", ")}` : "";
}

/// The other members typing, sorted.
export function renderTyping(users) {
  $("typing").textContent = users.length ? `${users.join(", ")} ${users.length > 1 ? "are" : "is"} typing…` : "";
}

// ---- scrolling

export function nearBottom() {
  const s = $("scroller");
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

/// Close enough to the top to load the older page.
export function nearTop() {
  return $("scroller").scrollTop < 120;
}

export function scrollToBottom() {
  const s = $("scroller");
  s.scrollTop = s.scrollHeight;
}

/// Runs `add` (which puts older messages above) and keeps what the reader
/// was looking at where it was.
export function keepingPlace(add) {
  const scroller = $("scroller");
  const before = scroller.scrollHeight;
  add();
  scroller.scrollTop += scroller.scrollHeight - before;
}

/// One room's hold on the bottom: until the reader scrolls up, the newest
/// message stays in view, whatever changes size around it (the header, the
/// typing line, a phone's keyboard).
export class StickToBottom {
  constructor() {
    this.atBottom = true;
    this.resized = new ResizeObserver(() => this.atBottom && scrollToBottom());
    this.resized.observe($("scroller"));
    this.resized.observe($("messages"));
  }

  /// After a scroll: held again at the bottom, or let go above it.
  scrolled() {
    this.atBottom = nearBottom();
  }

  stop() {
    this.resized.disconnect();
  }
}

// ---- the composer

export function focusComposer() {
  $("text").focus();
}

/// The composer edits `li`'s text: Save instead of Send.
export function editInComposer(li) {
  $("text").value = li.querySelector(".bubble").textContent;
  $("send").textContent = "Save";
  $("text").focus();
}

/// The composer sends new messages again.
export function sendInComposer() {
  $("send").textContent = "Send";
}
