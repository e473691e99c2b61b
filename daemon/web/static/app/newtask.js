// The new-task form: a repository (one of the person's GitHub repositories, searched through
// GET /api/repos, or any URL), base branch, prompt, model (the server's allowlist, with its
// prices), the pull request's title and whether it is a draft, and budget.
//
// One Idempotency-Key per submission: made when the form is sent, kept while the same form is
// sent again (the automatic retries after a network failure, or the person tapping again), so
// a POST that reached the server although its answer was lost gives back the same task
// instead of a second one. Changing the form makes the next submission a new one.

import { api, get, clientConfig, describe, session, OfflineError, HttpError } from "./api.js";
import { $, h, age, say, randomId } from "./dom.js";

const RETRY_DELAYS_MS = [1000, 2000, 4000];

export class NewTask {
  constructor({ onCreated }) {
    this.onCreated = onCreated;
    this.config = null;
    this.pending = null; // {fingerprint, key}: the submission being made
    this.search = { q: null, page: 1, timer: null, abort: null };
    $("new-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    $("repo-q").addEventListener("input", () => {
      clearTimeout(this.search.timer);
      this.search.timer = setTimeout(() => this.findRepos(1), 300);
    });
    $("repo-more").addEventListener("click", () => this.findRepos(this.search.page + 1));
    $("model").addEventListener("change", () => this.showPrice());
  }

  async show() {
    say($("new-error"), "");
    if (!this.config) {
      try {
        this.config = await clientConfig();
        this.applyConfig(this.config);
      } catch (_) {
        this.config = null; // offline: the server's defaults apply
      }
    }
    const linked = Boolean(session.me && session.me.github_linked);
    $("repo-search").hidden = !linked;
    const note = $("repo-note");
    note.textContent = linked ? "" : "Sign in with GitHub to pick one of your repositories, or paste a URL.";
    note.hidden = linked;
    if (linked && this.search.q === null) this.findRepos(1);
  }

  // GET /api/client-config: {github_sign_in, models: [{id, default, price}], budget: {defaults, caps}};
  // price: US$ per million tokens, {input,output,cache_write,cache_read}_usd_per_mtok.
  applyConfig(config) {
    const models = Array.isArray(config.models) ? config.models : [];
    this.prices = new Map(models.map((model) => [String(model.id), model.price || {}]));
    const select = $("model");
    select.replaceChildren(...models.map((model) =>
      h("option", { value: String(model.id), selected: Boolean(model.default) },
        String(model.id) + priceTag(model.price))));
    $("model-field").hidden = models.length === 0;
    select.disabled = models.length < 2; // one model is no choice: shown, not sent
    this.showPrice();
    const budget = config.budget || {};
    const caps = budget.caps || {};
    const defaults = budget.defaults || {};
    setLimit($("max-usd"), defaults.max_usd, caps.max_usd);
    setLimit($("max-turns"), defaults.max_turns, caps.max_turns);
    const parts = [];
    if (defaults.max_usd !== undefined) {
      parts.push("Left empty: $" + defaults.max_usd + " and " + defaults.max_turns + " turns.");
    }
    if (caps.max_usd !== undefined) parts.push("At most $" + caps.max_usd + " and " + caps.max_turns + " turns.");
    $("budget-hint").textContent = parts.join(" ");
  }

  async findRepos(page) {
    const q = $("repo-q").value.trim();
    if (this.search.abort) this.search.abort.abort();
    const abort = (this.search.abort = new AbortController());
    const query = new URLSearchParams({ q, page: String(page) });
    try {
      const data = await get("/api/repos?" + query, { signal: abort.signal });
      const repos = Array.isArray(data) ? data : (data && data.repos) || [];
      this.search.q = q;
      this.search.page = page;
      const list = $("repo-results");
      if (page === 1) list.replaceChildren();
      for (const repo of repos) list.append(this.repoItem(repo));
      if (page === 1 && !repos.length) list.append(h("li", { class: "muted" }, "No repository matches."));
      $("repo-more").hidden = !(data && data.next_page);
      say($("repo-note"), "");
    } catch (error) {
      if (error && error.name === "AbortError") return;
      say($("repo-note"), "Your repositories cannot be listed now: " + describe(error) + " Paste a URL instead.");
    }
  }

  showPrice() {
    const price = (this.prices && this.prices.get($("model").value)) || {};
    $("model-price").textContent = price.input_usd_per_mtok === undefined ? "" :
      "US$ per million tokens: " + price.input_usd_per_mtok + " in, " + price.output_usd_per_mtok +
      " out, " + price.cache_write_usd_per_mtok + " cache write, " + price.cache_read_usd_per_mtok + " cache read.";
  }

  repoItem(repo) {
    const pick = () => {
      $("repo-url").value = String(repo.clone_url || "");
      $("base-branch").placeholder = repo.default_branch ? "default: " + repo.default_branch : "the repository's default";
      for (const other of $("repo-results").querySelectorAll("button")) other.setAttribute("aria-pressed", "false");
      button.setAttribute("aria-pressed", "true");
    };
    const button = h("button", { type: "button", class: "pick", "aria-pressed": "false", onclick: pick },
      h("span", { class: "repo" }, String(repo.full_name)),
      h("span", { class: "meta" }, [repo.private ? "private" : "public",
        repo.pushed_at ? "pushed " + age(Date.parse(repo.pushed_at) / 1000) : ""].filter(Boolean).join(" · ")));
    return h("li", {}, button);
  }

  body() {
    const body = { repo_url: $("repo-url").value.trim(), prompt: $("prompt").value.trim() };
    const base = $("base-branch").value.trim();
    if (base) body.base_branch = base;
    const budget = {};
    const usd = $("max-usd").value.trim();
    const turns = $("max-turns").value.trim();
    if (usd) budget.max_usd = Number(usd);
    if (turns) budget.max_turns = Number(turns);
    if (Object.keys(budget).length) body.budget = budget;
    if (!$("model").disabled && $("model").value) body.model = $("model").value;
    const title = $("pr-title").value.replace(/\s+/g, " ").trim(); // one line, as the server wants
    if (title) body.pr_title = title;
    if ($("pr-draft").checked) body.draft = true;
    return body;
  }

  async submit() {
    const body = this.body();
    if (!body.repo_url || !body.prompt) {
      say($("new-error"), !body.repo_url ? "Pick a repository or paste its URL." : "Say what the agent should do.");
      (!body.repo_url ? $("repo-url") : $("prompt")).focus();
      return;
    }
    const fingerprint = JSON.stringify(body);
    if (!this.pending || this.pending.fingerprint !== fingerprint) {
      this.pending = { fingerprint, key: randomId(18) };
    }
    const key = this.pending.key;
    const button = $("new-submit");
    button.disabled = true;
    say($("new-error"), "");
    try {
      const task = await this.post(body, key);
      this.pending = null;
      $("new-form").reset();
      $("repo-results").querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", "false"));
      this.onCreated(task);
    } catch (error) {
      const again = error instanceof OfflineError || (error instanceof HttpError && error.status >= 500);
      say($("new-error"), "The task was not started: " + describe(error) +
        (again ? " Tap Start again when you are back online: it will not start twice." : ""));
    } finally {
      button.disabled = false;
    }
  }

  // POST /api/tasks, again with the same key when the network failed or the server had a
  // passing failure; 201 is a new task, 200 the one this key made before.
  async post(body, key) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        const answer = await api("POST", "/api/tasks", { body, headers: { "Idempotency-Key": key } });
        return answer.data;
      } catch (error) {
        const passing = error instanceof OfflineError || (error instanceof HttpError && [502, 503, 504].includes(error.status));
        if (!passing || attempt >= RETRY_DELAYS_MS.length) throw error;
        await new Promise((resolve) => setTimeout(resolve, RETRY_DELAYS_MS[attempt]));
      }
    }
  }
}

// " ($3 in / $15 out)": a model's price per million tokens, as its option shows it.
function priceTag(price) {
  if (!price || price.input_usd_per_mtok === undefined) return "";
  return " ($" + price.input_usd_per_mtok + " in / $" + price.output_usd_per_mtok + " out per Mtok)";
}

function setLimit(input, placeholder, max) {
  if (placeholder !== undefined && placeholder !== null) input.placeholder = String(placeholder);
  if (max !== undefined && max !== null) input.max = String(max);
}
