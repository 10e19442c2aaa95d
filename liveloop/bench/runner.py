"""Running a bench: workers (inline, or one process each), phases, server sampling, report.

The coordinator samples the server (``/proc/PID``: CPU time and RSS) when every worker
has reached a phase, then releases them all together, so the server's figures cover
exactly the measured window. Workers return their measurements as JSON-able dicts; the
report merges them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event as EventType
from typing import Any

import trio

from .scenarios import COUNTERS, PHASES, BenchConfig, RateLimited, Worker

BUSY = 0.90
"""A worker busier than this fraction of its wall time may have limited the results."""


class BenchError(Exception):
    """The bench could not run to the end; the message says why."""


# -- the server's figures ---------------------------------------------------------------


def server_sample(pid: int | None, others: Sequence[int] = ()) -> dict[str, float] | None:
    """CPU seconds (user + system) and RSS bytes of process ``pid`` (plus ``others``,
    summed: several nodes and their Redis), from ``/proc``."""
    if pid is None:
        return None
    if others:
        samples = [server_sample(each) for each in (pid, *others)]
        return {"cpu_s": sum(s["cpu_s"] for s in samples if s),
                "rss_bytes": sum(s["rss_bytes"] for s in samples if s),
                "time": time.monotonic()}
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as status:
            rss_kib = next(int(line.split()[1]) for line in status
                           if line.startswith("VmRSS:"))
    except (OSError, StopIteration, IndexError) as exc:
        raise BenchError(f"cannot read /proc/{pid}: is the server running?") from exc
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15
    return {"cpu_s": (int(fields[11]) + int(fields[12])) / ticks, "rss_bytes": rss_kib * 1024,
            "time": time.monotonic()}


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of already sorted values (``None`` if there are none)."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, int(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def _distribution_ms(values_us: list[int]) -> dict[str, float | None]:
    values = sorted(values_us)
    return {
        "p50": _ms(percentile(values, 0.50)), "p95": _ms(percentile(values, 0.95)),
        "p99": _ms(percentile(values, 0.99)), "max": _ms(values[-1] if values else None),
        "samples": len(values),
    }


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


# -- inline (workers=0) -------------------------------------------------------------------


class _InlineSync:
    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.samples: dict[str, dict[str, float] | None] = {}
        self.counters: list[float] = [0.0] * len(COUNTERS)

    async def arrive(self, phase: str) -> None:
        self.samples[phase] = server_sample(self.config.server_pid, self.config.other_pids)

    def publish(self, counters: list[float]) -> None:
        self.counters = list(counters)


async def run_inline(config: BenchConfig) -> dict[str, Any]:
    """Run the bench in the current Trio run, one worker with every client (for tests
    and small runs). Returns the report (see :func:`build_report`)."""
    sync = _InlineSync(config)
    worker = Worker(config, 0, config.clients, sync)
    started = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            if config.progress:
                nursery.start_soon(_inline_progress, config, sync, started)
            result = await worker.run()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        limited = _find(group, RateLimited)
        if limited is not None:
            raise BenchError(str(limited)) from None
        raise
    _clear_progress(config)
    return build_report(config, [result], sync.samples)


async def _inline_progress(config: BenchConfig, sync: _InlineSync, started: float) -> None:
    while True:
        _show_progress(config, sync.counters, time.monotonic() - started)
        await trio.sleep(0.5)


# -- worker processes ---------------------------------------------------------------------


class _ProcessSync:
    def __init__(self, index: int, phases: tuple[str, ...], arrived: SynchronizedArray[Any],
                 released: list[EventType], progress: SynchronizedArray[Any]) -> None:
        self.index = index
        self.phases = phases
        self.arrived = arrived
        self.released = released
        self.progress = progress

    async def arrive(self, phase: str) -> None:
        slot = self.phases.index(phase)
        with self.arrived.get_lock():
            self.arrived[slot] += 1
        await trio.to_thread.run_sync(self.released[slot].wait, abandon_on_cancel=True)

    def publish(self, counters: list[float]) -> None:
        base = self.index * len(COUNTERS)
        self.progress[base:base + len(COUNTERS)] = counters


def _worker_main(config: BenchConfig, index: int, clients: int,
                 arrived: SynchronizedArray[Any], released: list[EventType],
                 progress: SynchronizedArray[Any], results: multiprocessing.Queue[str]) -> None:
    """A worker process: its own ``trio.run``; puts its result (or error) as JSON."""
    sync = _ProcessSync(index, PHASES[config.scenario], arrived, released, progress)
    try:
        result = trio.run(Worker(config, index, clients, sync).run)
        results.put(json.dumps({"ok": result}))
    except BaseException as exc:  # reported to the coordinator, which stops everyone
        rate_limited = _find(exc, RateLimited)
        message = str(rate_limited) if rate_limited else "".join(
            traceback.format_exception(exc))
        results.put(json.dumps({"error": message, "worker": index}))


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def run_processes(config: BenchConfig) -> dict[str, Any]:
    """Run the bench over ``config.workers`` processes; returns the report."""
    workers = config.workers
    phases = PHASES[config.scenario]
    context = multiprocessing.get_context("spawn")
    arrived = context.Array("i", len(phases))
    released = [context.Event() for _ in phases]
    progress = context.Array("d", workers * len(COUNTERS), lock=False)
    results: multiprocessing.Queue[str] = context.Queue()
    shares = [config.clients // workers + (1 if i < config.clients % workers else 0)
              for i in range(workers)]
    processes = [
        context.Process(target=_worker_main, name=f"liveloop-bench-{i}", daemon=True,
                        args=(config, i, shares[i], arrived, released, progress, results))
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    samples: dict[str, dict[str, float] | None] = {}
    outcomes: list[dict[str, Any]] = []
    next_phase = 0
    started = last_shown = time.monotonic()
    try:
        while len(outcomes) < workers:
            if next_phase < len(phases) and arrived[next_phase] == workers:
                samples[phases[next_phase]] = server_sample(config.server_pid, config.other_pids)
                released[next_phase].set()
                next_phase += 1
            try:
                message = json.loads(results.get(timeout=0.02))
            except queue.Empty:
                pass
            else:
                if "error" in message:
                    raise BenchError(f"worker {message['worker']} failed: {message['error']}")
                outcomes.append(message["ok"])
            for process in processes:
                if process.exitcode not in (None, 0):
                    raise BenchError(f"{process.name} exited with {process.exitcode}")
            now = time.monotonic()
            if now - last_shown >= 0.5:
                last_shown = now
                totals = [sum(progress[w * len(COUNTERS) + c] for w in range(workers))
                          for c in range(len(COUNTERS))]
                _show_progress(config, totals, now - started)
    finally:
        _clear_progress(config)
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    return build_report(config, outcomes, samples)


def run(config: BenchConfig) -> dict[str, Any]:
    """Run the bench as configured (``workers == 0``: inline); returns the report."""
    if config.clients < 1:
        raise BenchError("--clients must be at least 1")
    if config.scenario in ("relay", "churn") and config.clients % 2:
        raise BenchError(f"{config.scenario} pairs clients: --clients must be even")
    if config.workers == 0:
        return trio.run(run_inline, config)
    return run_processes(config)


# -- progress -------------------------------------------------------------------------------


def _show_progress(config: BenchConfig, totals: Sequence[float], elapsed: float) -> None:
    if not config.progress:
        return
    values = dict(zip(COUNTERS, totals, strict=True))
    line = (f"\r{config.scenario} {elapsed:6.1f}s  connected {values['connected']:.0f}"
            f"/{config.clients}")
    if config.scenario == "relay":
        line += (f"  matched {values['matched']:.0f}  sent {values['sent']:.0f}"
                 f"  received {values['received']:.0f}")
    elif config.scenario == "churn":
        line += f"  matches {values['matches'] / 2:.0f}"
    if values["errors"]:
        line += f"  errors {values['errors']:.0f}"
    sys.stderr.write(line + "   ")
    sys.stderr.flush()


def _clear_progress(config: BenchConfig) -> None:
    if config.progress:
        sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.flush()


# -- the report -----------------------------------------------------------------------------


def build_report(config: BenchConfig, outcomes: list[dict[str, Any]],
                 samples: dict[str, dict[str, float] | None]) -> dict[str, Any]:
    """Merge the workers' measurements and the server samples into one report."""
    totals = {name: sum(o["counters"][name] for o in outcomes) for name in COUNTERS}
    generator = {
        "workers": len(outcomes),
        "cpu_s": round(sum(o["cpu_s"] for o in outcomes), 3),
        "busiest": round(max((o["cpu_s"] / o["wall_s"] if o["wall_s"] else 0.0)
                             for o in outcomes), 3) if outcomes else 0.0,
    }
    report: dict[str, Any] = {
        "scenario": config.scenario, "url": config.url, "clients": config.clients,
        "duration_s": config.duration, "generator": generator, "warnings": [],
    }
    phases = PHASES[config.scenario]
    first, last = phases[0], phases[-1]
    window = _server_window(samples.get(first), samples.get(last))
    warnings: list[str] = report["warnings"]
    if config.scenario == "relay":
        latencies = [v for o in outcomes for v in o["latency_us"]]
        lateness = sorted(v for o in outcomes for v in o["lateness_us"])
        sent, received = totals["sent"], totals["received"]
        report["relay"] = {
            "rate_per_client": config.rate,
            "offered_per_s": config.clients * config.rate,
            "sent": int(sent), "received": int(received), "lost": int(sent - received),
            "loss_pct": round(100 * (sent - received) / sent, 4) if sent else 0.0,
            "relayed_per_s": round(received / config.duration, 1),
            "latency_ms": _distribution_ms(latencies),
            "late_sends": len(lateness),
            "incomplete_clients": sum(o["incomplete"] for o in outcomes),
        }
        if window:
            window["cpu_us_per_msg"] = round(1e6 * window["cpu_s"] / received, 2) \
                if received else None
        late99 = percentile(lateness, 0.99) if len(lateness) > 0.01 * max(sent, 1) else None
        if late99 is not None and late99 > 50_000:
            warnings.append(f"senders fell behind schedule (p99 {late99 / 1000:.0f} ms late):"
                            " the offered load was not fully generated")
    elif config.scenario == "churn":
        ttm = [v for o in outcomes for v in o["ttm_us"]]
        matches = totals["matches"] / 2
        wall = max((o["wall_s"] for o in outcomes), default=0.0)
        report["churn"] = {
            "matches": int(matches),
            "matches_per_s": round(matches / config.duration, 1),
            "time_to_match_ms": _distribution_ms(ttm),
            "window_s": round(wall, 3),
        }
        if window:
            window["cpu_us_per_match"] = round(1e6 * window["cpu_s"] / matches, 1) \
                if matches else None
    else:
        idle: dict[str, Any] = {"connections": int(totals["connected"])}
        start, connected, held = (samples.get(p) for p in phases)
        if start and connected and held:
            n = max(1, config.clients)
            idle["rss_per_connection_kib"] = round(
                (connected["rss_bytes"] - start["rss_bytes"]) / n / 1024, 2)
            idle["cpu_us_per_connect"] = round(
                1e6 * (connected["cpu_s"] - start["cpu_s"]) / n, 1)
            idle["idle_cpu_pct"] = round(100 * (held["cpu_s"] - connected["cpu_s"])
                                         / max(1e-9, held["time"] - connected["time"]), 2)
            idle["connect_s"] = round(connected["time"] - start["time"], 3)
        report[config.scenario] = idle
    if window:
        report["server"] = window
    if generator["busiest"] > BUSY:
        warnings.append(
            f"a generator worker was busy {100 * generator['busiest']:.0f}% of the time: "
            "the generator may have been the bottleneck (add cores or --workers)")
    if totals["errors"]:
        warnings.append(f"the server answered {totals['errors']:.0f} errors")
    return report


def _server_window(first: dict[str, float] | None, last: dict[str, float] | None
                   ) -> dict[str, Any] | None:
    if not first or not last:
        return None
    wall = last["time"] - first["time"]
    cpu = last["cpu_s"] - first["cpu_s"]
    return {"cpu_s": round(cpu, 3), "cpu_pct": round(100 * cpu / wall, 1) if wall else None,
            "rss_mib": round(last["rss_bytes"] / 2**20, 1), "window_s": round(wall, 3)}


def format_table(report: dict[str, Any]) -> str:
    """The report as a two-column text table."""
    rows: list[tuple[str, str]] = [("scenario", report["scenario"]),
                                   ("clients", str(report["clients"])),
                                   ("duration", f"{report['duration_s']} s")]
    body = report.get(report["scenario"], {})
    for key, value in body.items():
        if isinstance(value, dict):
            parts = ", ".join(f"{k} {v}" for k, v in value.items() if k != "samples")
            rows.append((key, parts))
        else:
            rows.append((key, str(value)))
    server = report.get("server")
    if server:
        for key, value in server.items():
            rows.append((f"server {key}", str(value)))
    generator = report["generator"]
    rows.append(("generator cpu_s", f"{generator['cpu_s']} over {generator['workers']} "
                                    f"worker(s), busiest {100 * generator['busiest']:.0f}%"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    lines += [f"WARNING: {warning}" for warning in report["warnings"]]
    return "\n".join(lines)
