// Baseline (benchmark only): Live Loop's events on Node's socket.io 4.8, one process,
// in memory, as a Node developer would write them.
//
// First come, first served matching; offer, answer, ICE and chat to the partner only;
// stop-call and "Next" end the room, tell the partner and re-queue it; a disconnect does
// the same; acks {ok: true} or {ok: false, error}. No rate limits, no cooldown, light
// validation.
//
// --recovery turns socket.io's connectionStateRecovery on (20 s window). Then a socket
// keeps its id across a recovered blip, so the pair maps survive it; events to a
// partner go through io.to(id) (a broadcast: only those are kept for recovery); and a
// lost connection ends the call only once the window has passed without the socket
// coming back (socket.io fires "disconnect" at once, so the app has to wait itself), and
// nobody is paired with someone who is away. Without it, events go straight to the
// partner's socket (socket.emit, the cheaper path) and a disconnect ends the call at once.
//
//   npm ci --prefix benchmarks/baselines/node
//   node benchmarks/baselines/node/server.mjs --port 8002 [--recovery]
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[process.argv.indexOf("--port") + 1] || 8002);
const RECOVERY = process.argv.includes("--recovery");
const WINDOW = 20_000;
const RECOVERABLE = new Set(["transport close", "transport error", "ping timeout"]);

const httpServer = createServer();
const io = new Server(httpServer, {
  cors: { origin: "*" },
  ...(RECOVERY
    ? { connectionStateRecovery: { maxDisconnectionDuration: WINDOW, skipMiddlewares: true } }
    : {}),
});

const sockets = new Map(); // id -> socket (without recovery: emit straight to it)
const waiting = new Map(); // id -> profile, arrival order
const partnerOf = new Map();
const roomOf = new Map();
const profile = new Map();
const away = new Map(); // id -> timer (recovery only)

const send = RECOVERY
  ? (id, event, payload) => io.to(id).emit(event, payload)
  : (id, event, payload) => sockets.get(id)?.emit(event, payload);

const error = (code, message) => ({ ok: false, error: { code, message } });

function refuse(socket, event, code, message) {
  socket.emit("error-message", { code, message, event });
  return error(code, message);
}

function match(first, second) {
  const room = Math.random().toString(36).slice(2);
  partnerOf.set(first, second).set(second, first);
  roomOf.set(first, room).set(second, room);
  for (const [me, other, initiator] of [[first, second, true], [second, first, false]]) {
    const details = profile.get(other) ?? { name: "", image: "" };
    send(me, "match-done", {
      roomId: room,
      remoteUserDetails: { socket: other, userName: details.name, userImage: details.image },
      initiator,
    });
  }
}

function enqueue(id) {
  if (waiting.has(id) || partnerOf.has(id) || !profile.has(id)) return;
  for (const other of waiting.keys()) {
    if (away.has(other)) continue; // not paired with someone who is not there
    waiting.delete(other);
    match(other, id);
    return;
  }
  waiting.set(id, profile.get(id));
}

function endCall(id) {
  const partner = partnerOf.get(id);
  partnerOf.delete(id);
  roomOf.delete(id);
  if (partner !== undefined) {
    partnerOf.delete(partner);
    roomOf.delete(partner);
    send(partner, "stop-by-remote-user");
    enqueue(partner);
  }
}

function gone(id) {
  waiting.delete(id);
  endCall(id);
  profile.delete(id);
  sockets.delete(id);
}

io.on("connection", (socket) => {
  const id = socket.id;
  sockets.set(id, socket);
  if (socket.recovered && away.has(id)) {
    clearTimeout(away.get(id));
    away.delete(id);
  }
  const relay = (event, outEvent, payload, ack) => {
    const partner = partnerOf.get(id);
    if (partner === undefined) return ack?.(refuse(socket, event, "not-in-room", "you are not in a call"));
    send(partner, outEvent, payload);
    ack?.({ ok: true });
  };
  socket.on("request-room", (data, ack) => {
    if (!data || typeof data.name !== "string" || !data.name.trim()) {
      return ack?.(refuse(socket, "request-room", "invalid-payload", "name is required"));
    }
    profile.set(id, { name: data.name.trim(), image: String(data.userImage ?? "") });
    if (partnerOf.has(id)) endCall(id); // "Next"
    enqueue(id);
    ack?.({ ok: true });
  });
  socket.on("negotiation-call-offer", (data, ack) => {
    if (!data || typeof data.offer !== "object") return ack?.(refuse(socket, "negotiation-call-offer", "invalid-payload", "offer"));
    const me = profile.get(id) ?? { name: "" };
    relay("negotiation-call-offer", "negotiation-call-offer", {
      remoteUserDetails: { socket: id, userName: me.name }, roomId: roomOf.get(id), offer: data.offer,
    }, ack);
  });
  socket.on("negotiation-call-answer", (data, ack) => {
    if (!data || typeof data.ans !== "object") return ack?.(refuse(socket, "negotiation-call-answer", "invalid-payload", "ans"));
    const me = profile.get(id) ?? { name: "" };
    relay("negotiation-call-answer", "negotiation-call-answer", {
      ans: data.ans, roomId: roomOf.get(id), name: me.name, remoteSocketId: id,
    }, ack);
  });
  socket.on("send-new-ice-candidates", (data, ack) => {
    if (!data || !("candidate" in data)) return ack?.(refuse(socket, "send-new-ice-candidates", "invalid-payload", "candidate"));
    relay("send-new-ice-candidates", "new-ice-candidates", { candidate: data.candidate }, ack);
  });
  socket.on("newMessage", (data, ack) => {
    if (!data || typeof data.message !== "string") return ack?.(refuse(socket, "newMessage", "invalid-payload", "message"));
    const partner = partnerOf.get(id);
    if (partner === undefined) return ack?.(refuse(socket, "newMessage", "not-in-room", "you are not in a call"));
    const payload = { from: id, message: data.message };
    send(partner, "Message:recived", payload);
    send(id, "Message:recived", payload);
    ack?.({ ok: true });
  });
  socket.on("stop-call", (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    waiting.delete(id);
    endCall(id);
    ack?.({ ok: true });
  });
  socket.on("disconnect", (reason) => {
    if (RECOVERY && RECOVERABLE.has(reason)) {
      sockets.delete(id);
      away.set(id, setTimeout(() => { away.delete(id); gone(id); }, WINDOW));
    } else {
      gone(id);
    }
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  process.stderr.write(`node socket.io baseline on http://127.0.0.1:${port}${RECOVERY ? " (recovery on)" : ""}\n`);
});
