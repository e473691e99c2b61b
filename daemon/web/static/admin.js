// The agentd admin page: REST (/admin/api) for snapshots and actions, a WebSocket (/admin/ws)
// for live updates. Plain JS, no build step. Task data comes from agents and repositories, so
// it reaches the page only through textContent, never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "agentd.admin.token"; // sessionStorage: gone when the tab closes
  const STATUS_EVENTS = new Set(["task.created", "task.status", "task.finished"]);
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const RETRYABLE = new Set(["succeeded", "failed", "cancelled", "waiting_retry", "waiting_input"]);
  const PAGE = 50;

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    tasks: new Map(), // id -> task row, as /admin/api returns it
    cursor: null,
    filter: "",
    selected: null,
    lastSeq: 0, // the last event of the selected task on the page: resubscribe from here
    ws: null,
    retryDelay: 1000,
  };

  class HttpError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path) {
    const response = await fetch(path, {
      method,
      headers: { Authorization: "Bearer " + state.token },
      cache: "no-store",
    });
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON: described below */ }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new HttpError(response.status, error.code, error.message || response.statusText);
    }
    return body;
  }

  // -- signing in and out ------------------------------------------------------------------

  function denial(status) {
    if (status === 401) return "That token is not valid: unknown, expired or revoked.";
    return "Access denied: this token's user is not an operator. " +
      "The admin page needs an operator's API token.";
  }

  async function signIn(token) {
    state.token = token;
    let me;
    try {
      me = await api("GET", "/admin/api/whoami");
    } catch (error) {
      const message = error instanceof HttpError && (error.status === 401 || error.status === 403)
        ? denial(error.status) : "Could not sign in: " + error.message;
      signOut(message);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("whoami").textContent = me.login;
    $("signin").hidden = true;
    $("signin-error").hidden = true;
    $("session").hidden = false;
    $("console").hidden = false;
    connect();
    await reloadList();
  }

  function signOut(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    const ws = state.ws;
    state.ws = null; // before close(): its onclose must not reconnect
    if (ws) ws.close(1000, "signed out");
    state.tasks.clear();
    state.selected = null;
    $("session").hidden = true;
    $("console").hidden = true;
    $("detail").hidden = true;
    $("signin").hidden = false;
    $("token").value = "";
    const error = $("signin-error");
    error.textContent = message || "";
    error.hidden = !message;
  }

  // Any later 401/403 (token revoked, operator flag removed) ends the session with the reason.
  function failed(error) {
    if (error instanceof HttpError && (error.status === 401 || error.status === 403)) {
      signOut(denial(error.status));
      return true;
    }
    return false;
  }

  // -- the task list -------------------------------------------------------------------------

  function listQuery(cursor) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (state.filter) query.set("status", state.filter);
    if (cursor) query.set("cursor", cursor);
    return "/admin/api/tasks?" + query;
  }

  async function reloadList() {
    try {
      const page = await api("GET", listQuery(null));
      state.tasks.clear();
      for (const task of page.tasks) state.tasks.set(task.id, task);
      state.cursor = page.next_cursor;
      renderList();
    } catch (error) {
      if (!failed(error)) console.error(error);
    }
  }

  async function loadMore() {
    try {
      const page = await api("GET", listQuery(state.cursor));
      for (const task of page.tasks) state.tasks.set(task.id, task);
      state.cursor = page.next_cursor;
      renderList();
    } catch (error) {
      if (!failed(error)) console.error(error);
    }
  }

  function upsert(task) {
    if (state.filter && task.status !== state.filter) state.tasks.delete(task.id);
    else state.tasks.set(task.id, task);
    renderList();
    if (task.id === state.selected) renderDetail(task);
  }

  // One fetch per task at a time; a change seen meanwhile fetches once more afterwards.
  const refreshing = new Map(); // id -> "changed again while fetching"
  async function refreshTask(id) {
    if (refreshing.has(id)) { refreshing.set(id, true); return; }
    refreshing.set(id, false);
    try {
      do {
        refreshing.set(id, false);
        upsert(await api("GET", "/admin/api/tasks/" + encodeURIComponent(id)));
      } while (refreshing.get(id));
    } catch (error) {
      if (!failed(error)) console.error(error);
    } finally {
      refreshing.delete(id);
    }
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function statusBadge(status) {
    const span = document.createElement("span");
    span.className = "status s-" + status;
    span.textContent = status;
    return span;
  }

  function renderList() {
    const rows = [...state.tasks.values()].sort((a, b) => b.created_at - a.created_at);
    const body = $("tasks");
    body.replaceChildren(...rows.map((task) => {
      const tr = document.createElement("tr");
      tr.dataset.taskId = task.id;
      if (task.id === state.selected) tr.className = "selected";
      const status = document.createElement("td");
      status.className = "status-cell";
      status.append(statusBadge(task.status));
      const repo = cell(shortRepo(task.repo_url), "repo");
      repo.title = task.repo_url;
      tr.append(status, cell(task.user_login, "user"), repo, cell(String(task.attempt), "num"),
        cell(when(task.updated_at), "time"), cell(task.id.slice(-8), "id"));
      tr.addEventListener("click", () => select(task.id));
      return tr;
    }));
    $("empty").hidden = rows.length > 0;
    $("more").hidden = !state.cursor;
  }

  // -- the selected task ---------------------------------------------------------------------

  function select(id) {
    if (state.selected === id) return;
    if (state.selected) send({ type: "unsubscribe", task_id: state.selected });
    state.selected = id;
    state.lastSeq = 0;
    $("events").replaceChildren();
    $("action-error").hidden = true;
    $("detail").hidden = false;
    const known = state.tasks.get(id);
    if (known) renderDetail(known);
    renderList();
    subscribeSelected();
    refreshTask(id);
  }

  function subscribeSelected() {
    if (state.selected) send({ type: "subscribe", task_id: state.selected, after: state.lastSeq });
  }

  function renderDetail(task) {
    $("detail-id").textContent = task.id;
    const status = $("detail-status");
    status.className = "status s-" + task.status;
    status.textContent = task.status;
    $("detail-user").textContent = task.user_login;
    $("detail-repo").textContent = task.repo_url + (task.base_branch ? " @ " + task.base_branch : "");
    $("detail-attempt").textContent = String(task.attempt);
    $("detail-reason").textContent = task.reason || "—";
    $("detail-error").textContent = task.error || "—";
    $("detail-prompt").textContent = task.prompt;
    $("cancel").disabled = TERMINAL.has(task.status);
    $("retry").disabled = !RETRYABLE.has(task.status);
  }

  function appendEvent(message) {
    const list = $("events");
    const follow = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const li = document.createElement("li");
    li.dataset.seq = String(message.seq);
    const seq = document.createElement("span");
    seq.className = "seq";
    seq.textContent = "#" + message.seq;
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = when(message.ts);
    const type = document.createElement("span");
    type.className = "etype e-" + message.event.split(".")[0];
    type.textContent = message.event;
    const text = document.createElement("span");
    text.className = "summary";
    text.textContent = summary(message.event, message.data || {});
    li.append(seq, time, type, text);
    list.append(li);
    if (follow) list.scrollTop = list.scrollHeight;
  }

  async function act(action) {
    const id = state.selected;
    const error = $("action-error");
    error.hidden = true;
    $("cancel").disabled = $("retry").disabled = true;
    try {
      upsert(await api("POST", "/admin/api/tasks/" + encodeURIComponent(id) + "/" + action));
    } catch (e) {
      if (failed(e)) return;
      error.textContent = action + " refused: " + e.message;
      error.hidden = false;
      refreshTask(id);
    }
  }

  // -- live ----------------------------------------------------------------------------------

  function send(message) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
  }

  function setLive(on) {
    const live = $("live");
    live.textContent = on ? "live" : "reconnecting";
    live.className = "live " + (on ? "on" : "off");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/admin/ws");
    state.ws = ws;
    // The token goes in the first message: a browser cannot set headers on a WebSocket, and
    // the token must not be in the URL.
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: state.token }));
    ws.onmessage = (frame) => {
      if (state.ws !== ws) return;
      const message = JSON.parse(frame.data);
      if (message.type === "welcome") {
        setLive(true);
        state.retryDelay = 1000;
        // The feed first, then a fresh list: nothing that changes in between is missed.
        send({ type: "subscribe_tasks" });
        subscribeSelected();
        reloadList();
      } else if (message.type === "event") {
        onEvent(message);
      } else if (message.type === "resync") {
        if (message.task_id === null) reloadList();
        else if (message.task_id === state.selected) subscribeSelected();
      } else if (message.type === "error") {
        console.warn("admin feed:", message.code, message.message);
      }
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return; // signed out, or replaced
      state.ws = null;
      setLive(false);
      if (event.code === 4401 || event.code === 4403) {
        signOut(denial(event.code === 4401 ? 401 : 403));
        return;
      }
      // The daemon restarted or the network dropped: back with a growing delay, resuming the
      // selected task from the last event shown (nothing lost, nothing twice).
      setTimeout(() => { if (state.token && !state.ws) connect(); }, state.retryDelay);
      state.retryDelay = Math.min(state.retryDelay * 2, 15000);
    };
  }

  function onEvent(message) {
    if (message.task_id === state.selected && message.seq !== null && message.seq > state.lastSeq) {
      appendEvent(message);
      state.lastSeq = message.seq;
    }
    if (STATUS_EVENTS.has(message.event)) refreshTask(message.task_id);
  }

  // -- formatting ----------------------------------------------------------------------------

  function pad(n) { return String(n).padStart(2, "0"); }

  function when(ts) {
    if (ts === null || ts === undefined) return "";
    const d = new Date(ts * 1000);
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }

  function shortRepo(url) {
    return url.replace(/^https?:\/\/(www\.)?github\.com\//, "").replace(/\.git$/, "");
  }

  function clip(text, n) {
    text = String(text);
    return text.length > n ? text.slice(0, n) + "…" : text;
  }

  function summary(type, data) {
    switch (type) {
      case "task.created": return clip(data.prompt || "", 300);
      case "task.status": {
        const reason = data.reason ? " — " + data.reason : "";
        return data.status + " (attempt " + data.attempt + ")" + reason;
      }
      case "task.finished": return data.status + (data.error ? " — " + data.error : "");
      case "task.retry_scheduled": return "retry in " + data.delay_s + " s — " + data.reason;
      case "agent.text": case "agent.question": case "user.message": return clip(data.text, 400);
      case "agent.tool_call": return data.name + " " + clip(JSON.stringify(data.input), 300);
      case "agent.tool_result": return (data.is_error ? "error: " : "") + clip(data.output, 300);
      case "git.pushed": return data.branch + " @ " + String(data.commit).slice(0, 10);
      case "git.pr_opened": return data.url;
      default: return clip(JSON.stringify(data), 300);
    }
  }

  // -- wiring --------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (token) signIn(token);
    });
    $("signout").addEventListener("click", () => signOut(""));
    $("filter").addEventListener("change", (event) => {
      state.filter = event.target.value;
      reloadList();
    });
    $("more").addEventListener("click", loadMore);
    $("cancel").addEventListener("click", () => act("cancel"));
    $("retry").addEventListener("click", () => act("retry"));
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
  });
})();
