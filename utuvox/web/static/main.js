// The page: log in, the rooms, the conversations, the people, file transfers. Every user-written string
// reaches the page through text nodes (render.js); nothing here parses HTML.

import { Client, roomKey } from "./client.js";
import { el, eventNode, formatSize } from "./render.js";
import { Cancelled, download, upload } from "./transfers.js";

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 200; // events per scroll-back request
const APPEND_BATCH = 50; // live events appended per task
// Lines live in blocks of at most BLOCK lines, and blocks in groups of at most GROUP blocks. A block or
// group out of view is skipped by layout and paint as a whole (content-visibility), so ten thousand lines
// of history cost the browser about what the twenty groups and the few blocks on screen do. Older
// history comes in one block per task.
const BLOCK = 25;
const GROUP = 20;
const LINE_PX = 25; // a line's usual height: a block's size until it is first laid out
// How close to the top of a conversation (in screens) the next page of history is fetched: early enough
// that a reader scrolling up rarely reaches the top before it is there.
const NEAR_TOP = 2;
const ROOMS_REFRESH_MS = 3000; // rooms made by others show up within this while the page is in view

const state = {
  client: null,
  me: null,
  rooms: new Map(), // room key -> {name, members, view}
  privates: new Map(), // user key -> {name, view}
  current: null, // the view shown
  statusTimer: null,
  peopleTimer: null,
  roomsTimer: null,
};

// --- status line ------------------------------------------------------------------------------------

function status(text, clearAfterMs = 0) {
  clearTimeout(state.statusTimer);
  $("status").textContent = text;
  if (clearAfterMs) state.statusTimer = setTimeout(() => ($("status").textContent = ""), clearAfterMs);
}

// --- logging in -------------------------------------------------------------------------------------

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
}

$("login-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const register = submit.submitter?.value === "register";
  const username = $("username").value.trim();
  const password = $("password").value;
  const error = $("login-error");
  if (!username || !password) {
    error.textContent = "Enter a username and a password.";
    return;
  }
  error.textContent = "";
  const buttons = $("login-form").querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  state.client ??= new Client(wsUrl(), { onEvent, onState });
  try {
    await state.client.signIn(username, password, register);
  } catch (exc) {
    error.textContent = exc.message || "Could not log in.";
    return;
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
  $("password").value = "";
  enterChat();
});

function enterChat() {
  state.me = state.client.user;
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("me").textContent = `Signed in as ${state.me}`;
  refreshRooms().then(() => {
    const first = $("room-list").querySelector("button");
    (first ?? $("new-room-name")).focus();
  });
  // The server announces no new rooms: a page in view asks for the list every few seconds (it is kept in
  // the server's memory), a page in the background not at all, and once more when it comes back.
  state.roomsTimer = setInterval(() => document.hidden || refreshRooms(), ROOMS_REFRESH_MS);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    refreshRooms();
    if (state.current?.unread) {
      state.current.unread = 0;
      renderRoomList();
    }
  });
}

$("logout").addEventListener("click", async () => {
  try {
    await state.client.call({ type: "quit" });
  } catch {
    // the server closes the connection after its goodbye
  }
  state.client.close();
  location.reload();
});

// --- connection state -------------------------------------------------------------------------------

function onState(kind, detail) {
  if (kind === "reconnecting") {
    document.body.classList.add("offline");
    status("Connection lost. Reconnecting…");
  } else if (kind === "reconnected") {
    document.body.classList.remove("offline");
    status("Reconnected.", 3000);
    refreshRooms();
    refreshPeople();
    refreshFiles();
  } else if (kind === "closed" && state.me) {
    status(`Disconnected: ${detail.replace(/\.$/, "")}. Reload the page to log in again.`);
    setComposer();
  }
}

// --- rooms --------------------------------------------------------------------------------------------

function roomEntry(name) {
  const key = roomKey(name);
  let entry = state.rooms.get(key);
  if (!entry) {
    entry = { name, members: 0, view: null, button: null };
    state.rooms.set(key, entry);
  }
  return entry;
}

async function refreshRooms() {
  if (!state.client.ready) return; // after a reconnect, "reconnected" refreshes
  let list;
  try {
    list = await state.client.request({ type: "list_all_rooms" });
  } catch {
    return;
  }
  const present = new Set();
  for (const room of list.rooms) {
    const entry = roomEntry(room.name);
    entry.members = room.members;
    present.add(roomKey(room.name));
  }
  for (const [key, entry] of state.rooms) {
    if (!present.has(key) && !entry.view) state.rooms.delete(key);
  }
  renderRoomList();
}

function badge(count) {
  return count ? el("span", { class: "unread" }, String(count), el("span", { class: "visually-hidden" }, " unread"))
    : null;
}

function fillConversationButton(button, name, view, extra) {
  button.replaceChildren(el("span", { class: "name" }, name), " ",
    el("span", null, extra, view ? badge(view.unread) : null));
  button.setAttribute("aria-current", String(view !== null && view === state.current));
}

function renderRoomList() {
  const list = $("room-list");
  const keys = [...state.rooms.keys()].sort();
  const items = [];
  for (const key of keys) {
    const entry = state.rooms.get(key);
    if (!entry.button) {
      entry.button = el("button", { type: "button", onclick: () => openRoom(entry.name) });
      entry.item = el("li", null, entry.button);
    }
    entry.button.title = `${entry.members} member${entry.members === 1 ? "" : "s"} online`;
    fillConversationButton(entry.button, entry.name, entry.view,
      entry.view ? el("span", { class: "joined" }, "joined ") : null);
    items.push(entry.item);
  }
  // Re-order only when the set or order changed: moving a focused button would drop the focus.
  const same = items.length === list.children.length && items.every((item, i) => list.children[i] === item);
  if (!same) list.replaceChildren(...items);
  renderPrivateList();
  updateTitle();
}

function renderPrivateList() {
  const list = $("private-list");
  const items = [];
  for (const entry of state.privates.values()) {
    if (!entry.button) {
      entry.button = el("button", { type: "button", onclick: () => openPrivate(entry.name) });
      entry.item = el("li", null, entry.button);
    }
    fillConversationButton(entry.button, entry.name, entry.view, null);
    items.push(entry.item);
  }
  const same = items.length === list.children.length && items.every((item, i) => list.children[i] === item);
  if (!same) list.replaceChildren(...items);
}

function updateTitle() {
  let unread = 0;
  for (const entry of [...state.rooms.values(), ...state.privates.values()]) unread += entry.view?.unread ?? 0;
  document.title = unread ? `(${unread}) UtuVox` : "UtuVox";
}

async function openRoom(name) {
  closeDrawers();
  const entry = roomEntry(name);
  if (!entry.view) {
    let joined;
    try {
      joined = await state.client.request({ type: "join", room: name });
    } catch (exc) {
      status(`Could not join ${name}: ${exc.message}`, 6000);
      return;
    }
    showJoined(joined);
  } else {
    show(entry.view);
  }
}

function showJoined(joined) {
  const entry = roomEntry(joined.room);
  entry.name = joined.room;
  const view = entry.view ?? makeView("room", joined.room);
  entry.view = view;
  const first = joined.history.length ? joined.history[0].seq : joined.last_seq + 1;
  view.oldest = Math.min(view.oldest ?? first, first);
  view.more = view.oldest > 1;
  if (!view.log.querySelector("[data-seq]")) for (const event of joined.history) append(view, event);
  renderRoomList();
  show(view);
  refreshRooms();
}

$("new-room-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const input = $("new-room-name");
  const name = input.value.trim();
  const error = $("new-room-error");
  error.textContent = "";
  if (!name) {
    input.focus();
    return;
  }
  try {
    const joined = await state.client.request({ type: "create", room: name });
    input.value = "";
    closeDrawers();
    showJoined(joined);
  } catch (exc) {
    if (exc.code === "room_exists") {
      input.value = "";
      openRoom(name);
    } else {
      error.textContent = exc.message;
    }
  }
});

// --- private conversations ------------------------------------------------------------------------------

function privateEntry(name) {
  const key = roomKey(name);
  let entry = state.privates.get(key);
  if (!entry) {
    entry = { name, view: null, button: null };
    state.privates.set(key, entry);
  }
  entry.view ??= makeView("private", name);
  return entry;
}

function openPrivate(name) {
  closeDrawers();
  const entry = privateEntry(name);
  renderPrivateList();
  show(entry.view);
}

// --- conversations (views) ------------------------------------------------------------------------------

function makeView(kind, name) {
  const top = el("div", { class: "begin" },
    kind === "room" ? "" : `Private messages with ${name} are not stored: they last as long as this page.`);
  const log = el("div", { class: "log", role: "log", "aria-label": "Messages", tabindex: "0", hidden: true }, top);
  const view = {
    kind, name, log, top, unread: 0, oldest: null, more: false, loading: false, queue: [], flushing: false,
    lastBlock: null, lastGroup: null,
  };
  if (kind === "room") {
    log.addEventListener("scroll", () => {
      if (log.scrollTop < NEAR_TOP * log.clientHeight) loadOlder(view);
    }, { passive: true });
  }
  $("logs").append(log);
  return view;
}

function show(view) {
  const previous = state.current;
  if (previous && previous !== view) previous.log.hidden = true;
  state.current = view;
  view.log.hidden = false;
  view.unread = 0;
  $("empty").hidden = true;
  $("view-title").textContent = view.kind === "room" ? `# ${view.name}` : `Private: ${view.name}`;
  const close = $("close-view");
  close.hidden = false;
  close.textContent = view.kind === "room" ? "Leave room" : "Close conversation";
  setComposer();
  renderRoomList();
  if (previous !== view) {
    view.log.scrollTop = view.log.scrollHeight;
    refreshPeople();
    refreshFiles();
  }
  if (!view.flushing) fillIfShort(view); // otherwise once the lines waiting are in
}

function setComposer() {
  const view = state.current;
  const usable = view !== null && !state.client.final && (view.kind === "private" || roomEntry(view.name).view === view);
  $("message").disabled = !usable;
  $("send").disabled = !usable;
  $("upload").disabled = !usable || view.kind !== "room";
}

$("close-view").addEventListener("click", async () => {
  const view = state.current;
  if (!view) return;
  if (view.kind === "room") {
    try {
      await state.client.request({ type: "leave", room: view.name });
    } catch (exc) {
      if (exc.code !== "not_in_room" && exc.code !== "no_such_room") {
        status(`Could not leave ${view.name}: ${exc.message}`, 6000);
        return;
      }
    }
    roomEntry(view.name).view = null;
  } else {
    state.privates.delete(roomKey(view.name));
  }
  view.log.remove();
  state.current = null;
  const next = [...state.rooms.values()].find((entry) => entry.view)?.view
    ?? [...state.privates.values()].find((entry) => entry.view)?.view;
  if (next) {
    show(next);
  } else {
    $("empty").hidden = false;
    $("view-title").textContent = "UtuVox";
    $("close-view").hidden = true;
    $("people").replaceChildren();
    $("files-section").hidden = true;
    setComposer();
    renderRoomList();
  }
});

function atBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 48;
}

/** Queue an event's line at the end of a conversation; lines are added in batches, one short task each. */
function append(view, event) {
  const node = eventNode(event, actions);
  if (!node) return;
  if (event.user === state.me && (event.type === "message" || event.type === "msg")) node.classList.add("mine");
  view.queue.push(node);
  if (!view.flushing) {
    view.flushing = true;
    setTimeout(() => flush(view), 0);
  }
}

function block(lines) {
  const node = el("div", { class: "block" });
  node.style.containIntrinsicSize = `auto ${lines * LINE_PX}px`;
  return node;
}

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

function group() {
  return el("div", { class: "group" });
}

function flush(view) {
  const log = view.log;
  const stick = atBottom(log) || view.queue.some((node) => node.classList.contains("mine"));
  const batch = view.queue.splice(0, APPEND_BATCH);
  while (batch.length) {
    if (!view.lastBlock || view.lastBlock.childElementCount >= BLOCK) {
      view.lastBlock = block(BLOCK);
      if (!view.lastGroup || view.lastGroup.childElementCount >= GROUP) {
        view.lastGroup = group();
        log.append(view.lastGroup);
      }
      view.lastGroup.append(view.lastBlock);
    }
    view.lastBlock.append(...batch.splice(0, BLOCK - view.lastBlock.childElementCount));
  }
  if (stick) log.scrollTop = log.scrollHeight;
  if (view.queue.length) {
    setTimeout(() => flush(view), 0);
  } else {
    view.flushing = false;
    fillIfShort(view);
  }
}

function notice(view, text) {
  append(view, { type: "notice", ts: new Date().toISOString(), text });
}

/** The next page of older history, kept in place on the screen (the reader does not jump). */
async function loadOlder(view) {
  if (view.loading || !view.more) return;
  view.loading = true;
  view.top.textContent = "Loading earlier messages…";
  let page;
  try {
    page = await state.client.request({ type: "history", room: view.name, before: view.oldest, limit: HISTORY_PAGE });
  } catch (exc) {
    view.top.textContent = `Could not load earlier messages: ${exc.message}`;
    view.loading = false;
    return;
  }
  if (page.events.length) view.oldest = page.events[0].seq;
  view.more = page.more && page.events.length > 0;
  const log = view.log;
  log.setAttribute("aria-busy", "true"); // history is not news: screen readers need not read it out
  // A block of lines per task, newest first, each put above the last: the page never stops for long.
  for (let end = page.events.length; end > 0 && log.isConnected; end -= BLOCK) {
    const events = page.events.slice(Math.max(0, end - BLOCK), end);
    const lines = block(events.length);
    for (const event of events) {
      const node = eventNode(event, actions);
      if (node) lines.append(node);
    }
    let first = view.top.nextElementSibling;
    if (!first || first.childElementCount >= GROUP || first === view.lastGroup) {
      first = group();
      view.top.after(first);
    }
    const fromBottom = log.scrollHeight - log.scrollTop;
    first.prepend(lines);
    log.scrollTop = log.scrollHeight - fromBottom;
    if (end > BLOCK) await nextTask();
  }
  log.removeAttribute("aria-busy");
  view.top.textContent = view.more ? "" : `The beginning of ${view.name}.`;
  view.loading = false;
  fillIfShort(view);
}

/** Keep fetching while the reader is still at the top (or the log does not fill the screen yet). */
function fillIfShort(view) {
  const log = view.log;
  if (view.kind === "room" && view.more && !view.loading && !log.hidden && log.scrollTop < NEAR_TOP * log.clientHeight) {
    setTimeout(() => loadOlder(view), 0);
  }
}

// --- what the server tells us -----------------------------------------------------------------------------

const PEOPLE_EVENTS = new Set(["join", "leave"]);

function onEvent(event) {
  if (typeof event.room === "string" && typeof event.seq === "number") {
    const entry = roomEntry(event.room);
    if (!entry.view) {
      if (!state.client.rooms.some((room) => roomKey(room) === roomKey(event.room))) return;
      entry.view = makeView("room", event.room);
    }
    const view = entry.view;
    append(view, event);
    const counts = event.type === "message" || (event.type === "file" && event.action === "upload");
    if (counts && (view !== state.current || document.hidden) && event.user !== state.me) {
      view.unread++;
      renderRoomList();
    }
    if (PEOPLE_EVENTS.has(event.type) && view === state.current) refreshPeopleSoon();
    if (event.type === "file" && event.action === "upload" && view === state.current) refreshFiles();
    return;
  }
  switch (event.type) {
    case "msg": {
      const other = roomKey(event.user) === roomKey(state.me) ? event.to : event.user;
      const entry = privateEntry(other);
      append(entry.view, event);
      if (entry.view !== state.current || document.hidden) entry.view.unread++;
      renderRoomList();
      break;
    }
    case "room_deleted": {
      const entry = state.rooms.get(roomKey(event.room));
      if (entry?.view) {
        append(entry.view, event);
        entry.view = null;
        if (state.current) setComposer();
      }
      refreshRooms();
      break;
    }
    case "announce":
    case "notice":
      if (state.current) append(state.current, event);
      else status(event.text, 8000);
      break;
    case "bye":
      status(event.reason);
      break;
    default:
      break; // keepalives, and chunks of a download given up
  }
}

// --- people -----------------------------------------------------------------------------------------------

function refreshPeopleSoon() {
  clearTimeout(state.peopleTimer);
  state.peopleTimer = setTimeout(refreshPeople, 300);
}

async function refreshPeople() {
  const view = state.current;
  if (!view || !state.client.ready) return;
  let reply;
  try {
    reply = await state.client.request(view.kind === "room"
      ? { type: "list_users_in_room", room: view.name } : { type: "list_all_users" });
  } catch {
    return;
  }
  if (view !== state.current) return;
  $("people-title").textContent = view.kind === "room" ? "People" : "People online";
  const items = reply.users.map((user) => {
    const tags = [user.is_bot ? el("span", { class: "tag" }, "bot") : null,
      user.is_admin ? el("span", { class: "tag" }, "admin") : null];
    if (roomKey(user.name) === roomKey(state.me)) {
      return el("li", null, el("span", null, `${user.name} (you) `, ...tags));
    }
    return el("li", null, el("button", {
      type: "button", title: `Private conversation with ${user.name}`, onclick: () => openPrivate(user.name),
    }, el("span", null, user.name), " ", el("span", null, ...tags)));
  });
  $("people").replaceChildren(...items);
}

/** The files shared in the room shown, newest first, each with its download button. */
async function refreshFiles() {
  const view = state.current;
  const section = $("files-section");
  if (!view || view.kind !== "room") {
    section.hidden = true;
    return;
  }
  let reply;
  try {
    reply = await state.client.request({ type: "list_files", room: view.name });
  } catch {
    return;
  }
  if (view !== state.current) return;
  section.hidden = reply.files.length === 0;
  $("files").replaceChildren(...reply.files.reverse().map((file) => el("li", null,
    el("button", { type: "button", class: "link", onclick: () => actions.download(file) }, `Download ${file.original}`),
    el("span", { class: "about" }, ` ${formatSize(file.size)}, ${file.uploader}`))));
}

// --- sending ------------------------------------------------------------------------------------------------

$("composer").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const box = $("message");
  const view = state.current;
  const text = box.value;
  if (!view || !text.trim()) return;
  box.value = "";
  resize();
  try {
    const action = view.kind === "room" ? text.match(/^\/me\s+(\S[\s\S]*)$/) : null;
    if (action) {  // /me waves: an action, as in text mode and on IRC
      await state.client.request({ type: "message", room: view.name, text: action[1], action: true });
    } else if (view.kind === "room") {
      await state.client.request({ type: "message", room: view.name, text });
    } else {
      await state.client.request({ type: "msg", to: view.name, text });
      append(view, { type: "msg", ts: new Date().toISOString(), user: state.me, to: view.name, text });
    }
  } catch (exc) {
    if (!box.value) {
      box.value = text;
      resize();
    }
    notice(view, exc.code === "disconnected"
      ? "The connection broke while sending: your message may not have arrived."
      : `Not sent: ${exc.message}`);
  }
});

function resize() {
  const box = $("message");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight + 2, 160)}px`;
}

$("message").addEventListener("input", resize);
$("message").addEventListener("keydown", (key) => {
  if (key.key === "Enter" && !key.shiftKey && !key.isComposing) {
    key.preventDefault();
    $("composer").requestSubmit();
  }
});

// --- files ----------------------------------------------------------------------------------------------------

function transferItem(label) {
  const bar = el("progress", { max: "1", value: "0", "aria-label": label });
  const text = el("span", null, label);
  const cancel = el("button", { type: "button", class: "secondary", "aria-label": `Cancel: ${label}` }, "Cancel");
  const item = el("li", null, text, bar, cancel);
  $("transfers").append(item);
  const finish = (message) => {
    text.textContent = message;
    bar.remove();
    cancel.remove();
    setTimeout(() => item.remove(), 8000);
  };
  return { bar, cancel, finish, text };
}

$("upload").addEventListener("change", () => {
  const input = $("upload");
  const view = state.current;
  const files = [...input.files];
  input.value = ""; // the same file may be chosen again
  if (!view || view.kind !== "room") return;
  for (const file of files) startUpload(view.name, file);
});

async function startUpload(room, file) {
  const job = { cancelled: false };
  const item = transferItem(`Uploading ${file.name}`);
  item.cancel.addEventListener("click", () => (job.cancelled = true));
  try {
    await upload(state.client, room, file, job, (done, total, phase) => {
      item.bar.max = Math.max(total, 1);
      item.bar.value = done;
      item.text.textContent = `${phase === "hashing" ? "Checking" : "Uploading"} ${file.name} (${formatSize(total)})`;
    });
    item.finish(`${file.name} uploaded.`);
  } catch (exc) {
    item.finish(exc instanceof Cancelled ? `Upload of ${file.name} cancelled.` : `Upload of ${file.name} failed: ${exc.message}`);
  }
}

const actions = {
  async download(event) {
    const job = {};
    const item = transferItem(`Downloading ${event.original}`);
    item.cancel.addEventListener("click", () => job.cancel?.());
    try {
      const { blob, original } = await download(state.client, event.name, job, (done, total) => {
        item.bar.max = Math.max(total, 1);
        item.bar.value = done;
      });
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: original, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      item.finish(`${original} downloaded (SHA-256 checked).`);
    } catch (exc) {
      item.finish(exc instanceof Cancelled ? `Download of ${event.original} cancelled.`
        : `Download of ${event.original} failed: ${exc.message}`);
    }
  },
};

// --- narrow screens and the keyboard ------------------------------------------------------------------------

function toggleDrawer(toggle, panel) {
  const open = !panel.classList.contains("open");
  closeDrawers();
  panel.classList.toggle("open", open);
  toggle.setAttribute("aria-expanded", String(open));
  if (open) panel.querySelector("button, input")?.focus();
}

function closeDrawers() {
  for (const [toggle, panel] of [["menu-toggle", "sidebar"], ["people-toggle", "people-panel"]]) {
    $(panel).classList.remove("open");
    $(toggle).setAttribute("aria-expanded", "false");
  }
}

$("menu-toggle").addEventListener("click", () => {
  toggleDrawer($("menu-toggle"), $("sidebar"));
  if ($("sidebar").classList.contains("open")) refreshRooms();
});
$("people-toggle").addEventListener("click", () => toggleDrawer($("people-toggle"), $("people-panel")));

document.addEventListener("keydown", (key) => {
  if (key.key === "Escape") {
    const open = document.querySelector(".sidebar.open, .people.open");
    if (open) {
      closeDrawers();
      $(open.id === "sidebar" ? "menu-toggle" : "people-toggle").focus();
    }
  } else if (key.altKey && (key.key === "ArrowUp" || key.key === "ArrowDown") && state.current) {
    // Alt+Up / Alt+Down: the previous or next conversation, as in most chat programs.
    const views = [...state.rooms.values(), ...state.privates.values()].map((e) => e.view).filter(Boolean);
    const at = views.indexOf(state.current);
    const next = views[(at + (key.key === "ArrowUp" ? views.length - 1 : 1)) % views.length];
    if (next) {
      key.preventDefault();
      show(next);
      $("message").focus();
    }
  }
});

$("username").focus();
