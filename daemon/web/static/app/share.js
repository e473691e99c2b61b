// Share links (README: "Share links"). Two parts:
//
// - ShareView: the page a share link opens, #/s/TOKEN. It shows that one task live (status,
//   prompt, facts, the timeline of its events, its diff) and nothing else: no navigation, no
//   cancel, retry or follow-up. The token comes in the URL's fragment (never sent to a server,
//   so never in its logs or a Referer), is moved at once into this tab's sessionStorage (never
//   localStorage) and out of the address bar, and is sent only as "Authorization: Share" and in
//   the WebSocket's first message. A signed-in person's own token is not read on this page.
//   An expired or revoked link (401 share_link_gone, or the WebSocket closed with 4401) says so.
// - SharePanel: the "Share" box of the owner's task view: make a link (shown and copyable once),
//   list the task's links, revoke one.
//
// Everything from the server reaches the page as text nodes (dom.js), as in the owner's view.

import { api, describe, post, get, taskPath, HttpError } from "./api.js";
import { $, h, badge, link, cost, tokens, shortRepo, say, age } from "./dom.js";
import { parsePatch, renderPatch, renderFiles } from "./diff.js";
import { Live } from "./live.js";
import { Timeline } from "./timeline.js";

const SHARE_KEY = "agentd.share";
const SHARE_HASH = /^#\/s(?:\/(.*))?$/;
const REFRESH_ON = new Set(["task.status", "task.finished", "git.pushed", "git.pr_opened", "agent.usage",
  "workspace.ready"]);
export const GONE = "This share link has expired or was revoked. Ask the person who shared it for a new one.";

// The share token of this page, or null when the page is not a share page: "#/s/TOKEN" keeps
// TOKEN for this tab and leaves "#/s" in the address bar; "#/s" alone (a reload) takes it back.
export function takeShareToken() {
  const match = location.hash.match(SHARE_HASH);
  if (!match) return null;
  const given = match[1] ? decodeURIComponent(match[1]) : "";
  if (given) {
    sessionStorage.setItem(SHARE_KEY, given);
    history.replaceState(null, "", location.pathname + location.search + "#/s");
  }
  return sessionStorage.getItem(SHARE_KEY);
}

export class ShareView {
  // ``onState(state)``: the live connection's state, for the header's pill.
  constructor(token, { onState }) {
    this.token = token;
    this.onState = onState;
    this.task = null;
    this.diffCommit = null;
    this.gone = false;
    this.root = $("v-share");
    this.title = h("h1", { id: "s-title", tabindex: "-1", class: "repo" }, "Shared task");
    this.status = h("span", { id: "s-status" });
    this.prompt = h("p", { id: "s-prompt", class: "prompt" });
    this.facts = h("dl", { id: "s-facts", class: "facts" });
    this.error = h("p", { id: "s-error", class: "error", role: "alert", hidden: true });
    this.diff = h("section", { id: "s-diff", hidden: true }, h("h2", {}, "Changes"));
    this.events = h("ol", { id: "s-events", class: "timeline", "aria-label": "What the agent did" });
    this.body = h("div", { id: "s-body" }, this.prompt, this.facts, this.diff, h("h2", {}, "Activity"), this.events);
    this.root.replaceChildren(
      h("div", { class: "bar" }, h("span", { class: "muted" }, "Shared with you, read-only"), this.status),
      this.title, this.error, this.body);
    this.timeline = new Timeline(this.events, {
      onGap: () => this.live && this.live.resubscribe(this.taskId),
      onChange: (event) => this.onEvent(event),
      author: "the owner", // the reader is not the one who wrote (the task names no login)
    });
    this.live = null;
    this.taskId = null;
  }

  async start() {
    const task = await this.read("/api/shared/task");
    if (!task) return;
    this.taskId = task.id;
    this.render(task);
    this.live = new Live({
      share: this.token,
      onState: this.onState,
      onAuthLost: () => this.expired(),
      onTasksEvent: () => {},
    });
    this.live.follow(task.id, {
      after: () => this.timeline.lastSeq,
      onEvent: (message) => this.timeline.accept(message),
      onError: () => this.expired(),
    });
    this.live.start();
  }

  // GET with the share token; null (and the page says why) when refused or unreachable.
  async read(path) {
    try {
      return (await api("GET", path, { auth: false, headers: { Authorization: "Share " + this.token } })).data;
    } catch (error) {
      if (error instanceof HttpError && error.status === 401) this.expired();
      else if (path === "/api/shared/task") say(this.error, describe(error));
      return null;
    }
  }

  expired() {
    if (this.gone) return;
    this.gone = true;
    if (this.live) this.live.stop();
    this.live = null;
    this.body.hidden = true;
    this.status.replaceChildren();
    this.title.textContent = "Link expired";
    say(this.error, GONE);
  }

  onEvent(event) {
    if (REFRESH_ON.has(event.event)) this.refresh();
  }

  async refresh() {
    const task = await this.read("/api/shared/task");
    if (task) this.render(task);
  }

  render(task) {
    this.task = task;
    this.timeline.setCompacted(Boolean(task.compacted_at));
    this.status.replaceChildren(badge(task.status));
    this.title.textContent = shortRepo(task.repo_url) + (task.base_branch ? " @ " + task.base_branch : "");
    this.prompt.textContent = task.prompt;
    const fact = (name, value) => [h("dt", {}, name), h("dd", {}, value)];
    this.facts.replaceChildren(
      ...fact("Repository", task.repo_url),
      ...fact("Branch", task.branch ? h("code", {}, task.branch) : h("span", { class: "muted" }, "not pushed yet")),
      ...fact("Pull request", task.pr_url ? link(task.pr_url) : h("span", { class: "muted" }, "none")),
      ...fact("Used", tokens(task.usage) + " · " + cost(task.usage && task.usage.cost_usd)),
      ...(task.error ? fact("Error", task.error) : []));
    if (task.diff && task.diff.commit !== this.diffCommit) this.loadDiff(task);
  }

  async loadDiff(task) {
    this.diffCommit = task.diff.commit;
    const answer = await this.read("/api/shared/diff");
    const files = answer ? parsePatch(answer.patch) : [];
    const names = (task.diff.files || []).map((name) => h("li", {}, h("span", { class: "fname" }, String(name))));
    const patch = answer ? h("details", {}, h("summary", {}, "Show the patch"),
      h("div", { class: "patch-box" }, renderPatch(answer.patch))) : null;
    this.diff.replaceChildren(h("h2", {}, "Changes"),
      files.length ? renderFiles(files) : h("ul", { class: "files" }, names), patch);
    this.diff.hidden = false;
  }
}

// -- the owner's side ------------------------------------------------------------------------------

export class SharePanel {
  constructor(root) {
    this.root = root;
    this.id = null;
    this.list = h("ul", { id: "t-shares", class: "shares" });
    this.made = h("p", { id: "t-share-made", hidden: true });
    this.error = h("p", { id: "t-share-error", class: "error", role: "alert", hidden: true });
    const make = h("button", { id: "t-share-new", type: "button" }, "Make a link");
    make.addEventListener("click", () => this.make());
    this.box = h("details", { id: "t-share-box" }, h("summary", { id: "t-share" }, "Share"),
      h("p", { class: "hint" }, "Anyone with a link sees this task live, read-only, until the link " +
        "expires (in 7 days) or you revoke it. The link is shown once."),
      make, this.made, this.list, this.error);
    this.box.addEventListener("toggle", () => { if (this.box.open) this.load(); });
    root.replaceChildren(this.box);
  }

  open(id) {
    if (this.id === id) return;
    this.id = id;
    this.box.open = false;
    this.made.hidden = true;
    this.made.replaceChildren();
    this.list.replaceChildren();
    say(this.error, "");
  }

  async make() {
    const id = this.id;
    say(this.error, "");
    try {
      const made = await post(taskPath(id, "/shares"), {});
      if (this.id !== id) return;
      const field = h("input", { id: "t-share-url", type: "text", readonly: true, "aria-label": "The share link" });
      field.value = made.url;
      const copy = h("button", { type: "button", class: "copy" }, "Copy link");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(made.url);
          copy.textContent = "Copied";
        } catch (_) {
          field.select();
          copy.textContent = "Select and copy it";
        }
      });
      this.made.replaceChildren(field, " ", copy);
      this.made.hidden = false;
      await this.load();
    } catch (error) {
      say(this.error, "No link made: " + describe(error));
    }
  }

  async load() {
    const id = this.id;
    try {
      const { shares } = await get(taskPath(id, "/shares"));
      if (this.id !== id) return;
      this.list.replaceChildren(...shares.slice().reverse().map((share) => this.row(share)));
    } catch (error) {
      say(this.error, describe(error));
    }
  }

  row(share) {
    const when = share.live
      ? "expires " + new Date(share.expires_at * 1000).toLocaleString()
      : share.revoked_at ? "revoked " + age(share.revoked_at) : "expired";
    const item = h("li", { dataset: { share: share.id } }, h("code", {}, share.id), " · made " +
      age(share.created_at) + " · " + when);
    if (share.live) {
      const revoke = h("button", { type: "button", class: "danger" }, "Revoke");
      revoke.addEventListener("click", async () => {
        revoke.disabled = true;
        try {
          await api("DELETE", taskPath(this.id, "/shares/" + encodeURIComponent(share.id)));
          await this.load();
        } catch (error) {
          revoke.disabled = false;
          say(this.error, "Not revoked: " + describe(error));
        }
      });
      item.append(" ", revoke);
    }
    return item;
  }
}
