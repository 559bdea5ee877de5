// The connection to the server: JSON requests and their replies over one WebSocket, server events, and
// reconnection that logs in again, rejoins the rooms and hands over what was missed, each event once.
// It follows the Python SDK (utuvox/client/): every room event carries its room's sequence number, the
// highest one handed over is remembered per room, and a room that is catching up holds its live events
// back until the gap has been fetched from history, so nothing is lost and nothing repeats.

// A goodbye that means "do not come back": reconnecting would undo a quit, a kick or a ban.
const FINAL_GOODBYES = new Set(["quit", "ban", "banned", "kick", "kicked"]);
// Login failures that no retry can fix.
const FATAL_LOGIN = new Set(["auth_failed", "banned", "no_such_user", "forbidden"]);
const PAGE = 500; // the largest history page the server serves
const KEEPALIVE_MS = 25000;

export const roomKey = (name) => name.toLowerCase();

export class ServerError extends Error {
  constructor(frame) {
    super(frame.message || frame.code);
    this.code = frame.code;
    this.retryAfter = frame.retry_after;
  }
}

export class Disconnected extends Error {
  constructor(reason) {
    super(reason || "Disconnected from the server.");
    this.code = "disconnected";
  }
}

export class Client {
  /**
   * @param {string} url ws:// or wss:// address of the server
   * @param {{onEvent: (frame: object) => void, onState: (state: string, detail: string) => void}} hooks
   */
  constructor(url, hooks) {
    this.url = url;
    this.onEvent = hooks.onEvent;
    this.onState = hooks.onState;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, request, onReply}
    this.routes = new Map(); // download_id / upload_id -> handler of frames without "re"
    this.ready = false; // logged in and caught up: requests may go
    this.waiters = []; // requests waiting for ready
    this.user = null;
    this.isAdmin = false;
    this.credentials = null;
    this.rooms = []; // joined rooms, in the order joined (the server's current room is the last)
    this.seen = new Map(); // room key -> highest seq handed over
    this.held = new Map(); // room key -> live events held back while the room catches up
    this.final = false; // closed for good: no reconnect
    this.goodbye = null;
    this.retryDelay = 250;
    this.retryTimer = null;
    this.keepalive = null;
  }

  // --- the socket --------------------------------------------------------------------------------

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      this.goodbye = null;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        resolve();
      };
      ws.onmessage = (message) => this.receive(message.data);
      ws.onclose = (close) => {
        if (this.ws !== ws) return;
        this.ws = null;
        if (!opened) reject(new Disconnected("Could not reach the server."));
        this.lost(this.goodbye ? this.goodbye.reason : close.reason || "The connection was closed.");
      };
    });
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) throw new Disconnected();
    this.ws.send(JSON.stringify(frame));
  }

  /** Send a request now and return a promise of its reply (an error reply rejects). */
  call(request, onReply = null) {
    const id = this.nextId++;
    const framed = { ...request, id };
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, request: framed, onReply });
      try {
        this.send(framed);
      } catch (exc) {
        this.pending.delete(id);
        reject(exc);
      }
    });
  }

  /** Like call, but waits while the client is reconnecting. */
  async request(request, onReply = null) {
    if (!this.ready) {
      if (this.final) throw new Disconnected(this.goodbye ? this.goodbye.reason : "Disconnected.");
      await new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    }
    return this.call(request, onReply);
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "keepalive") return;
    if (frame.re !== undefined && frame.re !== null && this.pending.has(frame.re)) {
      const pending = this.pending.get(frame.re);
      this.pending.delete(frame.re);
      if (pending.onReply) pending.onReply(frame);
      if (frame.type === "error" || frame.type === "upload_failed" || frame.type === "download_failed") {
        pending.reject(new ServerError(frame));
      } else {
        this.learn(pending.request, frame);
        pending.resolve(frame);
      }
      return;
    }
    const route = this.routes.get(frame.download_id ?? frame.upload_id);
    if (route && frame.re === undefined) {
      route(frame);
      return;
    }
    if (frame.type === "bye") {
      this.goodbye = frame;
      if (FINAL_GOODBYES.has(frame.code)) this.final = true;
    }
    if (frame.type === "room_deleted") this.forget(frame.room);
    if (this.admit(frame)) this.onEvent(frame);
  }

  // Follow what the server confirmed, synchronously with the frames around it, so that the live events
  // right behind a join are judged against what the join showed.
  learn(request, reply) {
    if (reply.type === "logged_in") {
      this.user = reply.user;
      this.isAdmin = reply.is_admin;
      this.credentials = { username: reply.user, password: request.password };
    } else if (reply.type === "joined") {
      this.entered(reply.room);
      const k = roomKey(reply.room);
      const last = reply.history.length ? reply.history[reply.history.length - 1].seq : 0;
      if (!this.held.has(k)) this.seen.set(k, Math.max(this.seen.get(k) ?? 0, last, reply.last_seq));
    } else if (reply.type === "left") {
      this.forget(reply.room);
    } else if (request.type === "changepassword" && this.credentials) {
      this.credentials.password = request.new_password;
    }
  }

  // --- rooms -------------------------------------------------------------------------------------

  entered(room) {
    const k = roomKey(room);
    this.rooms = this.rooms.filter((r) => roomKey(r) !== k);
    this.rooms.push(room);
  }

  forget(room) {
    const k = roomKey(room);
    this.rooms = this.rooms.filter((r) => roomKey(r) !== k);
    this.held.delete(k);
  }

  admit(frame) {
    if (typeof frame.room !== "string" || typeof frame.seq !== "number") return true;
    const k = roomKey(frame.room);
    const held = this.held.get(k);
    if (held) {
      held.push(frame);
      return false;
    }
    if (frame.seq <= (this.seen.get(k) ?? 0)) return false;
    this.seen.set(k, frame.seq);
    return true;
  }

  release(room, missed) {
    const k = roomKey(room);
    const held = this.held.get(k) ?? [];
    this.held.delete(k);
    let high = this.seen.get(k) ?? 0;
    for (const event of [...missed, ...held].sort((x, y) => x.seq - y.seq)) {
      if (event.seq > high) {
        high = event.seq;
        this.onEvent(event);
      }
    }
    this.seen.set(k, high);
  }

  /** Rejoin a room and hand over every event after `after`, oldest first. */
  async catchUp(room, after) {
    const k = roomKey(room);
    this.held.set(k, []);
    this.seen.set(k, after);
    let joined;
    try {
      joined = await this.call({ type: "join", room });
      let missed = joined.history.filter((e) => e.seq > after);
      let lowest = joined.history.length ? joined.history[0].seq : joined.last_seq + 1;
      while (lowest > after + 1) {
        const page = await this.call({ type: "history", room: joined.room, before: lowest, limit: PAGE });
        if (!page.events.length) break;
        missed = page.events.filter((e) => e.seq > after).concat(missed);
        lowest = page.events[0].seq;
        if (!page.more) break;
      }
      this.release(joined.room, missed);
    } catch (exc) {
      if (exc instanceof Disconnected) throw exc; // still held: the next connection catches it up
      this.release(room, []);
      this.forget(room);
      throw exc;
    }
    return joined;
  }

  // --- signing in and staying connected ------------------------------------------------------------

  async signIn(username, password, register) {
    if (!this.ws) await this.open();
    const reply = await this.call({ type: register ? "register" : "login", username, password });
    this.final = false;
    this.becomeReady();
    this.onState("connected", this.url);
    return reply;
  }

  becomeReady() {
    this.ready = true;
    this.retryDelay = 250;
    for (const waiter of this.waiters.splice(0)) waiter.resolve();
    clearInterval(this.keepalive);
    // A server that vanished without closing (a cut cable) is noticed by a ping that gets no answer.
    this.keepalive = setInterval(() => this.probe(), KEEPALIVE_MS);
  }

  async probe() {
    const ws = this.ws;
    if (!this.ready || !ws) return;
    const timer = setTimeout(() => ws.close(), KEEPALIVE_MS);
    try {
      await this.call({ type: "ping" });
    } catch {
      // the connection is already going
    } finally {
      clearTimeout(timer);
    }
  }

  lost(reason) {
    const wasReady = this.ready;
    this.ready = false;
    clearInterval(this.keepalive);
    for (const pending of this.pending.values()) pending.reject(new Disconnected(reason));
    this.pending.clear();
    for (const route of this.routes.values()) route({ type: "disconnected", message: reason });
    this.routes.clear();
    if (this.final || !this.credentials) {
      for (const waiter of this.waiters.splice(0)) waiter.reject(new Disconnected(reason));
      this.onState("closed", reason);
      return;
    }
    if (wasReady) this.onState("reconnecting", reason);
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    clearTimeout(this.retryTimer);
    // Jitter, so that everybody cut off by a restart does not come back in the same instant.
    const delay = this.retryDelay * (0.5 + Math.random() / 2);
    this.retryDelay = Math.min(this.retryDelay * 2, 5000);
    this.retryTimer = setTimeout(() => this.reconnect(), delay);
  }

  async reconnect() {
    try {
      await this.open();
    } catch {
      return; // onclose has scheduled the next attempt
    }
    try {
      await this.restore();
    } catch (exc) {
      if (exc instanceof ServerError && FATAL_LOGIN.has(exc.code)) {
        this.final = true;
        this.goodbye = { reason: `Could not log in again: ${exc.message}` };
      }
      if (this.ws) this.ws.close();
      return;
    }
    this.becomeReady();
    this.onState("reconnected", this.url);
  }

  async restore() {
    for (const room of this.rooms) this.held.set(roomKey(room), []);
    const { username, password } = this.credentials;
    await this.call({ type: "login", username, password });
    for (const room of [...this.rooms]) {
      try {
        await this.catchUp(room, this.seen.get(roomKey(room)) ?? 0);
      } catch (exc) {
        if (exc instanceof Disconnected) throw exc;
        this.onEvent({ type: "notice", ts: new Date().toISOString(), text: `Could not rejoin ${room}: ${exc.message}` });
      }
    }
  }

  close() {
    this.final = true;
    this.credentials = null;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
  }
}
