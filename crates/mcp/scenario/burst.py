#!/usr/bin/env python3
"""A burst of MCP tool calls from the official Python SDK against crates/mcp/examples/mcp_server.rs.

Opens S streamable-HTTP sessions (each `initialize`, then `list_tools`, which must list
fast/slow/heavy), fires N concurrent `tools/call` across them (mostly `slow` with
ms 100-300, some `fast`, a few `heavy`), cancels a fraction of the slow ones mid-flight,
and classifies each call:

- ok: a result that is not a tool error
- tool_error: a result with isError (the server's flaky dependency failing, say)
- busy: a JSON-RPC error refusing the call: heijunka-mcp's code -32010, with data.reason
- other_error: any other JSON-RPC error or exception
- cancelled_by_us: we cancelled the caller's task before an answer came
- hang: no answer within --hang-bound seconds (10)
- lost: the call ended without an answer we did not cancel (the connection closed under it)

How a cancel reaches the server: the SDK (mcp 2.x, mcp/shared/jsonrpc_dispatcher.py,
`send_raw_request`) catches the caller's cancellation and, once the request was written,
sends `notifications/cancelled` {requestId, reason: "caller cancelled"} under a shield
before re-raising. So cancelling the asyncio task that awaits `call_tool` is the real
client path; the server's /stats (cancelled, observed inside the tools) shows it arrived.

Prints a table and a last line `RESULT {json}`. Exits 1 on a hang, a lost call, or a
slot leak (a tool still `running` in /stats 2 s after the burst), 2 on a setup failure.

    python burst.py --url http://127.0.0.1:PORT/mcp [--calls 200] [--sessions 4]
                    [--cancel-fraction 0.1] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

BUSY_CODE = -32010
CONNECTION_CLOSED = -32000
OUTCOMES = ("ok", "tool_error", "busy", "other_error", "cancelled_by_us", "hang", "lost")


@dataclass
class Call:
    idx: int
    session: int
    tool: str
    args: dict[str, Any]
    cancel_after: float | None  # seconds after sending, or None
    outcome: str = ""
    detail: str = ""
    latency: float = 0.0
    cancel_sent: bool = False


def make_plan(n: int, sessions: int, cancel_fraction: float, seed: int) -> list[Call]:
    rng = random.Random(seed)
    calls = []
    for i in range(n):
        r = rng.random()
        if r < 0.75:
            tool, args = "slow", {"ms": rng.randint(100, 300)}
        elif r < 0.93:
            tool, args = "fast", {"n": rng.randint(0, 1000)}
        else:
            tool, args = "heavy", {"mb": rng.choice([8, 16, 32])}
        calls.append(Call(i, i % sessions, tool, args, None))
    # The cancelled calls are slow ones made long (1.5 s) and cancelled after
    # 0.4-0.8 s: late enough that the request was written (the SDK sends no
    # cancel for a request it never wrote, and under a burst its writes queue
    # for a few hundred ms), early enough that the tool is still working.
    slow = [c for c in calls if c.tool == "slow"]
    for c in rng.sample(slow, min(len(slow), round(cancel_fraction * n))):
        c.args["ms"] = 1500
        c.cancel_after = rng.uniform(0.4, 0.8)
    return calls


def classify_error(e: BaseException) -> tuple[str, str]:
    if isinstance(e, MCPError):
        data = e.error.data
        if e.code == BUSY_CODE:
            reason = data.get("reason") if isinstance(data, dict) else None
            return "busy", str(reason or f"code {e.code}")
        if e.code == CONNECTION_CLOSED:
            return "lost", f"{e.code}: {e.message}"
        return "other_error", f"{e.code}: {e.message}"
    return "other_error", f"{type(e).__name__}: {e}"


async def run_call(session: ClientSession, call: Call, hang_bound: float) -> None:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    task = asyncio.create_task(session.call_tool(call.tool, call.args))
    # Retrieve the outcome even if this coroutine is cancelled first (no
    # "exception never retrieved" noise when a session fails under the burst).
    task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def cancel() -> None:
        if not task.done():
            call.cancel_sent = True
            task.cancel()

    timer = loop.call_later(call.cancel_after, cancel) if call.cancel_after is not None else None
    done, _ = await asyncio.wait({task}, timeout=hang_bound)
    call.latency = time.perf_counter() - t0
    if timer is not None:
        timer.cancel()
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        call.outcome, call.detail = "hang", f"no answer in {hang_bound:.0f} s"
    elif task.cancelled():
        call.outcome = "cancelled_by_us" if call.cancel_sent else "lost"
    elif (e := task.exception()) is not None:
        call.outcome, call.detail = classify_error(e)
    else:
        result = task.result()
        call.outcome = "tool_error" if getattr(result, "is_error", False) else "ok"
        if call.outcome == "tool_error":
            call.detail = " ".join(getattr(c, "text", "") for c in result.content)[:80]


def http_get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


async def stats(url: str) -> Any:
    return await asyncio.to_thread(http_get_json, url)


async def poll_stats(url: str, within: float) -> Any:
    """/stats once no tool is running, or as it is after `within` s; None if unreachable."""
    deadline = time.monotonic() + within
    while True:
        try:
            s = await stats(url)
        except Exception:  # noqa: BLE001 - reported as a failure by the caller
            return None
        if running(s) == 0 or time.monotonic() >= deadline:
            return s
        await asyncio.sleep(0.1)


def running(s: Any) -> int:
    return sum(int(t.get("running", 0)) for t in (s or {}).get("tools", {}).values())


def started(s: Any) -> int:
    return sum(int(t.get("started", 0)) for t in (s or {}).get("tools", {}).values())


def server_cancelled(s: Any) -> int:
    """Calls the tools saw cancelled (or dropped unfinished), from /stats."""
    return sum(
        int(t.get("cancelled", 0)) + int(t.get("dropped", 0)) for t in (s or {}).get("tools", {}).values()
    )


def pct(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the server's MCP endpoint, http://HOST:PORT/mcp")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--cancel-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hang-bound", type=float, default=10.0, help="seconds without an answer that count as a hang")
    a = ap.parse_args()
    # rmcp answers the session DELETE with 202 Accepted, which this SDK logs as
    # a failed termination (it expects 200 or 204); the session is closed all the same.
    logging.getLogger("mcp.client.streamable_http").setLevel(logging.ERROR)
    if a.calls < 1 or a.sessions < 1 or not 0 <= a.cancel_fraction <= 1:
        ap.error("--calls and --sessions must be >= 1, --cancel-fraction in [0, 1]")
    stats_url = a.url.rstrip("/").removesuffix("/mcp") + "/stats"
    calls = make_plan(a.calls, a.sessions, a.cancel_fraction, a.seed)

    version: str | None = None
    before: Any = None
    after: Any = None
    t0: float | None = None
    wall = 0.0
    broken: str | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            sessions: list[ClientSession] = []
            try:
                for _ in range(a.sessions):
                    read, write = await stack.enter_async_context(streamable_http_client(a.url))
                    s = await stack.enter_async_context(ClientSession(read, write))
                    await s.initialize()
                    names = {t.name for t in (await s.list_tools()).tools}
                    missing = {"fast", "slow", "heavy"} - names
                    if missing:
                        print(f"burst: the server lists no {sorted(missing)} (has {sorted(names)})", file=sys.stderr)
                        return 2
                    sessions.append(s)
                # `initialize` negotiates a handshake-era version (2025-11-25 or older),
                # where a cancel is the `notifications/cancelled` POST; at 2026-07-28
                # (reached through `discover`) the SDK aborts the request's POST instead.
                version = sessions[0].protocol_version
                before = await stats(stats_url)
            except Exception as e:  # noqa: BLE001 - any setup failure ends the run with its cause
                print(f"burst: setup failed: {type(e).__name__}: {e}", file=sys.stderr)
                return 2

            t0 = time.perf_counter()
            await asyncio.gather(*(run_call(sessions[c.session], c, a.hang_bound) for c in calls))
            wall = time.perf_counter() - t0
            # Every call is answered or abandoned: within 2 s no tool may still be
            # running. Read while the sessions are open (closing one ends its calls).
            after = await poll_stats(stats_url, 2.0)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - a transport dying under the burst (the server crashed, say)
        if t0 is None:
            print(f"burst: setup failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        wall = wall or time.perf_counter() - t0
        broken = f"{type(e).__name__}: {e}"
        after = after or await poll_stats(stats_url, 0.0)
    for c in calls:
        if not c.outcome:
            c.outcome, c.detail = "lost", f"the session failed under it ({broken})"

    counts = {o: sum(1 for c in calls if c.outcome == o) for o in OUTCOMES}
    busy_by_reason: dict[str, int] = {}
    for c in calls:
        if c.outcome == "busy":
            busy_by_reason[c.detail] = busy_by_reason.get(c.detail, 0) + 1
    other = sorted({c.detail for c in calls if c.outcome in ("other_error", "lost")})[:5]
    ok_lat = sorted(c.latency for c in calls if c.outcome == "ok")
    p50, p99 = pct(ok_lat, 50), pct(ok_lat, 99)
    seen = after is not None
    leaked = running(after) if seen else None
    cancels_seen = server_cancelled(after) - server_cancelled(before) if seen else None
    # Calls no tool saw: refused (busy), or cancelled before the SDK wrote them.
    never_started = len(calls) - (started(after) - started(before)) if seen else None
    result = {
        "calls": len(calls),
        **counts,
        "busy_by_reason": busy_by_reason,
        "p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "goodput_ok_per_s": round(counts["ok"] / wall, 1) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "protocol_version": version,
        "server_cancels_observed": cancels_seen,
        "never_reached_a_tool": never_started,
        "running_after": leaked,
        "server_stats": after,
    }

    def row(k: str, v: Any) -> None:
        print(f"  {k:<28} {v}")

    print(
        f"burst: {len(calls)} calls over {a.sessions} sessions (protocol {version}), "
        f"cancel fraction {a.cancel_fraction}, seed {a.seed}"
    )
    for k in ("calls", *OUTCOMES):
        row(k, result[k])
    for reason, n in sorted(busy_by_reason.items()):
        row(f"  busy: {reason}", n)
    for d in other:
        row("  e.g.", d)
    row("p50 / p99 of ok (ms)", f"{result['p50_ms']} / {result['p99_ms']}")
    row("goodput (ok/s)", f"{result['goodput_ok_per_s']}  (burst took {wall:.2f} s)")
    row("cancels seen by the server", f"{cancels_seen} (we cancelled {counts['cancelled_by_us']})")
    row("calls no tool saw start", never_started)
    row("tools running after 2 s", leaked)
    failures = []
    if counts["hang"]:
        failures.append(f"{counts['hang']} call(s) hung")
    if counts["lost"]:
        failures.append(f"{counts['lost']} call(s) lost")
    if after is None:
        failures.append("could not read /stats after the burst")
    if broken:
        failures.append(f"a session failed under the burst: {broken}")
    if leaked:
        failures.append(f"slot leak: {leaked} tool call(s) still running 2 s after the burst")
    if seen and counts["cancelled_by_us"] and cancels_seen == 0:
        print("burst: warning: we cancelled calls but the server saw no cancellation", file=sys.stderr)
    print("RESULT " + json.dumps(result, separators=(",", ":")))
    for f in failures:
        print(f"burst: FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
