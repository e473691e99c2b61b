// Building the page from untrusted data: every string reaches the DOM as a text node
// (createElement + textContent), never as markup. Nothing in the app uses innerHTML.

export const $ = (id) => document.getElementById(id);

// h("div", {class: "x", dataset: {seq: 3}, hidden: true, onclick: f}, "text", child, ...):
// an element whose string children become text nodes. Attributes are set one by one, never
// parsed; "href" is only set through link() below, which checks the scheme.
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "href") throw new Error("use link() for hrefs");
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.append(child);
    else node.append(document.createTextNode(String(child)));
  }
}

// An https link opened outside the app (a PR on GitHub), or plain text when the URL is not
// https: a "javascript:" or "data:" URL from a task never becomes a link.
export function link(url, text) {
  if (!isHttps(url)) return h("span", { class: "url" }, text || String(url));
  const a = h("a", { class: "url", target: "_blank", rel: "noopener noreferrer" }, text || url);
  a.href = url;
  return a;
}

export function isHttps(url) {
  try {
    return new URL(String(url)).protocol === "https:";
  } catch (_) {
    return false;
  }
}

export function badge(status) {
  return h("span", { class: "status s-" + cssToken(status) }, label(status));
}

// Status values come from the server; as a class name only [a-z_] survives.
export function cssToken(text) {
  return String(text).toLowerCase().replace(/[^a-z_]/g, "");
}

const LABELS = { waiting_input: "needs answer", waiting_retry: "retrying" };
export function label(status) {
  return LABELS[status] || String(status);
}

// -- formatting ------------------------------------------------------------------------------

export function age(ts, now = Date.now() / 1000) {
  if (typeof ts !== "number") return "";
  const s = Math.max(0, Math.round(now - ts));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

export function clock(ts) {
  if (typeof ts !== "number") return "";
  return new Date(ts * 1000).toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
}

export function cost(usd) {
  const n = Number(usd) || 0;
  return "$" + (n === 0 ? "0" : n < 0.01 ? n.toFixed(4) : n.toFixed(2));
}

export function tokens(usage) {
  const u = usage || {};
  const total = (u.input_tokens || 0) + (u.output_tokens || 0) + (u.cache_read_tokens || 0) +
    (u.cache_write_tokens || 0);
  return total.toLocaleString("en") + " tokens";
}

// A repository's name as a list shows it: owner/name on GitHub; elsewhere the URL without its
// scheme and ".git", cut to its last two parts (or its last) when long. The full URL is shown
// with the task.
export function shortRepo(url) {
  const text = String(url || "").replace(/\.git\/?$/, "");
  const github = text.match(/^(?:https?:\/\/(?:www\.)?github\.com\/|git@github\.com:)(.+)$/);
  if (github) return github[1];
  const bare = text.replace(/^[a-z+]+:\/\//i, "");
  if (bare.length <= 40) return bare;
  const parts = bare.split("/").filter(Boolean);
  const two = parts.slice(-2).join("/");
  return "…/" + (two.length <= 40 ? two : parts[parts.length - 1]);
}

// How much of a task's id the app shows: a start agentctl takes for the whole id (any unique
// start of 8 characters or more, daemon/usecases/policy.py MIN_ID_PREFIX). The first 10 are the
// millisecond the task was made (store/models.py new_task_id) and the next 2 are random, so two
// tasks share these 12 only when made in the same millisecond, and then 1 time in 1024.
export const SHORT_ID = 12;

// A task's id as the app shows it: its first SHORT_ID characters in monospace, the whole of it
// in the title.
export function shortId(id) {
  return h("code", { class: "tid", title: String(id) }, String(id).slice(0, SHORT_ID));
}

// A button that copies a task's whole id. Where this page has no clipboard (plain http off
// localhost), ``shown`` (its shortId) shows the whole id instead, for the person to select.
export function copyId(id, shown) {
  const button = h("button", { type: "button", class: "copy" }, "Copy id");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(String(id));
      button.textContent = "Copied";
    } catch (_) {
      shown.textContent = String(id);
      button.textContent = "Shown in full";
    }
  });
  return button;
}

export function firstLine(text, n = 140) {
  const line = String(text || "").split("\n", 1)[0];
  return line.length > n ? line.slice(0, n) + "…" : line;
}

// A random string of URL-safe characters from the platform's CSPRNG.
export function randomId(bytes = 16) {
  const raw = crypto.getRandomValues(new Uint8Array(bytes));
  return base64url(raw);
}

export function base64url(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// Show a message in an element with role=alert (or hide it with an empty message).
export function say(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}
