// The "Notifications" view (#/settings): how a person hears of their tasks when the app is
// closed. This device's Web Push (notifications.js's control), an ntfy topic (PUT/GET/DELETE
// /api/notify/ntfy, POST /api/notify/ntfy/test), their webhooks (/api/webhooks: the signing
// secret is in the answer to the POST only, so it is shown once, then dropped from the page)
// and the delivery log (GET /api/deliveries) with Redeliver on failed deliveries.
//
// Everything the server says (URLs, errors) is shown as text through dom.js; no URL here is
// made a link (a webhook's address is for machines). Deliveries have no live feed: while one
// shown is pending the log is read again, a bounded number of times.

import { api, get, post, describe } from "./api.js";
import { $, h, say, age, clock, badge } from "./dom.js";
import { PushControl } from "./notifications.js";

// The notification kinds (daemon/notify/outbox.py KINDS), in words.
export const KINDS = [
  ["task.succeeded", "Finished"],
  ["task.failed", "Failed"],
  ["task.cancelled", "Was cancelled"],
  ["task.waiting_input", "Asks you something"],
  ["task.pr_opened", "Opened a pull request"],
];
const WORDS = new Map([...KINDS, ["test", "Test"]]);
const RECHECK_MS = 2000; // a pending delivery is usually delivered in well under this
const RECHECKS = 30; // at most a minute of re-reading after the last action
const SHOWN = 25; // deliveries listed

function words(kinds) {
  return (kinds || []).map((kind) => WORDS.get(kind) || String(kind)).join(", ");
}

// What the person must fix before anything is sent, said as it is.
class Invalid extends Error {}

// Runs ``work`` for ``button``: the button disabled meanwhile, the panel's note and error
// cleared first, then the note set to what ``work`` returns or the error to what went wrong.
async function act(button, panel, work) {
  button.disabled = true;
  say(panel.error, "");
  say(panel.note, "");
  try {
    const done = await work();
    if (done) say(panel.note, done);
  } catch (failure) {
    say(panel.error, failure instanceof Invalid ? failure.message : describe(failure));
  } finally {
    button.disabled = false;
  }
}

// One checkbox per notification kind, all ticked at first.
class KindPicker {
  constructor(root, prefix) {
    this.boxes = new Map();
    root.replaceChildren(...KINDS.map(([kind, text]) => {
      const id = prefix + "-" + kind.replace(/\./g, "-");
      const box = h("input", { type: "checkbox", id, checked: true, dataset: { kind } });
      this.boxes.set(kind, box);
      return h("p", { class: "check" }, box, h("label", { for: id }, text));
    }));
  }

  // The kinds ticked (Invalid when none is).
  chosen() {
    const kinds = [...this.boxes].filter(([, box]) => box.checked).map(([kind]) => kind);
    if (!kinds.length) throw new Invalid("Choose at least one kind of notification.");
    return kinds;
  }

  set(kinds) {
    const on = new Set(kinds);
    for (const [kind, box] of this.boxes) box.checked = on.has(kind);
  }
}

// The person's ntfy topic: set (in place of the one before), test, remove.
class NtfyPanel {
  constructor(view) {
    this.view = view;
    this.note = $("ntfy-note");
    this.error = $("ntfy-error");
    this.kinds = new KindPicker($("ntfy-kinds"), "ntfy-k");
    this.target = null;
    $("ntfy-form").addEventListener("submit", (event) => {
      event.preventDefault();
      act($("ntfy-save"), this, () => this.save());
    });
    $("ntfy-test").addEventListener("click", () => act($("ntfy-test"), this, () => this.test()));
    $("ntfy-remove").addEventListener("click", () => act($("ntfy-remove"), this, () => this.remove()));
  }

  async load() {
    try {
      this.show((await get("/api/notify/ntfy")).topic); // null: no topic is set
    } catch (error) {
      say(this.error, describe(error));
    }
  }

  show(target) {
    this.target = target;
    $("ntfy-state").textContent = target
      ? "Notifications go to " + target.url + " (" + words(target.events) + ")."
      : "No ntfy topic is set.";
    $("ntfy-test").hidden = $("ntfy-remove").hidden = !target;
    $("ntfy-token").value = "";
    if (target) {
      $("ntfy-url").value = target.url;
      this.kinds.set(target.events);
    }
  }

  async save() {
    const url = $("ntfy-url").value.trim();
    if (!url) throw new Invalid("Write the topic's URL first.");
    const token = $("ntfy-token").value.trim();
    const body = { url, events: this.kinds.chosen() };
    if (token) body.token = token;
    this.show((await api("PUT", "/api/notify/ntfy", { body })).data);
    this.view.targetsChanged();
    return "Saved.";
  }

  async test() {
    await post("/api/notify/ntfy/test");
    this.view.deliveries.load({ again: true });
    return "A test notification is on its way: see Recent deliveries.";
  }

  async remove() {
    await api("DELETE", "/api/notify/ntfy");
    $("ntfy-url").value = "";
    this.show(null);
    this.view.targetsChanged();
    return "Removed: ntfy is no longer notified.";
  }
}

// The person's webhooks: listed, added (the secret shown once), tested, removed.
class Webhooks {
  constructor(view) {
    this.view = view;
    this.note = $("hooks-note");
    this.error = $("hooks-error");
    this.kinds = new KindPicker($("hook-kinds"), "hook-k");
    this.list = [];
    $("hook-form").addEventListener("submit", (event) => {
      event.preventDefault();
      act($("hook-add"), this, () => this.add());
    });
    $("hook-secret-done").addEventListener("click", () => this.forgetSecret());
    $("hook-secret-copy").addEventListener("click", () => this.copySecret());
  }

  async load() {
    try {
      this.render((await get("/api/webhooks")).webhooks);
    } catch (error) {
      say(this.error, describe(error));
    }
  }

  render(list) {
    this.list = list;
    $("hooks").replaceChildren(...list.map((hook) => this.item(hook)));
    $("hooks-empty").hidden = list.length > 0;
  }

  item(hook) {
    const test = h("button", { type: "button" }, "Send a test");
    const remove = h("button", { type: "button", class: "danger" }, "Remove");
    const yes = h("button", { type: "button", class: "danger" }, "Yes, remove it");
    const no = h("button", { type: "button" }, "Keep it");
    const confirm = h("div", { class: "confirm", hidden: true },
      h("p", {}, "Remove this webhook? Nothing more is sent to it."), h("p", { class: "actions" }, yes, no));
    const buttons = h("p", { class: "actions" }, test, remove);
    test.addEventListener("click", () => act(test, this, async () => {
      await post("/api/webhooks/" + encodeURIComponent(hook.id) + "/test");
      this.view.deliveries.load({ again: true });
      return "A test delivery is on its way to " + hook.url + ": see Recent deliveries.";
    }));
    remove.addEventListener("click", () => {
      buttons.hidden = true;
      confirm.hidden = false;
      no.focus();
    });
    no.addEventListener("click", () => {
      confirm.hidden = true;
      buttons.hidden = false;
      remove.focus();
    });
    yes.addEventListener("click", () => act(yes, this, async () => {
      await api("DELETE", "/api/webhooks/" + encodeURIComponent(hook.id));
      this.render(this.list.filter((other) => other.id !== hook.id));
      this.view.targetsChanged();
      $("hooks-h").focus();
      return "Removed the webhook to " + hook.url + ".";
    }));
    return h("li", { class: "card hook", dataset: { id: hook.id } },
      h("p", { class: "url" }, hook.url),
      h("p", { class: "meta" }, "When a task: " + words(hook.events)),
      hook.disabled_at ? h("p", { class: "error" }, "Disabled: its receiver said it is gone. Remove it and add it again.") : null,
      buttons, confirm);
  }

  async add() {
    const url = $("hook-url").value.trim();
    if (!url) throw new Invalid("Write the webhook's URL first.");
    const made = await post("/api/webhooks", { url, events: this.kinds.chosen() });
    $("hook-url").value = "";
    this.render([...this.list, made]);
    this.showSecret(made.secret);
    this.view.targetsChanged();
    return "Added the webhook to " + made.url + ".";
  }

  showSecret(secret) {
    $("hook-secret-value").textContent = secret;
    $("hook-secret-copy").textContent = "Copy";
    $("hook-secret").hidden = false;
    $("hook-secret-copy").focus();
  }

  async copySecret() {
    try {
      await navigator.clipboard.writeText($("hook-secret-value").textContent);
      $("hook-secret-copy").textContent = "Copied";
    } catch (_) {
      // No clipboard here (plain http off localhost): select it for the person to copy.
      getSelection().selectAllChildren($("hook-secret-value"));
      $("hook-secret-copy").textContent = "Selected: copy it";
    }
  }

  // The secret leaves the page: it is never shown again.
  forgetSecret() {
    $("hook-secret-value").textContent = "";
    $("hook-secret").hidden = true;
  }
}

// The delivery log, newest first, with Redeliver on failed deliveries.
class Deliveries {
  constructor(view) {
    this.view = view;
    this.error = $("dlv-error");
    this.note = $("dlv-error"); // act()'s note: only errors are said here
    this.timer = null;
    this.checks = 0;
    this.reading = 0; // the newest read's number: an older answer is dropped
    $("dlv-status").addEventListener("change", () => this.load({ again: true }));
    $("dlv-refresh").addEventListener("click", () => this.load({ again: true }));
  }

  // ``again``: after an action, so pending deliveries are watched for a while again.
  async load({ again = false } = {}) {
    if (again) this.checks = 0;
    this.stop();
    const reading = ++this.reading;
    const query = new URLSearchParams({ limit: String(SHOWN) });
    if ($("dlv-status").value) query.set("status", $("dlv-status").value);
    let list;
    try {
      list = (await get("/api/deliveries?" + query)).deliveries;
    } catch (error) {
      if (reading === this.reading) say(this.error, describe(error));
      return;
    }
    if (reading !== this.reading || !this.view.open) return;
    say(this.error, "");
    this.render(list);
    if (list.some((d) => d.status === "pending") && this.checks++ < RECHECKS) {
      this.timer = setTimeout(() => this.load(), RECHECK_MS);
    }
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  render(list) {
    const names = this.view.targetNames();
    $("deliveries").replaceChildren(...list.map((d) => this.item(d, names)));
    $("dlv-empty").hidden = list.length > 0;
  }

  item(d, names) {
    const facts = [d.attempts + (d.attempts === 1 ? " attempt" : " attempts"), age(d.created_at)];
    if (d.delivered_at) facts.push("delivered " + clock(d.delivered_at));
    else if (d.status === "pending" && d.attempts > 0 && d.next_at) facts.push("next try " + clock(d.next_at));
    if (d.last_status) facts.push("HTTP " + d.last_status);
    const redeliver = d.status === "failed" ? h("button", { type: "button" }, "Redeliver") : null;
    if (redeliver) {
      redeliver.addEventListener("click", () => act(redeliver, this, async () => {
        await post("/api/deliveries/" + encodeURIComponent(d.id) + "/redeliver");
        this.load({ again: true });
      }));
    }
    return h("li", { class: "card delivery", dataset: { id: d.id, status: d.status } },
      h("p", { class: "row" }, badge(d.status), h("strong", {}, WORDS.get(d.kind) || String(d.kind))),
      h("p", { class: "url meta" }, "To " + (names.get(d.target_id) || d.target_id)),
      h("p", { class: "meta" }, facts.join(" · ")),
      d.last_error ? h("p", { class: "error" }, d.last_error) : null,
      redeliver ? h("p", { class: "actions" }, redeliver) : null);
  }
}

export class SettingsView {
  constructor() {
    this.open = false;
    this.push = new PushControl({ button: $("set-push"), note: $("set-push-note") });
    this.ntfy = new NtfyPanel(this);
    this.hooks = new Webhooks(this);
    this.deliveries = new Deliveries(this);
  }

  async show() {
    this.open = true;
    this.push.refresh();
    await Promise.all([this.ntfy.load(), this.hooks.load()]);
    if (this.open) this.deliveries.load({ again: true });
  }

  // Leaving the view (or signing out): a secret still shown is dropped, the log stops.
  close() {
    this.open = false;
    this.deliveries.stop();
    this.hooks.forgetSecret();
    for (const id of ["ntfy-note", "ntfy-error", "hooks-note", "hooks-error", "dlv-error"]) say($(id), "");
  }

  targetsChanged() {
    this.deliveries.load();
  }

  // Where each of the person's targets sends, for the delivery log.
  targetNames() {
    const names = new Map(this.hooks.list.map((hook) => [hook.id, hook.url]));
    if (this.ntfy.target) names.set(this.ntfy.target.id, "ntfy " + this.ntfy.target.url);
    return names;
  }
}
