// One task, live: its facts (status, branch, pull request, tokens and cost), Cancel, (for
// operators) Retry, "Address review comments" when it has a pull request, the diff, the timeline of its events, the answer box for the agent's
// question and the follow-up box. Its events come over the app's WebSocket from the last
// seq shown (the offline cache's, or 0), so opening it again or reconnecting never shows an
// event twice or skips one.

import { get, post, describe, session, taskPath, HttpError } from "./api.js";
import { $, h, badge, link, cost, tokens, shortRepo, say, shortId, copyId, SHORT_ID } from "./dom.js";
import { parsePatch, renderPatch, renderFiles } from "./diff.js";
import { Timeline } from "./timeline.js";
import { TERMINAL, RETRYABLE, cancelTask, retryTask } from "./lists.js";
import { cachedTask, rememberTask, save } from "./local.js";

// Stored events after which the task's row is read again (status, usage, branch, PR).
const REFRESH_ON = new Set(["task.status", "task.finished", "git.pushed", "git.pr_opened", "agent.usage",
  "user.message", "workspace.ready"]);

// What retention left of a compacted task's history (its summary stays on the page).
function historyRemoved(task) {
  const days = Math.round((task.compacted_at - task.finished_at) / 86400);
  return task.finished_at && days >= 0
    ? "events and conversation removed " + days + " days after it finished"
    : "earlier events and conversation removed";
}

export class TaskView {
  constructor(live) {
    this.live = live;
    this.id = null;
    this.task = null;
    this.timeline = null;
    this.diffCommit = null;
    this.fetching = false;
    this.again = false;
    this.answerForm = $("t-answer-form"); // moves into the question it answers
    this.patch = null; // {text, truncated} of the diff shown
    $("t-patch-box").addEventListener("toggle", () => this.showPatch());
    $("t-cancel").addEventListener("click", () => this.act("cancel"));
    $("t-retry").addEventListener("click", () => this.act("retry"));
    $("t-review").addEventListener("click", () => this.review());
    this.composer("t-answer-form", "t-answer");
    this.composer("t-follow-form", "t-follow");
  }

  open(id) {
    if (this.id === id) return;
    this.close();
    this.id = id;
    this.task = null;
    this.diffCommit = null;
    this.patch = null;
    for (const node of ["t-action-error", "t-send-error", "t-review-note"]) say($(node), "");
    $("t-diff").hidden = $("t-review").hidden = true;
    $("t-files").replaceChildren();
    $("t-patch").replaceChildren();
    $("t-id").replaceChildren();
    delete $("t-id").dataset.id;
    $("t-patch-box").open = false;
    $("t-events").after(this.answerForm); // out of the old timeline before it is cleared
    this.answerForm.hidden = true;
    this.timeline = new Timeline($("t-events"), {
      onGap: () => this.live.resubscribe(id),
      onChange: (event) => this.onEvent(event),
    });
    const cached = cachedTask(id);
    if (cached) {
      this.render(cached.task);
      if (cached.events) this.timeline.load(cached.events);
    } else {
      this.blank(id);
    }
    this.live.follow(id, {
      after: () => this.timeline.lastSeq,
      onEvent: (message) => { if (this.id === id) this.timeline.accept(message); },
      onError: (message) => {
        if (message.code === "not_found") say($("t-action-error"), "No task " + id + " that you may see.");
      },
    });
    this.refresh();
  }

  close() {
    if (this.id !== null) this.live.unfollow(this.id);
    this.id = null;
  }

  blank(id) {
    $("t-title").textContent = "Task " + id.slice(0, SHORT_ID);
    for (const node of ["t-status", "t-prompt", "t-repo", "t-branch", "t-pr", "t-usage", "t-attempt"]) {
      $(node).replaceChildren();
    }
  }

  path() {
    // An operator reads through the operator surface: its answer names the owner.
    return session.me && session.me.is_operator
      ? "/admin" + taskPath(this.id)
      : taskPath(this.id);
  }

  // Read the task again: one request at a time, once more if asked meanwhile.
  async refresh() {
    if (this.fetching) {
      this.again = true;
      return;
    }
    const id = this.id;
    this.fetching = true;
    try {
      do {
        this.again = false;
        const task = await get(this.path());
        if (this.id !== id) return;
        this.render(task);
        rememberTask(task, this.timeline.events);
      } while (this.again && this.id === id);
    } catch (error) {
      if (this.id !== id) return;
      const missing = error instanceof HttpError && error.status === 404;
      if (missing || !this.task) say($("t-action-error"), missing ? "No task " + id + " that you may see." : describe(error));
    } finally {
      this.fetching = false;
    }
  }

  onEvent(event) {
    save();
    if (event.event === "task.status" || event.event === "task.finished") {
      this.task = { ...(this.task || {}), status: event.data.status };
      if (this.task.id) this.render(this.task);
    }
    this.composerState();
    if (REFRESH_ON.has(event.event)) this.refresh();
  }

  render(task) {
    this.task = task;
    $("t-status").replaceChildren(badge(task.status));
    $("t-title").textContent = shortRepo(task.repo_url) + (task.base_branch ? " @ " + task.base_branch : "");
    $("t-prompt").textContent = task.prompt;
    if ($("t-id").dataset.id !== task.id) { // made once per task: a "Copied" stays
      const shown = shortId(task.id);
      $("t-id").replaceChildren(shown, " ", copyId(task.id, shown));
      $("t-id").dataset.id = task.id;
    }
    $("t-repo").textContent = task.repo_url;
    $("t-branch").replaceChildren(task.branch ? h("code", {}, task.branch) : h("span", { class: "muted" }, "not pushed yet"));
    $("t-pr").replaceChildren(task.pr_url ? link(task.pr_url) : h("span", { class: "muted" }, "none"));
    $("t-usage").textContent = tokens(task.usage) + " · " + cost(task.usage && task.usage.cost_usd);
    $("t-attempt").textContent = String(task.attempt);
    $("t-history-dt").hidden = $("t-history").hidden = !task.compacted_at;
    if (this.timeline) this.timeline.setCompacted(Boolean(task.compacted_at));
    $("t-history").textContent = task.compacted_at ? historyRemoved(task) : "";
    const owner = task.user_login && session.me && task.user_id !== session.me.user_id;
    $("t-owner-dt").hidden = $("t-owner").hidden = !owner;
    $("t-owner").textContent = owner ? task.user_login : "";
    $("t-error-dt").hidden = $("t-error").hidden = !task.error;
    $("t-error").textContent = task.error || "";
    $("t-cancel").hidden = TERMINAL.has(task.status); // nothing to cancel
    $("t-cancel").disabled = false;
    const operator = Boolean(session.me && session.me.is_operator);
    $("t-retry").hidden = !operator;
    $("t-retry").disabled = !RETRYABLE.has(task.status);
    $("t-review").hidden = !task.pr_url;
    this.composerState();
    if (task.diff && task.diff.commit !== this.diffCommit) this.loadDiff(task);
  }

  // The answer box sits in the question it answers while the task waits for it; otherwise
  // the follow-up box is at the end.
  composerState() {
    if (!this.task || !this.timeline) return;
    const question = this.timeline.question;
    const asking = this.task.status === "waiting_input" && question !== null;
    const form = this.answerForm;
    if (asking && form.parentNode !== question) question.append(form);
    form.hidden = !asking;
    $("t-follow-form").hidden = asking;
    const working = { running: "The agent is working…", queued: "Queued: it starts when a place is free.",
      waiting_retry: "It failed for now and will try again." }[this.task.status];
    $("t-working").textContent = working || "";
    $("t-working").hidden = !working;
    $("t-follow-hint").textContent = TERMINAL.has(this.task.status)
      ? "The task goes on in the same branch with what you write."
      : "The agent reads it at its next turn.";
  }

  composer(formId, inputId) {
    $(formId).addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $(inputId);
      const text = input.value.trim();
      if (!text || this.id === null) return;
      const button = event.target.querySelector("button");
      button.disabled = true;
      say($("t-send-error"), "");
      try {
        const done = await post(taskPath(this.id, "/messages"), { text });
        input.value = "";
        if (done && done.task && this.task) this.render({ ...this.task, ...done.task });
      } catch (error) {
        say($("t-send-error"), "Not sent: " + describe(error));
      } finally {
        button.disabled = false;
      }
    });
  }

  async act(action) {
    const id = this.id;
    say($("t-action-error"), "");
    $("t-cancel").disabled = $("t-retry").disabled = true;
    try {
      const task = action === "cancel" ? await cancelTask(id) : await retryTask(id);
      if (this.id === id) this.render({ ...this.task, ...task });
    } catch (error) {
      if (this.id !== id) return;
      say($("t-action-error"), (action === "cancel" ? "Cancel" : "Retry") + " refused: " + describe(error));
      this.refresh();
    }
  }

  // The pull request's reviews, review threads and failing checks become the task's next turn
  // (POST /api/tasks/{id}/review), as a follow-up would; the server's refusal is said as it is.
  async review() {
    const id = this.id;
    const button = $("t-review");
    button.disabled = true;
    say($("t-action-error"), "");
    say($("t-review-note"), "");
    try {
      const done = await post(taskPath(id, "/review"));
      if (this.id !== id) return;
      say($("t-review-note"), "The pull request's review comments and failing checks were sent to the agent.");
      if (done && done.task && this.task) this.render({ ...this.task, ...done.task });
    } catch (error) {
      if (this.id === id) say($("t-action-error"), "Review not started: " + describe(error));
    } finally {
      button.disabled = false;
    }
  }

  async loadDiff(task) {
    const id = this.id;
    const commit = task.diff.commit;
    this.diffCommit = commit;
    const total = task.diff.files_total ?? (task.diff.files || []).length;
    $("t-diff").hidden = false;
    $("t-diff-sum").textContent = total + " file" + (total === 1 ? "" : "s") + ", +" +
      (task.diff.lines_added ?? 0) + " −" + (task.diff.lines_removed ?? 0);
    let patch = null;
    let truncated = false;
    try {
      const answer = await get(taskPath(id, "/diff"));
      patch = answer.patch;
      truncated = Boolean(answer.truncated);
    } catch (_) {
      // No patch to show (offline, or not served): the file names the task recorded.
    }
    if (this.id !== id || this.diffCommit !== commit) return;
    const files = patch ? parsePatch(patch) : [];
    if (files.length) {
      $("t-files").replaceChildren(renderFiles(files));
    } else {
      $("t-files").replaceChildren(h("ul", { class: "files" },
        (task.diff.files || []).map((name) => h("li", {}, h("span", { class: "fname" }, String(name))))));
    }
    this.patch = { text: patch, truncated };
    $("t-patch").replaceChildren();
    this.showPatch();
  }

  // The patch's lines are made when it is first opened (a patch may be a megabyte).
  showPatch() {
    const box = $("t-patch");
    if (!$("t-patch-box").open || !this.patch || box.firstChild) return;
    const { text, truncated } = this.patch;
    if (!text) {
      box.replaceChildren(h("p", { class: "hint" }, "The patch cannot be shown now."));
      return;
    }
    box.replaceChildren(renderPatch(text));
    if (truncated) box.append(h("p", { class: "hint" }, "The patch is cut short here: the branch holds all of it."));
  }
}
