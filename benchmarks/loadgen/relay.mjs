// Relay load at saturation, on the official socket.io-client (benchmark only).
//
// Any server speaking Live Loop's events: request-room, match-done,
// send-new-ice-candidates -> new-ice-candidates. Clients connect over WebSocket only
// (URLs taken in turn), request a room and get paired by the server. Every pair must
// have both people in this process: the window below needs to know what the partner
// received, so run one generator process (its CPU is reported; if it nears 100% it was
// the limit, and the report says so).
//
// Closed loop: each client keeps at most --window ICE candidates sent and not yet
// received by its partner, and sends again as each arrives; so the offered load follows
// what the server delivers, queues stay bounded, and the delivered rate is the server's
// throughput at saturation. After --warmup seconds it samples, for --duration seconds,
// the candidates delivered, the CPU seconds of every --pid (from /proc) and its own.
// Then it stops sending and waits (--grace at most) for what is in flight: lost = sent
// minus received.
//
//   npm ci --prefix benchmarks/loadgen
//   node benchmarks/loadgen/relay.mjs --url http://127.0.0.1:8000 --clients 100 \
//       --window 16 --warmup 2 --duration 10 --pid SERVER_PID [--pid ...]
//
// Prints one JSON report on stdout (the shape of `liveloop bench --json`'s relay
// report, plus per-process CPU seconds).
import { readdirSync, readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { io } from "socket.io-client";

function options(argv) {
  const opts = { url: "", clients: 100, window: 16, warmup: 2, duration: 10, grace: 5,
    pids: [], concurrency: 50, sequential: 0 };
  for (let i = 2; i < argv.length; i += 2) {
    const [key, value] = [argv[i].replace(/^--/, ""), argv[i + 1]];
    if (key === "pid") opts.pids.push(Number(value));
    else if (key === "url") opts.url = value;
    else if (key in opts) opts[key] = Number(value);
    else throw new Error(`unknown option --${key}`);
  }
  if (!opts.url || opts.clients % 2) throw new Error("--url needed, --clients even");
  return opts;
}

const TICKS = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());

function cpuOf(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(")").pop().trim().split(/\s+/);
  return (Number(fields[11]) + Number(fields[12])) / TICKS; // utime + stime
}

// Seconds every thread of `pid` spent running and runnable but waiting for a CPU (the
// kernel's /proc/PID/task/TID/schedstat; null where the kernel keeps none). A process
// that is always running or waiting (run + wait near the window's length) was bounded by
// the CPU it was given, however little it used: the machine's other load, or the
// benchmark's own processes, outnumbered the cores.
function schedOf(pid) {
  let run = 0;
  let wait = 0;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const [ran, waited] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ");
      run += Number(ran) / 1e9;
      wait += Number(waited) / 1e9;
    }
  } catch {
    return null; // no schedstat, or a thread gone meanwhile
  }
  return { run, wait };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const ownCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

function percentile(sorted, fraction) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))];
}

async function main() {
  const opts = options(process.argv);
  const urls = opts.url.split(",");
  const clients = [];
  const bySid = new Map();
  let running = false;
  let errors = 0;
  let sampling = false;
  const latencies = [];

  function pump(client) {
    const partner = client.partner;
    while (running && client.sent - partner.received < opts.window) {
      client.sent += 1;
      client.candidate.usernameFragment = String(performance.now());
      client.socket.emit("send-new-ice-candidates", { candidate: client.candidate });
    }
  }

  function open(index) {
    return new Promise((resolve, reject) => {
      const socket = io(urls[index % urls.length], {
        transports: ["websocket"], forceNew: true, reconnection: false, timeout: 60000,
      });
      const client = { index, socket, partner: null, partnerSid: null, sent: 0, received: 0,
        candidate: { candidate: `candidate:${index} 1 udp 2122260223 192.0.2.${index % 250 + 1} ` +
          `${40000 + index} typ host generation 0`, sdpMid: "0", sdpMLineIndex: 0,
        usernameFragment: "" } };
      clients.push(client);
      client.matched = new Promise((matched) => { client.onMatch = matched; });
      socket.on("connect_error", (err) => reject(new Error(`connect: ${err.message}`)));
      socket.on("error-message", () => { errors += 1; });
      socket.on("new-ice-candidates", (data) => {
        client.received += 1;
        if (sampling && (client.received & 15) === 0) {
          latencies.push(performance.now() - Number(data.candidate.usernameFragment));
        }
        pump(client.partner);
      });
      socket.on("match-done", (data) => {
        client.partnerSid = data.remoteUserDetails.socket;
        client.onMatch();
        resolve(client);
      });
      socket.on("connect", () => {
        bySid.set(socket.id, client);
        client.engineSid = socket.io.engine.id;
        socket.emit("request-room", { name: `load-${index}`, userImage: "" }, (ack) => {
          if (!ack || ack.ok === false) reject(new Error(`request-room: ${JSON.stringify(ack)}`));
          else if (opts.sequential) resolve(client); // the next one may come
        });
      });
    });
  }

  // Connect (at most --concurrency handshakes at a time) and wait for every match.
  // --sequential 1: one client at a time, each requesting its room once the previous
  // one's request was acked, so the server pairs consecutive arrivals (with Live Loop's
  // workers, whose handshakes take turns, nearly every pair then spans two workers).
  const pending = [];
  const step = opts.sequential ? 1 : opts.concurrency;
  for (let i = 0; i < opts.clients; i += step) {
    const batch = [];
    for (let j = i; j < Math.min(opts.clients, i + step); j++) batch.push(open(j));
    pending.push(...batch);
    await Promise.all(batch.map((p) => p.catch(() => {})));
  }
  await Promise.all(pending);
  await Promise.all(clients.map((c) => c.matched));
  for (const client of clients) {
    client.partner = bySid.get(client.partnerSid);
    if (!client.partner) throw new Error("a partner is not in this generator process");
  }

  // A sid's first character names the Live Loop worker that owns it: pairs whose two
  // sids differ there span two workers (with one process, or Node, none do).
  const across = clients.filter((c) => c.engineSid[0] !== c.partner.engineSid[0]);
  const within = clients.filter((c) => c.engineSid[0] === c.partner.engineSid[0]);

  running = true;
  for (const client of clients) pump(client);
  await sleep(opts.warmup * 1000);

  const total = () => clients.reduce((sum, c) => sum + c.received, 0);
  const sum = (some) => some.reduce((s, c) => s + c.received, 0);
  const sample = () => ({ t: performance.now(), received: total(), own: ownCpu(),
    cpu: opts.pids.map(cpuOf), sched: [...opts.pids, process.pid].map(schedOf),
    across: sum(across), within: sum(within) });
  sampling = true;
  const first = sample();
  await sleep(opts.duration * 1000);
  const last = sample();
  sampling = false;

  running = false;
  const deadline = performance.now() + opts.grace * 1000;
  const sent = () => clients.reduce((sum, c) => sum + c.sent, 0);
  while (total() < sent() && performance.now() < deadline) await sleep(20);

  const seconds = (last.t - first.t) / 1000;
  const delivered = last.received - first.received;
  const waited = (i) => (first.sched[i] && last.sched[i]
    ? +(last.sched[i].wait - first.sched[i].wait).toFixed(3) : null);
  const perPid = opts.pids.map((pid, i) => ({ pid, cpu_s: +(last.cpu[i] - first.cpu[i]).toFixed(3),
    cpu_wait_s: waited(i) }));
  const serverCpu = perPid.reduce((sum, p) => sum + p.cpu_s, 0);
  const generatorCpu = last.own - first.own;
  latencies.sort((a, b) => a - b);
  const warnings = [];
  if (generatorCpu / seconds > 0.9) {
    warnings.push(`the generator was busy ${Math.round(100 * generatorCpu / seconds)}% of a core: it may have been the limit`);
  }
  // Runnable but not running for a fifth of the window or more: the cores were
  // oversubscribed (the machine's other load, or more busy processes than cores, as two
  // workers plus this generator on two cores), so msg/s measures a share of the machine.
  const starved = perPid.filter((p) => p.cpu_wait_s > 0.2 * seconds).map((p) => p.pid);
  if (waited(opts.pids.length) > 0.2 * seconds) starved.push("the generator");
  if (starved.length) {
    warnings.push(`waited for a CPU over 20% of the time: ${starved.join(", ")}; ` +
      "the delivered rate is bounded by the CPU share each got, not by the server alone");
  }
  if (errors) warnings.push(`the server answered ${errors} errors`);
  const report = {
    scenario: "relay", url: opts.url, clients: opts.clients, duration_s: seconds,
    relay: {
      window: opts.window, sent: sent(), received: total(), lost: sent() - total(),
      relayed_per_s: +(delivered / seconds).toFixed(1),
      latency_ms: { p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99),
        samples: latencies.length },
    },
    server: { cpu_s: +serverCpu.toFixed(3), cpu_pct: +(100 * serverCpu / seconds).toFixed(1),
      cpu_us_per_msg: delivered ? +(1e6 * serverCpu / delivered).toFixed(2) : null,
      processes: perPid },
    generator: { workers: 1, cpu_s: +generatorCpu.toFixed(3), cpu_wait_s: waited(opts.pids.length),
      busiest: +(generatorCpu / seconds).toFixed(3),
      cpu_us_per_msg: delivered ? +(1e6 * generatorCpu / delivered).toFixed(2) : null },
    warnings,
  };
  report.relay.clients_paired_across = across.length;
  report.relay.received_by_clients_paired_across = sum(across);
  // Messages per second each client received in the measured window, by whether its
  // partner is on the same worker: a lower figure across says the cross-worker round
  // trip (through Redis) bounds those pairs' windows.
  const perClient = (count, key) => (count ? +((last[key] - first[key]) / seconds / count).toFixed(1) : null);
  report.relay.per_client_msg_s_within = perClient(within.length, "within");
  report.relay.per_client_msg_s_across = perClient(across.length, "across");
  for (const client of clients) client.socket.disconnect();
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`relay.mjs: ${err.stack || err}\n`);
  process.exit(1);
});
