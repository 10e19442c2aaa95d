// The Live Loop page: the controls, the socket, and one Call at a time.
import { io } from "./vendor/socket.io-client/socket.io.esm.min.js";
import { Call, eventId } from "./call.js";
import { openMedia, thumbnail } from "./media.js";

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"), local: $("local"), remote: $("remote"), mediaNote: $("media-note"),
  partner: $("partner"), partnerName: $("partner-name"), partnerImage: $("partner-image"),
  name: $("name"), start: $("start"), next: $("next"), stop: $("stop"), mute: $("mute"),
  camera: $("camera"), wait: $("wait"), log: $("log"), chat: $("chat"), message: $("message"),
  send: $("send"), error: $("error"),
};

// Test settings, from the query string: ?policy=relay (TURN only from the start),
// ?withhold=direct (see Call.withheld), ?ice-timeout=ms (how long an attempt may take).
const query = new URLSearchParams(location.search);
const test = {
  policy: query.get("policy") === "relay" ? "relay" : undefined,
  withholdDirect: query.get("withhold") === "direct",
  iceTimeout: Number(query.get("ice-timeout")) || 10000,
};

const NAME_KEY = "liveloop.name";
const ERROR_WORDS = {
  "invalid-payload": (e) => `The server refused that: ${e.message}.`,
  "invalid-room": () => "That call had already ended.",
  "invalid-target": () => "That message was not for your partner.",
  "not-in-room": () => "You are not in a call.",
  "rate-limited": (e) => `Too fast: you can do that again in ${Math.ceil(e.retryAfter)} seconds.`,
  "queue-full": () => "Too many people are waiting right now. Try again in a moment.",
  unavailable: () => "The server could not do that just now. It will reconnect you; then try again.",
  "unknown-event": () => "The server did not understand this page. Reload it.",
};

let phase = "offline"; // offline, idle, waiting, call
let connectedOnce = false;
let media = null; // MediaStream or null
let call = null;
let room = null; // the current room's id, from match-done until the call ends
let early = []; // signaling that arrived while the call was being set up
let partner = null; // {socket, userName, userImage}
let ice = null; // {servers, expires}
let iceRefresh = null;
const blockedUntil = { "request-room": 0, newMessage: 0 };

const socket = io({ transports: ["polling", "websocket"] });
window.liveloop = {
  socket, test, get call() { return call; }, get phase() { return phase; }, get ice() { return ice; },
};

// -- what the page shows --------------------------------------------------------------

function showState(text) {
  ui.state.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
}

function render() {
  const now = Date.now();
  const online = phase !== "offline";
  const roomBlocked = now < blockedUntil["request-room"];
  ui.start.disabled = !online || phase !== "idle" || roomBlocked;
  ui.next.disabled = !online || phase !== "call" || roomBlocked;
  ui.stop.disabled = !online || (phase !== "call" && phase !== "waiting");
  ui.send.disabled = !online || phase !== "call" || now < blockedUntil.newMessage;
  ui.partner.hidden = phase !== "call";
  const audio = media?.getAudioTracks()[0];
  const video = media?.getVideoTracks()[0];
  ui.mute.disabled = !audio;
  ui.camera.disabled = !video;
}

function setPhase(next, text) {
  phase = next;
  showState(text);
  render();
}

function addLine(who, text) {
  const item = document.createElement("li");
  const name = document.createElement("strong");
  name.textContent = `${who}: `;
  item.append(name, text);
  ui.log.append(item);
  ui.log.scrollTop = ui.log.scrollHeight;
}

// A refused action waits until the server allows it again, and says so.
function blockFor(event, seconds) {
  if (!(event in blockedUntil)) return;
  blockedUntil[event] = Date.now() + seconds * 1000;
  render();
  const tick = () => {
    const left = Math.ceil((blockedUntil[event] - Date.now()) / 1000);
    if (left > 0) {
      ui.wait.textContent = `${event === "newMessage" ? "Send" : "Start and Next"} available again in ${left} s.`;
      setTimeout(tick, Math.min(1000, blockedUntil[event] - Date.now()));
    } else {
      ui.wait.textContent = "";
      render();
    }
  };
  tick();
}

// -- media --------------------------------------------------------------------------

async function setUpMedia() {
  const { stream, problem } = await openMedia();
  media = stream;
  if (stream) ui.local.srcObject = stream;
  if (problem) {
    ui.mediaNote.textContent = problem;
    ui.mediaNote.hidden = false;
  }
  render();
}

function toggle(button, tracks) {
  const pressed = button.getAttribute("aria-pressed") !== "true";
  button.setAttribute("aria-pressed", String(pressed));
  for (const track of tracks) track.enabled = !pressed;
}

// -- ICE servers --------------------------------------------------------------------

async function iceServers() {
  if (ice && Date.now() < ice.expires) return ice.servers;
  const answer = await socket.timeout(10000).emitWithAck("get-ice-servers").catch(() => null);
  if (!answer?.ok) return ice?.servers ?? [];
  // Asked again at four fifths of the lifetime, before the credentials expire.
  ice = { servers: answer.iceServers, expires: Date.now() + answer.ttl * 800 };
  clearTimeout(iceRefresh);
  iceRefresh = setTimeout(async () => {
    ice = null;
    if (!socket.connected) return;
    const servers = await iceServers();
    call?.updateServers(servers);
  }, answer.ttl * 800);
  return ice.servers;
}

// -- calls --------------------------------------------------------------------------

function endCall() {
  call?.close();
  call = null;
  room = null;
  early = [];
  partner = null;
  ui.remote.srcObject = null;
}

async function beginCall({ roomId, remoteUserDetails, initiator }) {
  endCall();
  room = roomId;
  partner = remoteUserDetails;
  ui.partnerName.textContent = partner.userName;
  ui.partnerImage.src = partner.userImage || "";
  ui.partnerImage.hidden = !partner.userImage;
  ui.partnerImage.alt = partner.userImage ? `${partner.userName}'s picture` : "";
  setPhase("call", `In a call with ${partner.userName}.`);
  const servers = await iceServers();
  if (room !== roomId) return; // ended meanwhile
  const states = {
    connecting: `In a call with ${partner.userName}. Connecting video…`,
    connected: `In a call with ${partner.userName}.`,
    retrying: `In a call with ${partner.userName}. Connection trouble, retrying…`,
    failed: `In a call with ${partner.userName}, but video could not connect. You can still chat, or press Next.`,
  };
  call = new Call({
    socket, roomId, initiator, iceServers: servers, stream: media, test,
    onRemoteStream: (stream) => { ui.remote.srcObject = stream; },
    onState: (state) => { if (phase === "call") showState(states[state]); },
  });
  await call.start();
  for (const [kind, data] of early.splice(0)) call.handle(kind, data);
}

function signal(kind, data) {
  if (call) call.handle(kind, data);
  else if (phase === "call") early.push([kind, data]);
}

// Start (roomId null) or Next (the current room): the call ends only once the server
// has agreed, so a refused Next (rate-limited) leaves the call as it was.
function requestRoom(roomId) {
  const name = ui.name.value.trim();
  if (!name) {
    showError("Type your name first.");
    ui.name.focus();
    return;
  }
  localStorage.setItem(NAME_KEY, name);
  showError("");
  const roomBefore = room;
  socket.emit("request-room", { name, roomId, userImage: thumbnail(ui.local) }, (ack) => {
    if (!ack.ok && ack.error.code !== "invalid-room") return; // error-message says why
    if (room === roomBefore) {
      if (roomBefore !== null) endCall();
      setPhase("waiting", "Waiting for someone…");
    }
  });
}

// -- the controls -------------------------------------------------------------------

ui.name.value = localStorage.getItem(NAME_KEY) ?? "";
ui.start.addEventListener("click", () => requestRoom(null));
ui.name.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !ui.start.disabled) ui.start.click();
});
ui.next.addEventListener("click", () => requestRoom(room));
ui.stop.addEventListener("click", () => {
  socket.emit("stop-call", room ? { roomId: room } : {});
  endCall();
  setPhase("idle", "You left. Press Start to meet someone.");
});
ui.mute.addEventListener("click", () => toggle(ui.mute, media?.getAudioTracks() ?? []));
ui.camera.addEventListener("click", () => toggle(ui.camera, media?.getVideoTracks() ?? []));
ui.chat.addEventListener("submit", (event) => {
  event.preventDefault();
  const message = ui.message.value;
  if (!message.trim() || phase !== "call") return;
  socket.emit("newMessage", { message, roomId: room, id: eventId() }, (ack) => {
    if (ack.ok) ui.message.value = "";
  });
});

// -- the server ---------------------------------------------------------------------

// A lost transport may be recovered (docs/recovery.md): the server keeps the session for
// a while, and the media goes on between the browsers meanwhile. So the call ends only
// if the new connection is not the same session.
const RECOVERABLE = new Set(["transport close", "transport error", "ping timeout"]);
let resume = null; // [phase, status text] to return to if the connection recovers

socket.on("connect", () => {
  connectedOnce = true;
  showError("");
  if (socket.recovered && resume) {
    const [before, text] = resume;
    resume = null;
    setPhase(before, text);
    return;
  }
  resume = null;
  endCall();
  setPhase("idle", "Ready. Press Start to meet someone.");
  iceServers();
});
socket.on("disconnect", (reason) => {
  if (RECOVERABLE.has(reason) && phase !== "offline") {
    resume = [phase, ui.state.textContent];
  } else if (!RECOVERABLE.has(reason)) {
    endCall();
  }
  setPhase("offline", "Reconnecting…");
});
socket.on("connect_error", () => {
  setPhase("offline", connectedOnce ? "Reconnecting… (server unreachable)" : "Server unreachable. Retrying…");
});
socket.io.on("reconnect_failed", () => setPhase("offline", "Server unreachable. Reload to try again."));

socket.on("match-done", (details) => {
  beginCall(details).catch((error) => showError(`The call could not start: ${error.message}`));
});
socket.on("negotiation-call-offer", ({ offer }) => signal("offer", offer));
socket.on("negotiation-call-answer", ({ ans }) => signal("answer", ans));
socket.on("new-ice-candidates", ({ candidate }) => signal("candidate", candidate));
socket.on("stop-by-remote-user", () => {
  const name = partner?.userName ?? "Your partner";
  endCall();
  // The server puts us back in the queue.
  setPhase("waiting", `${name} left. Waiting for someone new…`);
});
const seenIds = new Set(); // the last chat ids shown: a repeat (a retry) is not shown twice
socket.on("Message:recived", ({ from, message, id }) => {
  if (id !== undefined) {
    const key = `${from} ${id}`;
    if (seenIds.has(key)) return;
    seenIds.add(key);
    if (seenIds.size > 256) seenIds.delete(seenIds.values().next().value);
  }
  addLine(from === socket.id ? "You" : partner?.userName ?? "Stranger", message);
});
socket.on("error-message", (error) => {
  const words = ERROR_WORDS[error.code]?.(error) ?? error.message;
  showError(words);
  if (error.code === "rate-limited" && error.retryAfter) blockFor(error.event, error.retryAfter);
});

render();
setUpMedia();
