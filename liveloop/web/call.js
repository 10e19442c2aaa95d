// One WebRTC call with one partner: the offer/answer exchange, trickled ICE candidates,
// and the recovery when the connection fails.
//
// Who does what: the side the server marked `initiator` sends the first offer, and it alone
// drives recovery (so the two sides never offer at once). When the connection fails
// (iceConnectionState or connectionState "failed", or not connected within `iceTimeout`
// ms of an attempt's answer: a connection with no working pair can stay in "checking"
// for a long time), the initiator restarts ICE once; if that fails too, it switches to
// iceTransportPolicy "relay" (TURN only) and restarts again. The other side answers
// every offer it gets, the restarts included.

const DIRECT = new Set(["host", "srflx", "prflx"]);

function candidateType(candidate) {
  const match = / typ (\w+)/.exec(candidate?.candidate ?? "");
  return match ? match[1] : null;
}

// Event ids (docs/events.md, "Retried events"): unique per page, so that the server, and
// the partner, drop a repeat of an offer, answer or chat line that was sent again.
const ID_PREFIX = Math.random().toString(36).slice(2, 10);
let lastId = 0;

export function eventId() {
  lastId += 1;
  return `${ID_PREFIX}-${lastId}`;
}

export class Call {
  /**
   * @param {object} o
   * @param {object} o.socket       the connected socket.io socket
   * @param {string} o.roomId
   * @param {boolean} o.initiator
   * @param {RTCIceServer[]} o.iceServers
   * @param {MediaStream|null} o.stream   local media, or null (then receive only)
   * @param {(stream: MediaStream) => void} o.onRemoteStream
   * @param {(state: string) => void} o.onState  "connecting", "connected", "retrying", "failed"
   * @param {object} o.test  test settings: {policy, withholdDirect, iceTimeout}
   */
  constructor({ socket, roomId, initiator, iceServers, stream, onRemoteStream, onState, test }) {
    this.socket = socket;
    this.roomId = roomId;
    this.initiator = initiator;
    this.onState = onState;
    this.test = test;
    this.attempt = 0; // 0: first try, 1: after the ICE restart, 2: relay only
    this.closed = false;
    this.pendingCandidates = [];
    this.timer = null;
    this.queue = Promise.resolve(); // signaling messages, handled one after another
    this.config = { iceServers, iceTransportPolicy: test.policy ?? "all" };
    this.pc = new RTCPeerConnection(this.config);
    if (stream) {
      for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
    } else {
      this.pc.addTransceiver("audio", { direction: "recvonly" });
      this.pc.addTransceiver("video", { direction: "recvonly" });
    }
    this.pc.ontrack = (event) => onRemoteStream(event.streams[0] ?? new MediaStream([event.track]));
    this.pc.onicecandidate = (event) => this.sendCandidate(event.candidate);
    const watch = () => this.watch();
    this.pc.oniceconnectionstatechange = watch;
    this.pc.onconnectionstatechange = watch;
    onState("connecting");
  }

  /** The initiator's first offer. */
  async start() {
    if (this.initiator) await this.offer(false);
  }

  /** ICE servers with fresh credentials: used by every later restart. */
  updateServers(iceServers) {
    if (this.closed) return;
    this.config = { ...this.config, iceServers };
    this.pc.setConfiguration(this.config);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.pc.close();
  }

  // -- signaling --------------------------------------------------------------------

  /** Handle a relayed "offer", "answer" or "candidate", after those before it. */
  handle(kind, data) {
    const handler = { offer: this.onOffer, answer: this.onAnswer, candidate: this.onCandidate }[kind];
    this.queue = this.queue
      .then(() => handler.call(this, data))
      .catch((error) => console.warn(`signaling (${kind}) failed`, error));
  }

  async offer(iceRestart) {
    const offer = await this.pc.createOffer({ iceRestart });
    if (this.closed) return;
    await this.pc.setLocalDescription(offer);
    // The offer as created: it holds no candidates, which all go by trickle (so that a
    // test's withheld candidates are really withheld).
    this.socket.emit("negotiation-call-offer", {
      offer: { type: offer.type, sdp: offer.sdp }, roomId: this.roomId, id: eventId(),
    });
  }

  async onOffer(offer) {
    if (this.closed) return;
    await this.pc.setRemoteDescription(offer);
    await this.flushCandidates();
    const answer = await this.pc.createAnswer();
    if (this.closed) return;
    await this.pc.setLocalDescription(answer);
    this.socket.emit("negotiation-call-answer", {
      ans: { type: answer.type, sdp: answer.sdp }, roomId: this.roomId, id: eventId(),
    });
  }

  async onAnswer(answer) {
    if (this.closed || this.pc.signalingState !== "have-local-offer") return;
    await this.pc.setRemoteDescription(answer);
    await this.flushCandidates();
    this.armTimer();
  }

  sendCandidate(candidate) {
    if (this.closed) return;
    if (candidate && this.withheld(candidate)) return;
    this.socket.emit("send-new-ice-candidates", { candidate: candidate ? candidate.toJSON() : null });
  }

  async onCandidate(candidate) {
    if (this.closed) return;
    if (candidate && this.withheld(candidate)) return;
    if (!this.pc.remoteDescription) {
      this.pendingCandidates.push(candidate);
      return;
    }
    await this.addCandidate(candidate);
  }

  async flushCandidates() {
    const pending = this.pendingCandidates.splice(0);
    for (const candidate of pending) await this.addCandidate(candidate);
  }

  async addCandidate(candidate) {
    try {
      // null: end of candidates.
      await this.pc.addIceCandidate(candidate ?? undefined);
    } catch (error) {
      console.warn("ignored an ICE candidate", error);
    }
  }

  /** The test setting `withhold=direct`: while not relay-only, no candidate goes either
   * way, as on a network where only the relay gets through. */
  withheld(candidate) {
    if (!this.test.withholdDirect) return false;
    if (this.config.iceTransportPolicy === "relay") return DIRECT.has(candidateType(candidate));
    return true;
  }

  // -- recovery ---------------------------------------------------------------------

  watch() {
    if (this.closed) return;
    const ice = this.pc.iceConnectionState;
    const conn = this.pc.connectionState;
    if (conn === "connected" || ice === "connected" || ice === "completed") {
      clearTimeout(this.timer);
      this.onState("connected");
    } else if (ice === "failed" || conn === "failed") {
      this.recover();
    }
  }

  armTimer() {
    clearTimeout(this.timer);
    if (!this.initiator) return;
    this.timer = setTimeout(() => {
      const ice = this.pc.iceConnectionState;
      if (ice !== "connected" && ice !== "completed") this.recover();
    }, this.test.iceTimeout);
  }

  recover() {
    if (this.closed) return;
    clearTimeout(this.timer);
    if (!this.initiator) {
      this.onState("retrying"); // the initiator restarts; we answer its offer
      return;
    }
    if (this.attempt >= 2) {
      this.onState("failed");
      return;
    }
    this.attempt += 1;
    if (this.attempt === 2) {
      this.config = { ...this.config, iceTransportPolicy: "relay" };
      this.pc.setConfiguration(this.config);
    }
    this.onState("retrying");
    this.pc.restartIce();
    this.offer(true).catch((error) => console.warn("ICE restart failed", error));
  }
}
