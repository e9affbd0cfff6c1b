// A minimal ttsd client for the examples: the standard WebSocket global, no packages.
// Node 22+ has WebSocket built in; Node 20/21 need `node --experimental-websocket`.

import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

/**
 * `host` and `port` from the daemon's config file (TTS_CONFIG, else
 * $XDG_CONFIG_HOME/ttsd/config.toml), so that the examples find a daemon configured
 * there, as `ttsd` does. Node has no TOML parser and the examples install nothing, so
 * this reads only those two top-level keys (`port = 11600`, `host = "127.0.0.1"`),
 * which is all a client needs; anything else in the file is ignored.
 */
function configured() {
  const path = process.env.TTS_CONFIG ||
    join(process.env.XDG_CONFIG_HOME || join(homedir(), ".config"), "ttsd", "config.toml");
  let text;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return {};
  }
  const found = {};
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "").trim();
    if (line.startsWith("[")) break; // engine tables come after the top-level settings
    const match = /^(host|port)\s*=\s*(?:"([^"]*)"|'([^']*)'|(\d+))$/.exec(line);
    if (match) found[match[1]] = match[2] ?? match[3] ?? match[4];
  }
  return found;
}

const fromFile = configured();
let host = process.env.TTS_HOST || fromFile.host || "127.0.0.1";
if (["0.0.0.0", "::", ""].includes(host)) host = "127.0.0.1"; // bound to every address
const port = process.env.TTS_PORT || fromFile.port || "11500";
export const url = `ws://${host.includes(":") ? `[${host}]` : host}:${port}`;

export const TERMINAL = new Set(["finished", "aborted", "error"]);

/** Print "NAME: message" on stderr and exit with `code`. */
export function fail(message, code = 1) {
  const name = process.argv[1]?.split("/").pop() ?? "ttsd";
  console.error(`${name}: ${message}`);
  process.exit(code);
}

/**
 * Connect to the daemon and wait for its hello. Resolves to an object with:
 *   hello                the server's hello message
 *   request(message)     send a request; resolves to its reply, rejects on an error reply
 *   waitFor(test)        resolves to the first event (past or future) for which test(event) is true
 *   onEvent(fn)          calls fn for every event so far and every later one
 *   closed               a promise of the CloseEvent
 * Exits with a clear message when no daemon answers.
 */
export async function connect() {
  if (typeof WebSocket === "undefined") {
    fail("this Node has no WebSocket global: use Node 22+, or `node --experimental-websocket` on Node 20/21", 2);
  }
  const ws = new WebSocket(url);
  const events = []; // every event so far: a job's events may arrive with the reply that names it
  const listeners = new Set();
  const pending = new Map();
  let nextId = 1;
  let gotHello;
  const hello = new Promise((resolve, reject) => {
    gotHello = resolve;
    ws.addEventListener("error", () => reject(new Error(`no ttsd daemon answers at ${url}; start it with \`ttsd serve\``)));
  });
  const closed = new Promise((resolve) => ws.addEventListener("close", resolve));
  closed.then((close) => {
    const lost = new Error(`the connection closed (${close.code}${close.reason ? " " + close.reason : ""})`);
    for (const { reject } of pending.values()) reject(lost);
    for (const listener of listeners) listener.lost?.(lost);
  });

  ws.addEventListener("message", ({ data }) => {
    const message = JSON.parse(data);
    if (message.type === "hello") return gotHello(message);
    const waiting = message.id !== undefined && pending.get(message.id);
    if (waiting) {
      pending.delete(message.id);
      return message.type === "error"
        ? waiting.reject(new Error(`${message.code}: ${message.message}`))
        : waiting.resolve(message);
    }
    events.push(message);
    for (const listener of listeners) listener(message);
  });

  const helloMessage = await hello.catch((error) => fail(error.message));
  const api = {
    hello: helloMessage,
    closed,
    request(message) {
      const id = nextId++;
      ws.send(JSON.stringify({ ...message, id }));
      return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
    },
    onEvent(fn) {
      events.forEach(fn);
      listeners.add(fn);
    },
    waitFor(test) {
      return new Promise((resolve, reject) => {
        const found = events.find(test);
        if (found) return resolve(found);
        const listener = (event) => test(event) && (listeners.delete(listener), resolve(event));
        listener.lost = reject;
        listeners.add(listener);
      });
    },
  };
  // A daemon with `auth = "token"` wants the token first (browsers' WebSocket cannot
  // send an Authorization header, so the examples never do).
  if (helloMessage.auth === "required") {
    if (!process.env.TTS_TOKEN) fail("the daemon requires its token: set TTS_TOKEN (see docs/security.md)");
    await api.request({ type: "auth", token: process.env.TTS_TOKEN }).catch((error) => fail(error.message));
  }
  return api;
}
