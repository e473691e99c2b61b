// agentd's service worker (scope /): the app's shell from the cache first, refreshed in the
// background (stale-while-revalidate), so the app opens offline and a new version is used
// from the next launch. Everything else (/api, /admin, /auth, /ws, task data) is never
// touched here: it goes to the network as if there were no worker, and is never cached.

const CACHE = "agentd-shell-v1";
// Every file of the shell (tests/test_client_browser.py checks this list against the files).
const SHELL = [
  "/",
  "/manifest.webmanifest",
  "/app/app.css",
  "/app/api.js",
  "/app/app.js",
  "/app/diff.js",
  "/app/dom.js",
  "/app/lists.js",
  "/app/live.js",
  "/app/local.js",
  "/app/newtask.js",
  "/app/notifications.js",
  "/app/settings.js",
  "/app/share.js",
  "/app/signin.js",
  "/app/task.js",
  "/app/timeline.js",
  "/app/icon.svg",
  "/app/icon-192.png",
  "/app/icon-512.png",
];
const SHELL_PATHS = new Set(SHELL);

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  // The page at / (with or without a query: GitHub's sign-in comes back to /?code=...).
  const key = url.pathname === "/" ? "/" : url.pathname;
  if (!SHELL_PATHS.has(key) || (key === "/" && request.mode !== "navigate" && url.search)) return;
  event.respondWith(fromCache(key, event));
});

async function fromCache(key, event) {
  const cache = await caches.open(CACHE);
  const cached = await cache.match(key);
  const fresh = fetch(key, { cache: "no-cache", credentials: "omit" }).then((response) => {
    if (response.ok) cache.put(key, response.clone());
    return response;
  });
  if (!cached) return fresh;
  event.waitUntil(fresh.catch(() => undefined)); // offline: the cached copy stands
  return cached;
}

// -- Web Push (notifications.js subscribes; daemon/notify/webpush.py sends) ----------------------
// A message is {title, body, url, tag}; what it says is shown as text by the system (the model
// may have written part of it), cut short here too, and the only place a click opens is a task
// page of this origin (/#/task/ID), whatever the message says.

const TASK_URL = /^\/#\/task\/[A-Za-z0-9_-]{1,64}$/;

function line(value, limit) {
  const text = typeof value === "string" ? value.replace(/[\u0000-\u001f\u007f-\u009f]+/g, " ").trim() : "";
  return text.length > limit ? text.slice(0, limit - 1) + "\u2026" : text;
}

function taskUrl(url) {
  return new URL(typeof url === "string" && TASK_URL.test(url) ? url : "/", self.location.origin).href;
}

// Checked again on the click: only this origin's task pages.
function clickTarget(stored) {
  try {
    const url = new URL(stored, self.location.origin);
    return url.origin === self.location.origin ? taskUrl(url.pathname + url.hash) : taskUrl("/");
  } catch (_) {
    return taskUrl("/");
  }
}

self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = (event.data && event.data.json()) || {};
  } catch (_) { /* not JSON: a plain notification */ }
  const title = line(data.title, 80) || "agentd";
  event.waitUntil(self.registration.showNotification(title, {
    body: line(data.body, 240),
    tag: line(data.tag, 80) || "agentd",
    icon: "/app/icon-192.png",
    data: { url: taskUrl(data.url) },
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = clickTarget((event.notification.data || {}).url);
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const open = windows.find((client) => new URL(client.url).origin === self.location.origin);
    if (open) {
      const focused = await open.focus();
      if (focused && "navigate" in focused) await focused.navigate(target).catch(() => undefined);
      return;
    }
    await self.clients.openWindow(target);
  })());
});
