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
