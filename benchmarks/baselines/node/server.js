// Baseline: Live Loop's events on Node's socket.io server, one process, in memory.
//
// The same work as baselines/psio_server.py: first come, first served matching;
// offer, answer, ICE and chat to the partner only; stop-call and "Next" end the room,
// tell the partner and re-queue it; a disconnect does the same; acks {ok: true} or
// {ok: false, error}. No rate limits, no cooldown, light validation.
//
//   node benchmarks/baselines/node/server.js --port 8002
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";

const portIndex = process.argv.indexOf("--port");
const port = portIndex > 0 ? Number(process.argv[portIndex + 1]) : 8002;

const http = createServer();
const io = new Server(http, { cors: { origin: "*" } });

const waiting = new Map(); // socket id -> socket, in arrival order
const partnerOf = new Map();
const roomOf = new Map();
const profile = new Map();

function refuse(socket, event, code, message, ack) {
  socket.emit("error-message", { code, message, event });
  if (typeof ack === "function") ack({ ok: false, error: { code, message } });
}

function ok(ack) {
  if (typeof ack === "function") ack({ ok: true });
}

function match(first, second) {
  const room = randomUUID();
  partnerOf.set(first.id, second);
  partnerOf.set(second.id, first);
  roomOf.set(first.id, room);
  roomOf.set(second.id, room);
  for (const [me, other, initiator] of [[first, second, true], [second, first, false]]) {
    const details = profile.get(other.id) ?? { name: "", image: "" };
    me.emit("match-done", {
      roomId: room,
      remoteUserDetails: { socket: other.id, userName: details.name, userImage: details.image },
      initiator,
    });
  }
}

function enqueue(socket) {
  if (waiting.has(socket.id) || partnerOf.has(socket.id) || !profile.has(socket.id)) return;
  const first = waiting.keys().next();
  if (!first.done) {
    const other = waiting.get(first.value);
    waiting.delete(first.value);
    match(other, socket);
  } else {
    waiting.set(socket.id, socket);
  }
}

function endCall(socket) {
  const partner = partnerOf.get(socket.id);
  partnerOf.delete(socket.id);
  roomOf.delete(socket.id);
  if (partner !== undefined) {
    partnerOf.delete(partner.id);
    roomOf.delete(partner.id);
    partner.emit("stop-by-remote-user");
    enqueue(partner);
  }
}

io.on("connection", (socket) => {
  const relay = (event, outEvent, ack, payload) => {
    const partner = partnerOf.get(socket.id);
    if (partner === undefined) return refuse(socket, event, "not-in-room", "you are not in a call", ack);
    partner.emit(outEvent, payload);
    ok(ack);
  };
  socket.on("request-room", (data, ack) => {
    if (!data || typeof data.name !== "string" || !data.name.trim()) {
      return refuse(socket, "request-room", "invalid-payload", "name is required", ack);
    }
    profile.set(socket.id, { name: data.name.trim(), image: String(data.userImage ?? "") });
    if (partnerOf.has(socket.id)) endCall(socket); // "Next"
    enqueue(socket);
    ok(ack);
  });
  socket.on("negotiation-call-offer", (data, ack) => {
    if (!data || typeof data.offer !== "object") return refuse(socket, "negotiation-call-offer", "invalid-payload", "offer", ack);
    const me = profile.get(socket.id) ?? { name: "" };
    relay("negotiation-call-offer", "negotiation-call-offer", ack, {
      remoteUserDetails: { socket: socket.id, userName: me.name },
      roomId: roomOf.get(socket.id), offer: data.offer,
    });
  });
  socket.on("negotiation-call-answer", (data, ack) => {
    if (!data || typeof data.ans !== "object") return refuse(socket, "negotiation-call-answer", "invalid-payload", "ans", ack);
    const me = profile.get(socket.id) ?? { name: "" };
    relay("negotiation-call-answer", "negotiation-call-answer", ack, {
      ans: data.ans, roomId: roomOf.get(socket.id), name: me.name, remoteSocketId: socket.id,
    });
  });
  socket.on("send-new-ice-candidates", (data, ack) => {
    if (!data || !("candidate" in data)) return refuse(socket, "send-new-ice-candidates", "invalid-payload", "candidate", ack);
    relay("send-new-ice-candidates", "new-ice-candidates", ack, { candidate: data.candidate });
  });
  socket.on("newMessage", (data, ack) => {
    if (!data || typeof data.message !== "string") return refuse(socket, "newMessage", "invalid-payload", "message", ack);
    const partner = partnerOf.get(socket.id);
    if (partner === undefined) return refuse(socket, "newMessage", "not-in-room", "you are not in a call", ack);
    const payload = { from: socket.id, message: data.message };
    partner.emit("Message:recived", payload);
    socket.emit("Message:recived", payload);
    ok(ack);
  });
  socket.on("stop-call", (data, ack) => {
    waiting.delete(socket.id);
    endCall(socket);
    ok(typeof data === "function" ? data : ack);
  });
  socket.on("disconnect", () => {
    waiting.delete(socket.id);
    endCall(socket);
    profile.delete(socket.id);
  });
});

http.listen(port, "127.0.0.1", () => {
  console.log(`node socket.io baseline listening on http://127.0.0.1:${port}`);
});
