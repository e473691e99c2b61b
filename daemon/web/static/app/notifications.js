// "Notify me on this device": Web Push for this browser, in the account footer.
//
// On: ask for the permission (only from the click: browsers refuse a prompt without a user
// gesture), subscribe this browser's push manager with the server's VAPID key (GET
// /api/push/key) and hand the subscription to the server (POST /api/push/subscriptions).
// Off: unsubscribe the browser and tell the server (DELETE /api/push/subscriptions). The
// service worker (sw.js) shows what arrives. Every failure is said in words in the note below
// the button; nothing from the server is shown but as text.

import { api, get, post, describe } from "./api.js";
import { say } from "./dom.js";

const SUPPORTED = "serviceWorker" in navigator && "PushManager" in self && "Notification" in self;
const READY_TIMEOUT_MS = 10_000;
const SUBSCRIBE_TIMEOUT_MS = 15_000;

export const MESSAGES = {
  unsupported: "This browser cannot show notifications from agentd. On an iPhone, add agentd to the " +
    "home screen first and open it from there.",
  denied: "Notifications are blocked for this site. Allow them in the browser's site settings, " +
    "then press the button again.",
  dismissed: "Notifications were not allowed. Press the button again to be asked again.",
  on: "This device is notified when a task finishes, fails or asks you something.",
  off: "This device is not notified.",
};

// The VAPID key as pushManager.subscribe takes it everywhere (some browsers want bytes).
function keyBytes(base64url) {
  const text = atob(base64url.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - base64url.length % 4) % 4));
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

function sameKey(buffer, key) {
  const held = new Uint8Array(buffer);
  const wanted = keyBytes(key);
  return held.length === wanted.length && held.every((byte, i) => byte === wanted[i]);
}

// What went wrong on this device, in words of its own (no "Something went wrong" before them).
class PushError extends Error {}

// ``promise``, or a PushError saying ``what`` did not happen in ``ms``.
async function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new PushError(what)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function registration() {
  const found = await navigator.serviceWorker.getRegistration("/");
  const reg = found || await navigator.serviceWorker.register("/sw.js", { scope: "/" });
  if (reg.active) return reg;
  return within(navigator.serviceWorker.ready, READY_TIMEOUT_MS, "the app's service worker did not start");
}

export class PushControl {
  constructor({ button, note }) {
    this.button = button;
    this.note = note;
    this.on = false;
    this.busy = false;
    button.addEventListener("click", () => this.toggle());
  }

  // After sign-in: show whether this device is subscribed.
  async refresh() {
    if (!SUPPORTED) {
      this.button.disabled = true;
      say(this.note, MESSAGES.unsupported);
      return;
    }
    this.button.disabled = false;
    say(this.note, Notification.permission === "denied" ? MESSAGES.denied : "");
    try {
      const reg = await navigator.serviceWorker.getRegistration("/");
      const sub = reg ? await reg.pushManager.getSubscription() : null;
      this.show(Boolean(sub) && Notification.permission === "granted");
    } catch (_) {
      this.show(false);
    }
  }

  show(on) {
    this.on = on;
    this.button.setAttribute("aria-pressed", String(on));
    this.button.textContent = on ? "Stop notifying me on this device" : "Notify me on this device";
  }

  async toggle() {
    if (this.busy) return;
    this.busy = true;
    this.button.disabled = true;
    try {
      if (this.on) await this.unsubscribe();
      else await this.subscribe();
    } catch (error) {
      say(this.note, "Could not change notifications: " + (error instanceof PushError ? error.message : describe(error)));
    } finally {
      this.busy = false;
      this.button.disabled = !SUPPORTED;
    }
  }

  async subscribe() {
    if (!SUPPORTED) {
      say(this.note, MESSAGES.unsupported);
      return;
    }
    const permission = Notification.permission === "default"
      ? await Notification.requestPermission()
      : Notification.permission;
    if (permission !== "granted") {
      say(this.note, permission === "denied" ? MESSAGES.denied : MESSAGES.dismissed);
      this.show(false);
      return;
    }
    const { public_key: key } = await get("/api/push/key");
    const reg = await registration();
    let sub = await reg.pushManager.getSubscription();
    const held = sub && sub.options && sub.options.applicationServerKey;
    if (sub && held && !sameKey(held, key)) {
      await sub.unsubscribe(); // made with another server's key: useless here
      sub = null;
    }
    // A browser subscribes through its vendor's push service; one that cannot reach it may
    // never answer (headless Chromium does not).
    sub = sub || await within(
      reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key) }),
      SUBSCRIBE_TIMEOUT_MS, "this browser's push service did not answer; try again when online");
    const json = sub.toJSON();
    await post("/api/push/subscriptions", { endpoint: json.endpoint, keys: { p256dh: json.keys.p256dh, auth: json.keys.auth } });
    this.show(true);
    say(this.note, MESSAGES.on);
  }

  async unsubscribe({ quiet = false } = {}) {
    const reg = SUPPORTED ? await navigator.serviceWorker.getRegistration("/") : null;
    const sub = reg ? await reg.pushManager.getSubscription() : null;
    if (sub) {
      const endpoint = sub.endpoint;
      await sub.unsubscribe();
      await api("DELETE", "/api/push/subscriptions", { body: { endpoint } });
    }
    this.show(false);
    if (!quiet) say(this.note, MESSAGES.off);
  }

  // Signing out: this device stops being notified for the account (best effort, before the
  // token is revoked; the push service's 410 removes it later otherwise).
  async forget() {
    try {
      if (SUPPORTED) await this.unsubscribe({ quiet: true });
    } catch (_) { /* offline: the server drops it at its first 404/410 */ }
    say(this.note, "");
  }
}
