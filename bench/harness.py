"""Shared benchmark machinery: servers as separate processes, load from a separate process.

`Server(cmd, env)` starts a process and waits for its `/healthz` (or a TCP port). `load(...)`
runs a closed-loop HTTP/1.1 keep-alive load generator in a child process over loopback and
returns throughput and latency percentiles. Figures are only compared as ratios measured in the
same run: these machines are shared and noisy.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cli.devtools import free_port  # noqa: E402  (the benchmarks' one port helper, re-exported)

__all__ = ["ROOT", "Server", "free_port", "generator", "lag_histogram", "load", "load_one",
           "loop_lag_p99_ms", "process_memory_mb", "show"]


def process_memory_mb(pid: int) -> dict[str, float]:
    """`{"rss": .., "pss": ..}` in MB from /proc/<pid>/smaps_rollup (Linux 4.14+). PSS splits
    each page shared by k processes as 1/k to each, so PSS adds up across forked processes
    where RSS counts every shared page once per process."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                found[key.lower()] = int(rest.split()[0]) / 1024
    return found


class Server:
    def __init__(self, args: Sequence[str], env: dict[str, str], port: int,
                 health: str | None = "/healthz", cwd: str = ROOT,
                 executable: str = sys.executable, ready_timeout: float = 60) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
        full.update(env)
        self.port = port
        self.log_path = os.path.join(full.get("BENCH_TMP", "/tmp"), f"bench-server-{port}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([executable, *args], env=full, cwd=cwd,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(health, ready_timeout)

    def _wait(self, health: str | None, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if health is None:
                        return
                    s.sendall(f"GET {health} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    if s.recv(100).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        """User and system CPU time this process has used so far (0.0 where /proc is absent)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        self.log.close()
        return code


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _request_bytes(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _worker(port: int, requests: list[bytes], stop_at: float, latencies: list[float],
                  statuses: dict[int, int], limit: int | None, counter: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < stop_at:
            if limit is not None:
                if counter[0] >= limit:
                    break
                index = counter[0]
                counter[0] += 1
                payload = requests[index]
            else:
                payload = requests[i % len(requests)]
                i += 1
            start = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _run_load(port: int | list[int], requests: list[bytes], connections: int,
                    duration: float, limit: int | None) -> LoadResult:
    ports = port if isinstance(port, list) else [port]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = [0]
    start = time.perf_counter()
    stop_at = start + duration
    await asyncio.gather(*(_worker(ports[i % len(ports)], requests, stop_at, latencies,
                                   statuses, limit, counter) for i in range(connections)))
    seconds = time.perf_counter() - start
    latencies.sort()
    def pick(q):
        return (latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3
                if latencies else 0.0)
    return LoadResult(len(latencies), seconds, statuses, pick(0.50), pick(0.99))


def _child(queue: mp.Queue, *args: object) -> None:
    queue.put(asyncio.run(_run_load(*args)))  # type: ignore[arg-type]


def load(port: int | list[int], path: str, bodies: list[bytes], headers: list[dict[str, str]],
         connections: int = 32, duration: float = 5.0, limit: int | None = None) -> LoadResult:
    """Closed-loop load from a separate process; `limit` sends each request once, in order.

    With several ports, the connections are spread over them (one service per port)."""
    requests = [_request_bytes(path, b, h) for b, h in zip(bodies, headers, strict=True)]
    ctx = mp.get_context("fork")  # the parent runs no event loop, so forking is safe
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, port, requests, connections, duration, limit))
    proc.start()
    result = queue.get(timeout=duration + 600)
    proc.join(30)
    return result


def generator() -> str:
    """The load generator `load_one` uses: wrk when it is installed, else the in-repo client."""
    return "wrk -t1 -c32" if shutil.which("wrk") else "in-repo asyncio client, 32 connections"


def _lua_string(text: str) -> str:
    level = "=" * 4
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


_WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def load_one(port: int, path: str, body: bytes, headers: dict[str, str],
             duration: float = 5.0) -> LoadResult:
    """The same request over and over, 32 connections, from `wrk -t1 -c32` when installed (a C
    generator takes less of the shared cores), else from `load`. Statuses from wrk are only
    told apart as 200 and not (counted under 0)."""
    if not shutil.which("wrk"):
        return load(port, path, [body], [headers], duration=duration)
    script = "\n".join([
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(body.decode())}",
        *(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()),
    ])
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", "-c32", f"-d{max(1, round(duration))}s", "--latency", "-s", f.name,
             f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True,
            timeout=duration + 60).stdout
    finally:
        os.unlink(f.name)
    total = int(re.search(r"(\d+) requests in ([\d.]+)(m?s)", out).group(1))  # type: ignore[union-attr]
    seconds = float(re.search(r"requests in ([\d.]+)(m?s)", out).group(1))  # type: ignore[union-attr]
    if re.search(r"requests in [\d.]+ms", out):
        seconds /= 1e3
    bad_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    bad = int(bad_match.group(1)) if bad_match else 0
    if errors:  # connect/read/write/timeout errors count as not-200 answers
        bad += sum(int(n) for n in re.findall(r"\d+", errors.group(0)))
    latency = {q: float(v) * _UNITS[u] for q, v, u in _WRK_LATENCY.findall(out)}
    statuses = {200: total - bad} if total > bad else {}
    if bad:
        statuses[0] = bad
    return LoadResult(total, seconds, statuses, latency.get("50", 0.0), latency.get("99", 0.0))


def lag_histogram(port: int) -> dict[float, float]:
    """The service's event-loop lag histogram from /metrics: cumulative count per bucket bound
    (seconds; `inf` holds the total). Two readings subtract to the lag between them."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("event_loop_lag_seconds_distribution_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return buckets


def loop_lag_p99_ms(port: int, since: dict[float, float] | None = None) -> float:
    """The service's event-loop lag (99th percentile of its 0.5 s samples, as the bound of its
    bucket), since the start or, with `since`, since that `lag_histogram` reading."""
    buckets = lag_histogram(port)
    if since:
        buckets = {le: n - since.get(le, 0.0) for le, n in buckets.items()}
    count = buckets.get(float("inf"), 0.0)
    for le, cumulative in sorted(buckets.items()):
        if count and cumulative >= 0.99 * count:
            return le * 1e3
    return 0.0


def show(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
