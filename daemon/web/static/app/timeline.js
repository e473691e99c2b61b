// One task's events as a timeline: the model's text (streamed as it arrives, then as stored),
// each tool call as one collapsed line with its output on tap, the setup phase likewise (its
// output, sent in parts, grows inside it; then a line saying how it ended), questions, the
// person's messages, status changes, the push. Every stored event gets one element carrying its
// seq (data-seq), in seq order; the tool result's is inside its call's <details>, and so is each
// part of the setup's output.
//
// ``accept`` takes what the WebSocket sends: an event it already holds (seq <= lastSeq) is
// dropped, and one that skips a seq is not shown but reported through ``onGap`` (the caller
// subscribes again from lastSeq), so the timeline never has a gap or a duplicate.

import { h, link, clock, label } from "./dom.js";

const EDITOR = "str_replace_based_edit_tool";
const QUIET = new Set(["agent.usage"]); // totals are in the task's header instead

export class Timeline {
  // ``author``: who wrote the person's messages, as the reader sees them ("you" for the owner,
  // "the owner" on a share page).
  constructor(root, { onGap, onChange, author = "you" }) {
    this.root = root;
    this.onGap = onGap;
    this.onChange = onChange; // (event) after a stored event is shown
    this.author = author;
    this.lastSeq = 0;
    // Retention removed the task's history but its last event (README, "Retention"): its
    // first stored event comes after a jump, the one gap to take (task.js sets it).
    this.compacted = false;
    this.skippedFirst = false; // a jump from nothing seen before the task said it was compacted
    this.events = []; // the stored events shown, seq 1..lastSeq (kept for offline use)
    this.calls = new Map(); // tool_use id -> the <pre> its output goes in
    this.stream = null; // the <li> the streamed text grows in, until the stored text comes
    this.question = null; // the last agent.question's <li>, until someone answers it
    this.setup = null; // the running setup's output <pre>, from setup.started to setup.finished
    this.root.replaceChildren();
  }

  // Whether retention removed the task's history (its summary's compacted_at): a first event
  // skipped for want of knowing it is asked for again.
  setCompacted(compacted) {
    this.compacted = compacted;
    if (compacted && this.skippedFirst && this.lastSeq === 0) {
      this.skippedFirst = false;
      this.onGap(0);
    }
  }

  // Events held from before (seq 1..n, the offline cache): shown without a network.
  load(events) {
    for (const event of events) this.accept(event);
  }

  accept(message) {
    if (message.seq === null || message.seq === undefined) {
      if (message.event === "agent.text_delta") this.delta(String(message.data.text || ""));
      return;
    }
    if (message.seq <= this.lastSeq) return; // already shown: a replay overlapping live
    if (message.seq !== this.lastSeq + 1) {
      if (this.lastSeq === 0 && !this.compacted) {
        // Not known to be compacted (yet): a live event of an earlier subscription, ahead of
        // the replay from seq 1 that is on its way; or a compacted task's first stored event
        // before the task's summary said so (setCompacted asks again then).
        this.skippedFirst = true;
        return;
      }
      if (!this.compacted) {
        this.onGap(this.lastSeq);
        return;
      }
      // The task's history was removed (README, "Retention"): its first stored event comes
      // after a jump, the one gap to take.
      this.root.append(h("li", { class: "muted" }, "Earlier events were removed after the task finished."));
    }
    const follow = nearBottom();
    this.lastSeq = message.seq;
    this.events.push(message);
    this.show(message);
    if (follow) scrollToEnd();
    this.onChange(message);
  }

  delta(text) {
    const follow = nearBottom();
    if (!this.stream) {
      this.stream = h("li", { class: "ev ev-text streaming" },
        h("p", { class: "who" }, "agent, writing…"), h("p", { class: "text" }));
      this.root.append(this.stream);
    }
    this.stream.lastChild.append(document.createTextNode(text));
    if (follow) scrollToEnd();
  }

  endStream() {
    if (this.stream) this.stream.remove();
    this.stream = null;
  }

  add(seq, kind, ...children) {
    const li = h("li", { class: "ev ev-" + kind, dataset: { seq } }, ...children);
    this.root.append(li);
    return li;
  }

  // An event with nothing to show of its own: a hidden element keeps its place and seq.
  quiet(seq) {
    const li = this.add(seq, "quiet");
    li.hidden = true;
    return li;
  }

  note(seq, ts, ...text) {
    return this.add(seq, "note", h("span", { class: "time" }, clock(ts)), " ", ...text);
  }

  show(event) {
    const { seq, ts } = event;
    const data = event.data || {};
    switch (event.event) {
      case "task.created":
        return this.note(seq, ts, "Task created");
      case "task.status": { // a turn cut short (cancel, a failed attempt) leaves no half-text
        this.endStream();
        const reason = data.reason ? ": " + data.reason : "";
        // Only a run has an attempt worth showing: a question or a requeue spends none.
        const attempt = data.status === "running" ? " (attempt " + data.attempt + ")" : "";
        return this.note(seq, ts, label(data.status) + attempt + reason);
      }
      case "task.retry_scheduled":
        return this.note(seq, ts, "Retry in " + Math.round(data.delay_s || 0) + " s: " + (data.reason || ""));
      case "task.finished":
        this.endStream();
        return this.note(seq, ts, "Finished: " + data.status + (data.error ? ": " + data.error : ""));
      case "workspace.ready":
        return this.note(seq, ts, "Working on branch ", h("code", {}, String(data.branch)),
          " from ", h("code", {}, String(data.commit || "").slice(0, 10)));
      case "workspace.reset":
        return this.note(seq, ts, "Started over on branch ", h("code", {}, String(data.branch)));
      case "agent.text":
        this.endStream();
        return this.add(seq, "text", h("p", { class: "who" }, "agent"),
          h("p", { class: "text" }, String(data.text)));
      case "agent.tool_call":
        return this.toolCall(seq, data);
      case "agent.tool_result":
        return this.toolResult(seq, data);
      case "agent.question":
        this.endStream();
        this.question = this.add(seq, "question", h("p", { class: "who" }, "the agent asks"),
          h("p", { class: "text" }, String(data.text)));
        return this.question;
      case "user.message":
        this.question = null;
        return this.add(seq, "user", h("p", { class: "who" }, this.author + " wrote"),
          h("p", { class: "text" }, String(data.text)));
      case "git.pushed":
        return this.note(seq, ts, "Pushed ", h("code", {}, String(data.branch)), " (" +
          data.files_total + " file" + (data.files_total === 1 ? "" : "s") + ")");
      case "git.pr_opened":
        return this.note(seq, ts, "Opened a pull request: ", link(data.url));
      case "setup.started":
        return this.setupStarted(seq, data);
      case "setup.output":
        return this.setupOutput(seq, data);
      case "setup.finished":
        return this.setupFinished(seq, ts, data);
      default:
        if (QUIET.has(event.event)) return this.quiet(seq);
        return this.note(seq, ts, String(event.event));
    }
  }

  toolCall(seq, data) {
    const input = data.input && typeof data.input === "object" ? data.input : {};
    if (data.name === "ask_user") { // the question shows as agent.question
      this.calls.set(data.id, null);
      return this.quiet(seq);
    }
    const out = h("pre", { class: "out pending" }, "running…");
    const body = [];
    // The whole input, where the one line above cannot hold it.
    const command = String(input.command || "");
    if (data.name !== "bash") body.push(h("pre", { class: "cmd" }, JSON.stringify(input, null, 2)));
    else if (command.includes("\n") || command.length > 40) body.push(h("pre", { class: "cmd" }, command));
    body.push(out);
    const li = this.add(seq, "tool",
      h("details", {}, h("summary", {}, h("span", { class: "tool-line" }, toolLine(data.name, input))),
        ...body));
    this.calls.set(data.id, out);
    return li;
  }

  // The setup phase as a tool call: its steps on the line, its output inside.
  setupStarted(seq, data) {
    const steps = Array.isArray(data.steps) && data.steps.length ? data.steps.map(String) : ["setup"];
    const out = h("pre", { class: "out pending" }, "running…");
    const li = this.add(seq, "tool",
      h("details", {}, h("summary", {}, h("span", { class: "tool-line" }, "setup: " + steps.join(" then "))),
        out));
    li.classList.add("setup");
    this.setup = out;
    return li;
  }

  setupOutput(seq, data) {
    const part = h("span", { dataset: { seq } }, String(data.text || ""));
    const out = this.setup;
    if (!out) return this.add(seq, "tool", h("pre", { class: "out" }, part)); // its start not shown
    if (out.classList.contains("pending")) {
      out.replaceChildren();
      out.classList.remove("pending");
    }
    out.append(part);
    return part;
  }

  setupFinished(seq, ts, data) {
    const out = this.setup;
    this.setup = null;
    if (out) {
      if (out.classList.contains("pending")) {
        out.textContent = "(no output)";
        out.classList.remove("pending");
      }
      if (data.exit_code !== 0 && !data.skipped) out.closest("li").classList.add("failed");
    }
    return this.note(seq, ts, setupOutcome(data));
  }

  toolResult(seq, data) {
    const out = this.calls.get(data.id);
    this.calls.delete(data.id);
    if (out === null) return this.quiet(seq); // ask_user's answer: the person's message shows it
    const text = String(data.output === null || data.output === undefined ? "" : data.output);
    if (out === undefined) { // a result whose call is not shown: on its own line
      return this.add(seq, "tool", h("pre", { class: "out" + (data.is_error ? " error" : "") }, text));
    }
    out.textContent = text || "(no output)";
    out.className = "out" + (data.is_error ? " error" : "");
    out.dataset.seq = String(seq);
    if (data.is_error) out.closest("li").classList.add("failed");
  }
}

// What setup.finished says (daemon/agent/setup_phase.py): how the setup ended, and what its
// proxy refused.
export function setupOutcome(data) {
  const took = typeof data.duration_s === "number" ? " after " + data.duration_s + " s" : "";
  let said;
  if (data.skipped) said = "Setup not run: " + data.skipped;
  else if (data.timed_out) said = "Setup stopped at its time limit" + took;
  else if (data.exit_code === 0) said = "Setup done" + took;
  else if (data.exit_code === null || data.exit_code === undefined) said = "Setup ended" + took;
  else said = "Setup failed with exit code " + data.exit_code + took;
  const refused = Number(data.refused_total) || 0;
  if (refused) {
    const first = Array.isArray(data.refused) && data.refused[0] ? data.refused[0] : null;
    said += "; the proxy refused " + refused + (refused === 1 ? " request" : " requests") +
      (first ? " (" + first.host + ":" + first.port + ")" : "");
  }
  return said;
}

// The one line a tool call shows collapsed: the command, or what the editor does to which file.
export function toolLine(name, input) {
  if (name === "bash") return "$ " + String(input.command || "").split("\n", 1)[0];
  if (name === EDITOR) return String(input.command || "edit") + " " + String(input.path || "");
  return String(name) + " " + JSON.stringify(input).slice(0, 200);
}

function nearBottom() {
  const page = document.scrollingElement;
  return page.scrollHeight - page.scrollTop - innerHeight < 120;
}

function scrollToEnd() {
  const page = document.scrollingElement;
  page.scrollTop = page.scrollHeight;
}
