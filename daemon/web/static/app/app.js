// agentd's phone client: the entry module. Signs in and out, routes between the views
// (#/ tasks, #/new, #/task/ID, #/settings for notifications, #/ops for operators), owns the
// one live connection and the offline banner. Plain ES modules, no build step; everything
// shown from the server goes through dom.js's text-only helpers.

import { session, hooks, get, post, clientConfig, describe, restoreToken, keepToken, forgetToken, OfflineError,
  HttpError } from "./api.js";
import { $, say, clock } from "./dom.js";
import { Live } from "./live.js";
import { TaskList } from "./lists.js";
import { NewTask } from "./newtask.js";
import { TaskView } from "./task.js";
import { ShareView, SharePanel, takeShareToken } from "./share.js";
import { startGitHub, finishGitHub } from "./signin.js";
import { PushControl } from "./notifications.js";
import { SettingsView } from "./settings.js";
import { loadCache, cachedMe, rememberMe, rememberList, cachedList, clearCache, savedAt } from "./local.js";

const VIEWS = ["signin", "list", "new", "task", "ops", "share", "settings"];
const app = { live: null, view: null, leaving: false };

// The live connection is made per session; the views talk to it through this stand-in.
const liveProxy = {
  follow: (id, follower) => app.live && app.live.follow(id, follower),
  unfollow: (id) => app.live && app.live.unfollow(id),
  resubscribe: (id) => app.live && app.live.resubscribe(id),
};

const mine = new TaskList({
  root: $("tasks"), empty: $("tasks-empty"), more: $("tasks-more"), error: $("list-error"),
  filter: $("filter"), ops: false, onLoaded: rememberList,
});
const everyone = new TaskList({
  root: $("ops-tasks"), empty: $("ops-empty"), more: $("ops-more"), error: $("ops-error"),
  filter: $("ops-filter"), user: $("ops-user"), ops: true,
});
const taskView = new TaskView(liveProxy);
const push = new PushControl({ button: $("push-toggle"), note: $("push-note") });
const settings = new SettingsView();
const newTask = new NewTask({ onCreated: (task) => { location.hash = "#/task/" + encodeURIComponent(task.id); } });

// -- the banner: offline, or the live feed down --------------------------------------------------

function setOffline(offline) {
  const banner = $("banner");
  if (offline) {
    const at = savedAt();
    banner.textContent = "You are offline. This is what was last seen" + (at ? " (" + clock(at) + ")" : "") +
      "; it updates when the connection is back.";
  }
  banner.hidden = !offline;
}

function setLive(state) {
  const pill = $("live");
  pill.textContent = { live: "live", connecting: "reconnecting", offline: "offline" }[state];
  pill.className = "live " + (state === "live" ? "on" : "off");
  if (state === "live") setOffline(false);
  if (state === "offline" && session.token) setOffline(true);
}

hooks.offline = () => setOffline(true);
hooks.online = () => { if (navigator.onLine !== false) setOffline(false); };
hooks.unauthorized = () => signOut("Your sign-in has ended (the token expired or was revoked): sign in again.", false);
addEventListener("offline", () => { if (session.token) setOffline(true); });

// -- signing in and out ------------------------------------------------------------------------

async function signInWith(token, remember) {
  keepToken(token, remember);
  try {
    await startSession(await get("/api/me"));
  } catch (error) {
    forgetToken();
    const message = error instanceof HttpError && error.status === 401
      ? "That token is not valid: unknown, expired or revoked."
      : "Could not sign in: " + describe(error);
    showSignIn(message);
  }
}

// ``me``: as GET /api/me answered, or null to ask (or, offline, to use the remembered one).
async function startSession(me) {
  if (!me) {
    try {
      me = await get("/api/me");
    } catch (error) {
      if (!(error instanceof OfflineError) || !(me = cachedMe())) {
        if (!(error instanceof HttpError && error.status === 401)) showSignIn(describe(error));
        return;
      }
      setOffline(true);
    }
  }
  session.me = me;
  loadCache(me.user_id);
  rememberMe(me);
  $("whoami").textContent = me.login;
  $("nav").hidden = $("account").hidden = false;
  $("nav-ops").hidden = !me.is_operator;
  say($("signin-error"), "");
  app.live = new Live({
    token: session.token,
    onState: setLive,
    onAuthLost: (code) => signOut(code === 4403
      ? "You are no longer an operator: sign in again."
      : "Your sign-in has ended (the token expired or was revoked): sign in again.", false),
    onTasksEvent: (message) => {
      mine.onStatusEvent(message);
      if (me.is_operator && app.view === "ops") everyone.onStatusEvent(message);
    },
  });
  const cached = cachedList();
  if (cached && cached.filter === mine.filter.value) mine.show(cached.tasks, cached.next_cursor);
  app.live.start();
  push.refresh();
  route();
}

async function signOut(message, revoke = true) {
  if (app.leaving) return; // a 401 while revoking ends nothing more
  app.leaving = true;
  const token = session.token;
  if (app.live) app.live.stop();
  app.live = null;
  taskView.close();
  let note = message || "";
  if (revoke && token) await push.forget(); // while the token still works
  if (revoke && token) {
    try {
      await post("/api/auth/signout");
    } catch (error) {
      if (!(error instanceof HttpError && error.status === 401)) {
        note = "Signed out on this device; the token could not be revoked now (" + describe(error) + ").";
      }
    }
  }
  forgetToken();
  clearCache();
  mine.show([], null);
  everyone.show([], null);
  $("nav").hidden = $("account").hidden = true;
  setOffline(false);
  setLive("offline");
  showSignIn(note);
  app.leaving = false;
}

function showSignIn(message) {
  say($("signin-error"), message || "");
  clientConfig().then((config) => { $("gh-signin").hidden = !config.github_sign_in; }, () => {});
  $("token").value = "";
  if (location.hash && location.hash !== "#/") history.replaceState(null, "", location.pathname);
  show("signin");
}

// -- routing -------------------------------------------------------------------------------------

function show(view) {
  const changed = app.view !== view;
  if (changed && app.view === "task") taskView.close();
  if (changed && app.view === "settings") {
    settings.close();
    push.refresh(); // the view's own control may have changed this device's state
  }
  $("account").classList.toggle("in-settings", view === "settings"); // one push control shown
  app.view = view;
  for (const name of VIEWS) $("v-" + name).hidden = name !== view;
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.dataset.route === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (changed) {
    const heading = $("v-" + view).querySelector("h1");
    if (heading) heading.focus({ preventScroll: true });
    scrollTo(0, 0);
  }
}

function route() {
  if (!session.me) return;
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/");
  if (name === "task" && rest.length) {
    show("task");
    taskView.open(decodeURIComponent(rest.join("/")));
    sharePanel.open(decodeURIComponent(rest.join("/")));
  } else if (name === "new") {
    show("new");
    newTask.show();
  } else if (name === "settings") {
    const first = app.view !== "settings";
    show("settings");
    if (first) settings.show();
  } else if (name === "ops" && session.me.is_operator) {
    const first = app.view !== "ops";
    show("ops");
    if (first) everyone.reload();
  } else {
    show("list");
    mine.reload();
  }
}

// -- wiring --------------------------------------------------------------------------------------

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) signInWith(token, $("remember").checked);
});
$("gh-signin").addEventListener("click", async () => {
  try {
    await startGitHub($("remember").checked);
  } catch (error) {
    say($("signin-error"), error.message);
  }
});
$("signout").addEventListener("click", () => signOut(""));
addEventListener("hashchange", route);
setInterval(() => { // ages ("3 min ago") move on
  if (app.view === "list") mine.render();
  if (app.view === "ops") everyone.render();
}, 30_000);

if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => { /* works without */ });
}

// A share link's page (#/s/TOKEN): that one task, read-only, and nothing else of the app; the
// signed-in person's own token is neither read nor sent (share.js).
const sharePanel = new SharePanel($("t-share-panel"));
function showShared(token) {
  document.querySelector("header .brand").removeAttribute("href");
  const view = new ShareView(token, { onState: setLive });
  show("share");
  view.start();
}

async function boot() {
  const shared = takeShareToken();
  if (shared) {
    showShared(shared);
    return;
  }
  let back = null;
  try {
    back = await finishGitHub();
  } catch (error) {
    showSignIn(error.message);
    return;
  }
  if (back) await signInWith(back.token, back.remember);
  else if (restoreToken()) await startSession(null);
  else showSignIn("");
}

boot();
