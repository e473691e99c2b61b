// The app's one WebSocket to the daemon's /ws (protocol: README, "WebSocket /ws").
//
// Followers of a task say where they are (``after()``: the last seq they hold); on every
// (re)connection each is subscribed again from there, so the server replays exactly what was
// missed and then goes live: nothing lost across a dropped network or a phone asleep. The
// follower itself drops what it already holds (seq <= after) and asks again from its last seq
// when a seq skips (``resubscribe``), so it never shows a gap or a duplicate. A ``resync``
// (this client read too slowly) is answered the same way. Reconnection waits 1 s, doubling to
// 15 s; it is immediate when the browser comes back online or the page becomes visible (a
// socket that survived a sleep is probed with a ping and replaced if it stays silent).

const STATUS_EVENTS = new Set(["task.created", "task.status", "task.finished"]);
const PROBE_MS = 4000;

export class Live {
  // ``onState(state)``: "connecting" | "live" | "offline"; ``onAuthLost(code)``: 4401 (token
  // no longer valid) or 4403 (no longer an operator); the connection is not retried then.
  // ``share``: a share link's token instead of ``token`` (share.js): no tasks feed then.
  constructor({ token, share, onState, onAuthLost, onTasksEvent }) {
    this.token = token;
    this.share = share || null;
    this.onState = onState;
    this.onAuthLost = onAuthLost;
    this.onTasksEvent = onTasksEvent; // status events of the tasks feed (and of followed tasks)
    this.followers = new Map(); // task id -> {after(), onEvent(message)}
    this.ws = null;
    this.welcomed = false;
    this.stopped = false;
    this.delay = 1000;
    this.timer = null;
    this.probe = null;
    this.state = "offline";
    this.listeners = [
      [window, "online", () => this.connectNow()],
      [window, "offline", () => this.drop("offline")],
      [document, "visibilitychange", () => this.wake()],
    ];
    for (const [target, name, fn] of this.listeners) target.addEventListener(name, fn);
  }

  start() {
    this.connectNow();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.probe);
    for (const [target, name, fn] of this.listeners) target.removeEventListener(name, fn);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "signed out");
    this.setState("offline");
  }

  follow(taskId, follower) {
    this.followers.set(taskId, follower);
    this.subscribe(taskId);
  }

  unfollow(taskId) {
    if (this.followers.delete(taskId)) this.send({ type: "unsubscribe", task_id: taskId });
  }

  // Ask the server again for the task's events after the follower's last seq.
  resubscribe(taskId) {
    this.subscribe(taskId);
  }

  subscribe(taskId) {
    const follower = this.followers.get(taskId);
    if (follower) this.send({ type: "subscribe", task_id: taskId, after: follower.after() });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.onState(state);
  }

  connectNow() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) return;
    if (navigator.onLine === false) {
      this.setState("offline");
      return;
    }
    this.connect();
  }

  // Back from sleep or another app: make sure the socket still carries something.
  wake() {
    if (document.visibilityState !== "visible" || this.stopped) return;
    if (!this.ws) {
      this.connectNow();
      return;
    }
    if (this.ws.readyState !== WebSocket.OPEN || this.probe) return;
    this.send({ type: "ping" });
    this.probe = setTimeout(() => {
      this.probe = null;
      this.drop("connecting");
      this.connectNow();
    }, PROBE_MS);
  }

  // Forget the socket (its onclose will not reconnect) and show ``state``.
  drop(state) {
    const ws = this.ws;
    this.ws = null;
    clearTimeout(this.probe);
    this.probe = null;
    if (ws) ws.close(1000, "reconnecting");
    this.setState(state);
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/ws");
    this.ws = ws;
    this.welcomed = false;
    this.setState("connecting");
    // The token goes in the first message: a browser cannot put headers on a WebSocket, and a
    // token never goes in a URL. Messages are handled in order, so the pong after the
    // subscriptions says the token was good and every subscription is in place.
    ws.onopen = () => {
      if (this.ws !== ws) return;
      if (this.share) {
        this.send({ type: "auth", share: this.share });
      } else {
        this.send({ type: "auth", token: this.token });
        this.send({ type: "subscribe_tasks" });
      }
      for (const taskId of this.followers.keys()) this.subscribe(taskId);
      this.send({ type: "ping" });
    };
    ws.onmessage = (frame) => {
      if (this.ws === ws) this.receive(JSON.parse(frame.data));
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return; // replaced, or stopped
      this.ws = null;
      clearTimeout(this.probe);
      this.probe = null;
      if (event.code === 4401 || event.code === 4403) {
        this.setState("offline");
        this.onAuthLost(event.code);
        return;
      }
      this.setState(navigator.onLine === false ? "offline" : "connecting");
      this.timer = setTimeout(() => this.connectNow(), this.delay * (0.75 + Math.random() / 2));
      this.delay = Math.min(this.delay * 2, 15000);
    };
  }

  receive(message) {
    if (message.type === "pong") {
      clearTimeout(this.probe);
      this.probe = null;
      if (!this.welcomed) {
        this.welcomed = true;
        this.delay = 1000;
        this.setState("live");
        this.onTasksEvent(null); // status changes missed while away: the list reloads
      }
    } else if (message.type === "event") {
      const follower = this.followers.get(message.task_id);
      if (follower) follower.onEvent(message);
      if (STATUS_EVENTS.has(message.event)) this.onTasksEvent(message);
    } else if (message.type === "resync") {
      if (message.task_id === null) {
        this.send({ type: "subscribe_tasks" });
        this.onTasksEvent(null); // the list reloads: status events may have been dropped
      } else {
        this.subscribe(message.task_id);
      }
    } else if (message.type === "error") {
      if (message.code === "rate_limited") {
        const again = () => {
          if (message.task_id === undefined) this.send({ type: "subscribe_tasks" });
          else this.subscribe(message.task_id);
        };
        setTimeout(again, (message.retry_after || 1) * 1000);
      } else if (message.task_id !== undefined) {
        const follower = this.followers.get(message.task_id);
        if (follower && follower.onError) follower.onError(message);
      }
    }
  }
}
