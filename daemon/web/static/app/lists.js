// Task lists: the person's own (GET /api/tasks) and, for operators, everyone's
// (GET /admin/api/tasks, with each owner's login, the start of each id that agentctl takes, and
// Cancel and Retry on every row). Newest first, paged with next_cursor, filtered by status, kept
// current by the WebSocket's status events.

import { get, post, describe, session } from "./api.js";
import { h, badge, age, cost, shortRepo, firstLine, say, shortId } from "./dom.js";

export const STATUSES = ["queued", "running", "waiting_input", "waiting_retry", "succeeded", "failed",
  "cancelled"];
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// daemon/usecases/policy.py: operators only, and only these (never succeeded, queued, running).
export const RETRYABLE = new Set(["failed", "cancelled", "waiting_retry", "waiting_input"]);
const PAGE = 30;

export function fillStatusFilter(select) {
  select.replaceChildren(h("option", { value: "" }, "all"),
    ...STATUSES.map((status) => h("option", { value: status }, status.replace("_", " "))));
}

export function retryTask(id) {
  return post("/admin/api/tasks/" + encodeURIComponent(id) + "/retry");
}

// ``ops``: through the operator surface, whose answer carries the owner's login.
export function cancelTask(id, ops = false) {
  return post((ops ? "/admin" : "") + "/api/tasks/" + encodeURIComponent(id) + "/cancel");
}

export class TaskList {
  // ``ops``: everyone's tasks (an operator's view); ``onLoaded(tasks, nextCursor, filter)``:
  // after each page (the app keeps the person's list for offline use).
  constructor({ root, empty, more, error, filter, user, ops, onLoaded }) {
    Object.assign(this, { root, empty, more, error, filter, user, ops, onLoaded });
    this.tasks = new Map();
    this.nodes = new Map(); // id -> {li, stamp}: the rows shown
    this.cursor = null;
    this.refreshing = new Map(); // id -> "changed again while fetching"
    this.generation = 0; // a reload makes pages of earlier ones stale
    fillStatusFilter(filter);
    filter.addEventListener("change", () => this.reload());
    more.addEventListener("click", () => this.loadPage(this.cursor));
    if (user) {
      let timer = null;
      user.addEventListener("input", () => {
        clearTimeout(timer);
        timer = setTimeout(() => this.reload(), 300);
      });
    }
  }

  base() {
    return this.ops ? "/admin/api/tasks" : "/api/tasks";
  }

  query(cursor) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (this.filter.value) query.set("status", this.filter.value);
    if (this.user && this.user.value.trim()) query.set("user", this.user.value.trim());
    if (cursor) query.set("cursor", cursor);
    return this.base() + "?" + query;
  }

  // The cached page, shown before (or instead of, offline) the first fetch.
  show(tasks, cursor) {
    this.tasks = new Map(tasks.map((task) => [task.id, task]));
    this.cursor = cursor;
    this.render();
  }

  reload() {
    this.generation += 1;
    return this.loadPage(null);
  }

  async loadPage(cursor) {
    const generation = this.generation;
    try {
      const page = await get(this.query(cursor));
      if (generation !== this.generation) return;
      if (!cursor) this.tasks.clear();
      for (const task of page.tasks) this.tasks.set(task.id, task);
      this.cursor = page.next_cursor;
      say(this.error, "");
      this.render();
      if (this.onLoaded) this.onLoaded([...this.tasks.values()], this.cursor, this.filter.value);
    } catch (error) {
      if (generation === this.generation) say(this.error, describe(error));
    }
  }

  // A status event of some task (null: reload, events may have been missed).
  onStatusEvent(message) {
    if (message === null) {
      this.reload();
      return;
    }
    const owner = message.data && message.data.user_id;
    if (!this.ops && owner !== undefined && owner !== session.me.user_id) return;
    this.refresh(message.task_id);
  }

  // One fetch per task at a time; a change seen meanwhile fetches once more afterwards.
  async refresh(id) {
    if (this.refreshing.has(id)) {
      this.refreshing.set(id, true);
      return;
    }
    try {
      do {
        this.refreshing.set(id, false);
        this.upsert(await get(this.base() + "/" + encodeURIComponent(id)));
      } while (this.refreshing.get(id));
    } catch (_) {
      // Gone, or offline: the next reload says so.
    } finally {
      this.refreshing.delete(id);
    }
  }

  upsert(task) {
    const login = this.user && this.user.value.trim();
    const wanted = (!this.filter.value || task.status === this.filter.value) &&
      (!login || task.user_login === login);
    if (wanted) this.tasks.set(task.id, task);
    else this.tasks.delete(task.id);
    this.render();
  }

  // Rows whose task did not change are kept as they are, so a live update elsewhere in the list
  // leaves the reader's place and the keyboard's focus alone; a row that changed under the focus
  // gives it to the same control of its new self.
  render() {
    const rows = [...this.tasks.values()].sort((a, b) => b.created_at - a.created_at);
    const nodes = rows.map((task) => {
      const stamp = [task.updated_at, task.status, age(task.created_at), task.user_login].join("|");
      const known = this.nodes.get(task.id);
      if (known && known.stamp === stamp) return known.li;
      const li = this.card(task);
      this.nodes.set(task.id, { li, stamp });
      return li;
    });
    for (const id of [...this.nodes.keys()]) if (!this.tasks.has(id)) this.nodes.delete(id);
    const shown = [...this.root.children];
    if (shown.length !== nodes.length || shown.some((node, i) => node !== nodes[i])) {
      const focused = document.activeElement;
      const row = focused && this.root.contains(focused) ? focused.closest("li") : null;
      const key = row && (focused.getAttribute("aria-label") || focused.className);
      this.root.replaceChildren(...nodes);
      if (row && document.activeElement !== focused) { // moved (blurred) or replaced
        const again = this.nodes.get(row.dataset.taskId);
        const same = focused.isConnected ? focused : again && [...again.li.querySelectorAll("a, button")]
          .find((el) => (el.getAttribute("aria-label") || el.className) === key);
        if (same) same.focus({ preventScroll: true });
      }
    }
    this.empty.hidden = rows.length > 0;
    this.more.hidden = !this.cursor;
  }

  card(task) {
    const meta = [age(task.created_at), cost(task.usage && task.usage.cost_usd)];
    if (this.ops) meta.unshift(task.user_login || "user " + task.user_id);
    const li = h("li", { class: "card", dataset: { taskId: task.id } },
      linkTo(task, h("span", { class: "repo" }, shortRepo(task.repo_url)),
        h("span", { class: "prompt-line" }, firstLine(task.prompt)),
        h("span", { class: "row" }, badge(task.status), h("span", { class: "meta" }, meta.join(" · ")),
          this.ops ? shortId(task.id) : null)));
    if (this.ops) li.append(this.actions(task));
    return li;
  }

  actions(task) {
    const error = h("span", { class: "error", role: "alert", hidden: true });
    const act = (name, run) => async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        this.upsert(await run(task.id));
      } catch (failure) {
        say(error, name + " refused: " + describe(failure));
        button.disabled = false;
      }
    };
    return h("p", { class: "actions" },
      h("button", { type: "button", class: "danger", disabled: TERMINAL.has(task.status),
        "aria-label": "Cancel task " + shortRepo(task.repo_url), onclick: act("cancel", (id) => cancelTask(id, true)) },
      "Cancel"),
      h("button", { type: "button", disabled: !RETRYABLE.has(task.status),
        "aria-label": "Retry task " + shortRepo(task.repo_url), onclick: act("retry", retryTask) },
      "Retry"),
      error);
  }
}

function linkTo(task, ...children) {
  const a = h("a", { class: "card-link" }, ...children);
  a.href = "#/task/" + encodeURIComponent(task.id);
  return a;
}
