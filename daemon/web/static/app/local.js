// What the app remembers to show offline: the last task list and the last few tasks opened,
// with their events, kept in the same storage as the token (api.js says why) under one key,
// for one user. Bounded: OPENED_KEPT tasks, each with its events only while they fit in
// EVENTS_MAX_CHARS; a full storage drops the events, never the app. Live-only text deltas are
// never kept. Saving is debounced: the timeline calls save() often.

import { session } from "./api.js";

const CACHE_KEY = "agentd.cache";
const OPENED_KEPT = 5;
const EVENTS_MAX_CHARS = 400_000;
const SAVE_DELAY_MS = 800;

let cache = empty(null);
let timer = null;

function empty(userId) {
  return { user_id: userId, me: null, list: null, opened: [], saved_at: null };
}

// The cache of ``userId`` from storage (another user's is dropped).
export function loadCache(userId) {
  let stored = null;
  try {
    stored = JSON.parse((session.storage || sessionStorage).getItem(CACHE_KEY) || "null");
  } catch (_) { /* unreadable: start afresh */ }
  cache = stored && stored.user_id === userId && Array.isArray(stored.opened) ? stored : empty(userId);
  return cache;
}

// The cached identity, for starting offline with a remembered token.
export function cachedMe() {
  try {
    const stored = JSON.parse((session.storage || sessionStorage).getItem(CACHE_KEY) || "null");
    return stored && stored.me ? stored.me : null;
  } catch (_) {
    return null;
  }
}

export function savedAt() {
  return cache.saved_at;
}

export function rememberMe(me) {
  if (cache.user_id !== me.user_id) cache = empty(me.user_id);
  cache.me = me;
  save();
}

export function rememberList(tasks, nextCursor, filter) {
  cache.list = { tasks, next_cursor: nextCursor, filter };
  save();
}

export function cachedList() {
  return cache.list;
}

// ``events``: the task's stored events from seq 1 without a gap, or null if not all are held.
export function rememberTask(task, events) {
  cache.opened = cache.opened.filter((entry) => entry.task.id !== task.id);
  cache.opened.unshift({ task, events });
  cache.opened.length = Math.min(cache.opened.length, OPENED_KEPT);
  save();
}

export function cachedTask(id) {
  return cache.opened.find((entry) => entry.task.id === id) || null;
}

export function clearCache() {
  clearTimeout(timer);
  timer = null;
  cache = empty(null);
  sessionStorage.removeItem(CACHE_KEY);
  localStorage.removeItem(CACHE_KEY);
}

export function save() {
  if (timer === null) timer = setTimeout(flush, SAVE_DELAY_MS);
}

export function flush() {
  clearTimeout(timer);
  timer = null;
  if (!session.storage || cache.user_id === null) return;
  cache.saved_at = Date.now() / 1000;
  for (const entry of cache.opened) {
    if (entry.events && JSON.stringify(entry.events).length > EVENTS_MAX_CHARS) entry.events = null;
  }
  try {
    session.storage.setItem(CACHE_KEY, JSON.stringify(cache));
  } catch (_) {
    // Storage full: keep the list and the tasks, not their events.
    for (const entry of cache.opened) entry.events = null;
    try { session.storage.setItem(CACHE_KEY, JSON.stringify(cache)); } catch (_) { /* give up */ }
  }
}

addEventListener("pagehide", flush);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") flush();
});
