// Remote-controlled socket.io-client (4.x) for the Python test-suite.
//
// Protocol: one JSON object per line on stdin (commands) and stdout (outputs).
// Nothing else is ever written to stdout; diagnostics go to stderr.
//
// Commands (every command carries an "id" that its reply echoes):
//   {"id":1,"cmd":"connect","url":"http://127.0.0.1:3000/ns","name":"main",
//    "opts":{...socket.io-client options...},"wait":true,"report_pings":false}
//       Defaults added to opts unless given: forceNew:true, reconnection:false.
//       opts.agent, when an object, is the options of a node:http Agent (keepAlive,
//       maxSockets, localAddress, ...): sockets given equal options share one Agent,
//       so their requests share its kept-alive connections.
//       With wait (default) the reply is sent once "connect" or "connect_error"
//       happened: {"ok":true,"sid":..,"engine_sid":..,"transport":..} or
//       {"ok":false,"message":..,"data":..}. With wait:false it is sent at once.
//       Naming an existing socket replaces (and disconnects) it.
//   {"id":2,"cmd":"emit","socket":"main","event":"x","args":[...],"ack":false,"timeout":5000}
//       ack:true -> reply {"ok":true,"ack":[...]} once the server acks, or
//       {"ok":false,"error":"timeout"} after `timeout` ms (default 5000).
//   {"id":3,"cmd":"ack-next","socket":"main","event":"x"|null,"args":[...],"persistent":false}
//       Queue an automatic answer for the next server->client event (named
//       `event`, or any event when null/absent) that requests an ack.
//       persistent:true keeps answering every such event.
//   {"id":4,"cmd":"ack","socket":"main","ack_id":7,"args":[...]}
//       Answer a pending server->client ack by hand (ack_id from the event line).
//   {"id":5,"cmd":"disconnect","socket":"main"}
//   {"id":6,"cmd":"state","socket":"main"}  -> {"ok":true,"connected":..,"sid":..,"transport":..}
//   {"id":8,"cmd":"stop-pongs","socket":"main"}
//       From now on the socket's Engine.IO layer no longer answers the server's
//       pings (everything else still works): for heartbeat-timeout tests.
//   {"id":7,"cmd":"exit"}                   -> closes every socket and exits(0). EOF on stdin does the same.
//
// Outputs:
//   {"type":"ready","pid":..,"client_version":..}                         once at start
//   {"type":"reply","id":..,"ok":true|false,...}                          for every command
//   {"type":"connect","socket":..,"sid":..,"engine_sid":..,"transport":"polling"|"websocket",
//    "recovered":bool}     (socket.recovered: connection state recovery worked)
//   {"type":"upgrade","socket":..,"transport":"websocket"}
//   {"type":"connect_error","socket":..,"message":..,"data":..}
//   {"type":"disconnect","socket":..,"reason":..,"description":..}
//   {"type":"event","socket":..,"event":..,"args":[...],"ack_id":null|int,"acked":null|[...]}
//       ack_id is set when the server requested an ack that is still unanswered;
//       acked holds the args auto-answered by an "ack-next" rule.
//   {"type":"ping","socket":..}                 only with report_pings:true
//   {"type":"error","message":..}               driver-level problems (bad JSON, exceptions)
//
// Binary: a Buffer / ArrayBuffer / typed array travels as {"$bin":"<base64>"},
// in both directions, at any depth inside args.

import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { io } from "socket.io-client";
import http from "node:http";

const require = createRequire(import.meta.url);
const CLIENT_VERSION = require("socket.io-client/package.json").version;

/** @type {Map<string, http.Agent>} one Agent per distinct options object */
const agents = new Map();

function agentFor(spec) {
  const key = JSON.stringify(spec);
  if (!agents.has(key)) agents.set(key, new http.Agent(spec));
  return agents.get(key);
}

/** @type {Map<string, {socket: any, rules: any[], pendingAcks: Map<number, Function>}>} */
const sockets = new Map();
let nextAckId = 1;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function log(...args) {
  process.stderr.write(`[driver] ${args.join(" ")}\n`);
}

// ---------------------------------------------------------------- binary codec

function encode(value) {
  if (value === undefined) return null;
  if (value === null || typeof value !== "object") return value;
  if (Buffer.isBuffer(value)) return { $bin: value.toString("base64") };
  if (value instanceof ArrayBuffer) return { $bin: Buffer.from(value).toString("base64") };
  if (ArrayBuffer.isView(value)) {
    return { $bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  }
  if (Array.isArray(value)) return value.map(encode);
  const res = {};
  for (const [k, v] of Object.entries(value)) res[k] = encode(v);
  return res;
}

function decode(value) {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map(decode);
  const keys = Object.keys(value);
  if (keys.length === 1 && keys[0] === "$bin" && typeof value.$bin === "string") {
    return Buffer.from(value.$bin, "base64");
  }
  const res = {};
  for (const [k, v] of Object.entries(value)) res[k] = decode(v);
  return res;
}

// ---------------------------------------------------------------- helpers

function transportName(socket) {
  return socket.io.engine?.transport?.name ?? null;
}

function getEntry(name) {
  const entry = sockets.get(name ?? "main");
  if (!entry) throw new Error(`unknown socket ${JSON.stringify(name ?? "main")}`);
  return entry;
}

function watchEngine(name, socket, reportPings) {
  // The manager (socket.io) owns the engine; a new engine is created on every
  // (re)open, so hook "open" and also the current engine if it already exists.
  const hooked = new WeakSet();
  const hook = () => {
    const engine = socket.io.engine;
    if (!engine || hooked.has(engine)) return;
    hooked.add(engine);
    engine.on("upgrade", (transport) => {
      out({ type: "upgrade", socket: name, transport: transport?.name ?? transportName(socket) });
    });
  };
  socket.io.on("open", hook);
  hook();
  if (reportPings) socket.io.on("ping", () => out({ type: "ping", socket: name }));
}

function errorData(err) {
  return {
    message: err?.message ?? String(err),
    data: encode(err?.data ?? null),
    description: err?.description !== undefined ? String(err.description) : undefined,
  };
}

// ---------------------------------------------------------------- commands

const handlers = {
  connect(cmd) {
    const name = cmd.name ?? "main";
    const old = sockets.get(name);
    if (old) {
      old.socket.offAny();
      old.socket.removeAllListeners();
      old.socket.disconnect();
      sockets.delete(name);
    }
    const opts = { forceNew: true, reconnection: false, ...decode(cmd.opts ?? {}) };
    if (opts.agent && typeof opts.agent === "object") opts.agent = agentFor(opts.agent);
    const socket = io(cmd.url, opts);
    const entry = { socket, rules: [], pendingAcks: new Map() };
    sockets.set(name, entry);
    watchEngine(name, socket, Boolean(cmd.report_pings));

    let replied = cmd.wait === false;
    const reply = (obj) => {
      if (replied) return;
      replied = true;
      out({ type: "reply", id: cmd.id, ...obj });
    };

    socket.on("connect", () => {
      const info = {
        sid: socket.id,
        engine_sid: socket.io.engine?.id ?? null,
        transport: transportName(socket),
        recovered: Boolean(socket.recovered),
      };
      out({ type: "connect", socket: name, ...info });
      reply({ ok: true, ...info });
    });
    socket.on("connect_error", (err) => {
      const e = errorData(err);
      out({ type: "connect_error", socket: name, ...e });
      reply({ ok: false, ...e });
    });
    socket.on("disconnect", (reason, details) => {
      out({
        type: "disconnect",
        socket: name,
        reason,
        description: details ? String(details.description ?? details.message ?? details) : null,
      });
    });
    socket.onAny((event, ...args) => {
      let ackFn = null;
      if (args.length && typeof args[args.length - 1] === "function") ackFn = args.pop();
      const line = { type: "event", socket: name, event, args: encode(args), ack_id: null, acked: null };
      if (ackFn) {
        const idx = entry.rules.findIndex((r) => r.event == null || r.event === event);
        if (idx >= 0) {
          const rule = entry.rules[idx];
          if (!rule.persistent) entry.rules.splice(idx, 1);
          line.acked = rule.args;
          out(line);
          ackFn(...decode(rule.args));
          return;
        }
        const ackId = nextAckId++;
        entry.pendingAcks.set(ackId, ackFn);
        line.ack_id = ackId;
      }
      out(line);
    });
    if (replied) out({ type: "reply", id: cmd.id, ok: true, pending: true });
  },

  emit(cmd) {
    const { socket } = getEntry(cmd.socket);
    const args = decode(cmd.args ?? []);
    if (!cmd.ack) {
      socket.emit(cmd.event, ...args);
      out({ type: "reply", id: cmd.id, ok: true });
      return;
    }
    socket.timeout(cmd.timeout ?? 5000).emit(cmd.event, ...args, (err, ...resp) => {
      if (err) out({ type: "reply", id: cmd.id, ok: false, error: "timeout", message: err.message });
      else out({ type: "reply", id: cmd.id, ok: true, ack: encode(resp) });
    });
  },

  "ack-next"(cmd) {
    const entry = getEntry(cmd.socket);
    entry.rules.push({ event: cmd.event ?? null, args: cmd.args ?? [], persistent: Boolean(cmd.persistent) });
    out({ type: "reply", id: cmd.id, ok: true });
  },

  ack(cmd) {
    const entry = getEntry(cmd.socket);
    const fn = entry.pendingAcks.get(cmd.ack_id);
    if (!fn) throw new Error(`no pending ack ${cmd.ack_id}`);
    entry.pendingAcks.delete(cmd.ack_id);
    fn(...decode(cmd.args ?? []));
    out({ type: "reply", id: cmd.id, ok: true });
  },

  disconnect(cmd) {
    const entry = getEntry(cmd.socket);
    entry.socket.disconnect();
    out({ type: "reply", id: cmd.id, ok: true });
  },

  state(cmd) {
    const { socket } = getEntry(cmd.socket);
    out({
      type: "reply",
      id: cmd.id,
      ok: true,
      connected: socket.connected,
      sid: socket.id ?? null,
      engine_sid: socket.io.engine?.id ?? null,
      transport: transportName(socket),
    });
  },

  "stop-pongs"(cmd) {
    const { socket } = getEntry(cmd.socket);
    const engine = socket.io.engine;
    if (!engine) throw new Error("socket has no engine (not connected)");
    const send = engine._sendPacket.bind(engine);
    // engine.io-client answers a ping with _sendPacket("pong"); drop exactly that.
    engine._sendPacket = (type, ...rest) => (type === "pong" ? undefined : send(type, ...rest));
    out({ type: "reply", id: cmd.id, ok: true });
  },

  exit(cmd) {
    out({ type: "reply", id: cmd.id, ok: true });
    shutdown(0);
  },
};

function shutdown(code) {
  for (const { socket } of sockets.values()) {
    try {
      socket.disconnect();
    } catch {
      /* ignore */
    }
  }
  sockets.clear();
  // let the disconnect packets/lines flush, then leave even if handles remain
  setTimeout(() => process.exit(code), 50).unref();
  process.stdout.write("", () => setTimeout(() => process.exit(code), 20));
}

// ---------------------------------------------------------------- main loop

process.on("uncaughtException", (err) => {
  log("uncaught", err?.stack ?? err);
  out({ type: "error", message: String(err?.message ?? err) });
});
process.stdout.on("error", () => process.exit(0)); // reader went away

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    out({ type: "error", message: `bad JSON: ${err.message}` });
    return;
  }
  const handler = handlers[cmd.cmd];
  if (!handler) {
    out({ type: "reply", id: cmd.id ?? null, ok: false, error: `unknown cmd ${JSON.stringify(cmd.cmd)}` });
    return;
  }
  try {
    handler(cmd);
  } catch (err) {
    out({ type: "reply", id: cmd.id ?? null, ok: false, error: String(err?.message ?? err) });
  }
});
rl.on("close", () => shutdown(0));

out({ type: "ready", pid: process.pid, client_version: CLIENT_VERSION });
