// Turning events into DOM nodes. What people wrote only ever becomes text nodes (never markup): a
// message that looks like HTML is shown as the characters it is. Web addresses become links that open
// without telling the target where they came from.

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?)\]}'"]+$/;

/** An element with attributes (or properties for on*, hidden...) and children (strings become text). */
export function el(tag, attrs = null, ...children) {
  const node = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else if (key === "hidden") node.hidden = true;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** Text with its http(s) addresses as links. */
export function linkify(text) {
  const out = document.createDocumentFragment();
  let at = 0;
  for (const match of text.matchAll(URL_RE)) {
    let href = match[0];
    const trail = href.match(TRAILING);
    if (trail) href = href.slice(0, -trail[0].length);
    let url;
    try {
      url = new URL(href);
    } catch {
      continue;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") continue;
    if (match.index > at) out.append(document.createTextNode(text.slice(at, match.index)));
    out.append(el("a", { href: url.href, rel: "noopener noreferrer", target: "_blank" }, href));
    at = match.index + href.length;
  }
  if (at < text.length) out.append(document.createTextNode(text.slice(at)));
  return out;
}

// Formatters are costly to make and cheap to use: one of each for the whole page.
const timeOnly = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayAndTime = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** A <time> in the reader's own time zone: the time alone for today, with the day otherwise. */
export function timeNode(iso) {
  const when = iso ? new Date(iso) : new Date();
  const today = new Date();
  const sameDay = when.getFullYear() === today.getFullYear() && when.getMonth() === today.getMonth()
    && when.getDate() === today.getDate();
  return el("time", { datetime: when.toISOString(), title: full.format(when) },
    (sameDay ? timeOnly : dayAndTime).format(when));
}

// The rule of the server's byte_size (utuvox/protocol/units.py), so a size reads the same in every client.
export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/**
 * One line of a conversation for an event, or null for events that are not shown.
 * `actions.download(event)` is called by the download button of a shared file.
 */
export function eventNode(event, actions) {
  const line = (cls, ...parts) => {
    const node = el("div", { class: cls }, timeNode(event.ts), " ", ...parts);
    if (typeof event.seq === "number") node.dataset.seq = String(event.seq);
    return node;
  };
  switch (event.type) {
    case "message":
    case "msg":
      if (event.action) {  // /me: "* alice waves"
        return line("msg action", "* ", el("span", { class: "who" }, event.user), " ",
          el("span", { class: "text" }, linkify(event.text)));
      }
      return line("msg", el("span", { class: "who" }, event.user), " ",
        el("span", { class: "text" }, linkify(event.text)));
    case "join":
      return line("meta", `${event.user} joined`);
    case "leave":
      return line("meta", `${event.user} left`);
    case "file":
      if (event.action === "download") return line("meta", `${event.user} downloaded ${event.original}`);
      return line("meta file", `${event.user} shared `, el("span", { class: "filename" }, event.original),
        ` (${formatSize(event.size)}) `,
        el("button", { type: "button", class: "link", onclick: () => actions.download(event) },
          `Download ${event.original}`));
    case "announce":
      return line("meta notice", `Announcement from ${event.by}: `, linkify(event.text));
    case "notice":
      return line("meta notice", linkify(event.text));
    case "room_deleted":
      return line("meta notice", `This room was deleted by ${event.by}.`);
    default:
      return null;
  }
}
