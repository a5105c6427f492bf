"""Instructions per signed request, counted by valgrind's callgrind: the same figure whatever
else the machine is doing, so a change's effect can be told from noise (throughput on these
shared machines moves by +-20% from round to round).

Each server (the bare delegate of `bare_delegate_server.py`, the real service) runs under
`valgrind --tool=callgrind` twice: answering `FEW` and then `FEW + MANY` signed requests, sent
one after another on one keep-alive connection (so that each request is one turn of the event
loop, as it is for each of 32 connections under load, without batching that depends on timing).
The difference of the two totals over `MANY` is the cost of one request, start-up and shutdown
cancelling out. The ratio bare delegate / real endpoint is the instruction-count analogue of
issue 17's throughput ratio (target 0.85).

Skipped with a line when valgrind is not installed, and in quick mode (a run takes minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from harness import Server, free_port, show
from signed_requests import SECRET, prepare_db

FEW, MANY = 200, 2000


async def _send(port: int, path: str, body: bytes, n: int) -> int:
    """Send `n` signed requests on one connection, one at a time; how many answered 200. Signed
    now: a run under valgrind takes minutes, and the signature is good for 300 s."""
    from cli.devtools import sign

    header = sign(body, SECRET)
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nStripe-Signature: {header}"
               f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ok = 0
    for _ in range(n):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        ok += head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()
    return ok


def _total(args: list[str], env: dict[str, str], path: str, body: bytes, n: int,
           tmp: str) -> int:
    """Instructions callgrind counted in a server that answered `n` requests."""
    port = free_port()
    out = os.path.join(tmp, f"callgrind-{port}.out")
    env = {**env, "PORT": str(port), "BENCH_TMP": tmp}
    server = Server(["--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                     *[a.replace("PORT", str(port)) for a in args]], env, port,
                    executable="valgrind", ready_timeout=300)
    try:
        ok = asyncio.run(_send(port, path, body, n))
    finally:
        server.stop(timeout=120)
    assert ok == n, f"{ok} of {n} requests answered 200"
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise AssertionError(f"no total in {out}")


def run(quick: bool = False) -> dict[str, float]:
    if quick:
        show("instructions per signed request (callgrind)", [("skipped", "in quick mode")])
        return {}
    if shutil.which("valgrind") is None:
        show("instructions per signed request (callgrind)",
             [("skipped", "valgrind is not installed (apt-get install valgrind)")])
        return {}
    from service.signatures import js_stringify

    tmp = tempfile.mkdtemp(prefix="bench-instructions-")
    url = f"sqlite:///{tmp}/app.db"
    prepare_db(url, "acct_bench")
    body = js_stringify({"note": "benchmark", "amount": 1.5, "user_id": "usr_bench",
                         "account_id": "acct_bench"}).encode()
    real_env = {"DATABASE_URL": url, "STRIPE_APP_SECRETS": SECRET, "SCHEDULER": "off",
                "LOG_LEVEL": "warning", "DB_WORKERS": "1"}
    rows = {
        "bare Tornado HTTPMessageDelegate": (["bench/bare_delegate_server.py", "PORT", SECRET],
                                             {}, "/bare"),
        "real POST /api/installation": (["run.py"], real_env, "/api/installation"),
        "real POST /api/whoami": (["run.py"], real_env, "/api/whoami"),
    }
    per_request: dict[str, int] = {}
    with ThreadPoolExecutor(2) as pool:  # the two runs of a row side by side
        for row, (args, env, path) in rows.items():
            few, more = pool.map(lambda n, a=args, e=env, p=path: _total(
                a, e, p, body, n, tmp), [FEW, FEW + MANY])
            per_request[row] = (more - few) // MANY
    floor = per_request["bare Tornado HTTPMessageDelegate"]
    real = per_request["real POST /api/installation"]
    lines = [(row, f"{n:,} instructions/request") for row, n in per_request.items()]
    lines.append(("bare delegate / /api/installation (throughput target >= 0.85)",
                  f"{floor / real:.3f}"))
    show(f"instructions per signed request (callgrind; {MANY} requests on one connection)",
         lines)
    return {"delegate_instructions": floor, "installation_instructions": real,
            "whoami_instructions": per_request["real POST /api/whoami"],
            "delegate_vs_installation": floor / real}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(parser.parse_args().quick)
