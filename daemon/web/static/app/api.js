// The session (the API token and who it is) and every HTTP call the app makes.
//
// Where the token is kept: sessionStorage by default (gone when the tab or the installed app
// closes, as /admin does), or localStorage when the person ticks "stay signed in on this
// device" (an installed app is a new session on every launch; without it a phone would sign in
// each time). It is sent only as an Authorization header (the WebSocket: in its first message),
// never in a URL, never logged, never cached by the service worker (which leaves /api alone).
// What the app remembers for offline use (local.js) lives in the same storage as the token, so
// "stay signed in" is also "remember my tasks on this device", and signing out clears both.

const TOKEN_KEY = "agentd.token";

export class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch failed before any answer: no network, or the daemon is unreachable.
export class OfflineError extends Error {}

export const session = {
  token: null,
  me: null, // GET /api/me: {user_id, login, is_operator, github_linked}
  storage: null, // sessionStorage or localStorage: where the token (and the cache) live
};

// Hooks the app sets: the network is back or gone; the token stopped working.
export const hooks = { online() {}, offline() {}, unauthorized() {} };

export function restoreToken() {
  for (const storage of [sessionStorage, localStorage]) {
    const token = storage.getItem(TOKEN_KEY);
    if (token) {
      session.token = token;
      session.storage = storage;
      return true;
    }
  }
  return false;
}

export function keepToken(token, remember) {
  forgetToken();
  session.token = token;
  session.storage = remember ? localStorage : sessionStorage;
  session.storage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(TOKEN_KEY);
  session.token = null;
  session.me = null;
}

// One HTTP call: JSON in and out. Throws HttpError (the server's {"error":{code,message}}) or
// OfflineError; a 401 also calls hooks.unauthorized (the token was revoked or expired).
export async function api(method, path, { body, headers, signal, auth = true } = {}) {
  const sent = { ...(headers || {}) };
  if (auth && session.token) sent.Authorization = "Bearer " + session.token;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal,
    });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    hooks.offline();
    throw new OfflineError("The server cannot be reached: you may be offline.");
  }
  hooks.online();
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (_) { /* not JSON: described below */ }
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new HttpError(response.status, error.code || "http_" + response.status,
      error.message || response.statusText || "HTTP " + response.status);
    if (response.status === 401 && auth && session.token) hooks.unauthorized(failure);
    throw failure;
  }
  return { data, status: response.status, headers: response.headers };
}

export async function get(path, options) {
  return (await api("GET", path, options)).data;
}

export async function post(path, body, options) {
  return (await api("POST", path, { ...(options || {}), body })).data;
}

// GET /api/client-config (no token needed), asked once per page load unless it failed.
let config = null;
export function clientConfig() {
  if (!config) {
    config = get("/api/client-config", { auth: false }).catch((error) => {
      config = null;
      throw error;
    });
  }
  return config;
}

export function taskPath(id, tail = "") {
  return "/api/tasks/" + encodeURIComponent(id) + tail;
}

// What a failure tells the person: the server's message, or that the network is gone.
export function describe(error) {
  if (error instanceof HttpError || error instanceof OfflineError) return error.message;
  return "Something went wrong: " + (error && error.message ? error.message : String(error));
}
