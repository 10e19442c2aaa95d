// Baseline (benchmark only): Live Loop's events on Node's socket.io 4.8 with
// connectionStateRecovery on, as a Node developer would write them. Matching is first
// come, first served; offer, answer, ICE and chat go to the partner only (io.to(id), a
// broadcast: socket.io keeps it for recovery); stop-call and "Next" end the room and
// re-queue the partner. With recovery a socket keeps its id, so the pair maps survive a
// recovered blip; a lost connection ends the call only once the recovery window has
// passed without the socket coming back (socket.io fires "disconnect" at once, so the
// app has to wait itself). No rate limits, light validation.
//
//   npm ci --prefix benchmarks/baselines/node_sio
//   node benchmarks/baselines/node_sio/server.mjs --port 8002
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[process.argv.indexOf("--port") + 1] || 8002);
const WINDOW = 20_000;
const RECOVERABLE = new Set(["transport close", "transport error", "ping timeout"]);

const httpServer = createServer();
const io = new Server(httpServer, {
  cors: { origin: "*" },
  connectionStateRecovery: { maxDisconnectionDuration: WINDOW, skipMiddlewares: true },
});

const waiting = new Map(); // id -> profile, arrival order
const partnerOf = new Map();
const roomOf = new Map();
const profile = new Map();
const away = new Map(); // id -> timer

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
    io.to(me).emit("match-done", {
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
    io.to(partner).emit("stop-by-remote-user");
    enqueue(partner);
  }
}

function gone(id) {
  waiting.delete(id);
  endCall(id);
  profile.delete(id);
}

io.on("connection", (socket) => {
  const id = socket.id;
  if (socket.recovered && away.has(id)) {
    clearTimeout(away.get(id));
    away.delete(id);
  }
  const relay = (event, outEvent, payload, ack) => {
    const partner = partnerOf.get(id);
    if (partner === undefined) return ack?.(refuse(socket, event, "not-in-room", "you are not in a call"));
    io.to(partner).emit(outEvent, payload);
    ack?.({ ok: true });
  };
  socket.on("request-room", (data, ack) => {
    if (!data || typeof data.name !== "string" || !data.name.trim()) {
      return ack?.(refuse(socket, "request-room", "invalid-payload", "name is required"));
    }
    profile.set(id, { name: data.name.trim(), image: String(data.userImage ?? "") });
    if (partnerOf.has(id)) endCall(id);
    enqueue(id);
    ack?.({ ok: true });
  });
  socket.on("negotiation-call-offer", (data, ack) => {
    const me = profile.get(id) ?? { name: "" };
    relay("negotiation-call-offer", "negotiation-call-offer", {
      remoteUserDetails: { socket: id, userName: me.name }, roomId: roomOf.get(id), offer: data?.offer,
    }, ack);
  });
  socket.on("negotiation-call-answer", (data, ack) => {
    const me = profile.get(id) ?? { name: "" };
    relay("negotiation-call-answer", "negotiation-call-answer", {
      ans: data?.ans, roomId: roomOf.get(id), name: me.name, remoteSocketId: id,
    }, ack);
  });
  socket.on("send-new-ice-candidates", (data, ack) => {
    relay("send-new-ice-candidates", "new-ice-candidates", { candidate: data?.candidate ?? null }, ack);
  });
  socket.on("newMessage", (data, ack) => {
    const partner = partnerOf.get(id);
    if (partner === undefined) return ack?.(refuse(socket, "newMessage", "not-in-room", "you are not in a call"));
    const payload = { from: id, message: String(data?.message ?? "") };
    io.to(partner).emit("Message:recived", payload);
    io.to(id).emit("Message:recived", payload);
    ack?.({ ok: true });
  });
  socket.on("stop-call", (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    waiting.delete(id);
    endCall(id);
    ack?.({ ok: true });
  });
  socket.on("disconnect", (reason) => {
    if (RECOVERABLE.has(reason)) {
      away.set(id, setTimeout(() => { away.delete(id); gone(id); }, WINDOW));
    } else {
      gone(id);
    }
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  process.stderr.write(`node socket.io baseline on http://127.0.0.1:${port}\n`);
});
