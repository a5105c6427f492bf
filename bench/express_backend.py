"""The docs' Express backend (`bench/express/server.js`): express and stripe installed from the
npm registry into `bench/express/node_modules` (pinned by its `package-lock.json`) when node is
on the machine.

`start(port, secret, workers=1)` returns a running `harness.Server`, or None after printing why
the Express rows are skipped (no node or npm, or, in quick mode, not installed yet: CI never
reaches the registry for a correctness check).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from harness import ROOT, Server

FOLDER = os.path.join(ROOT, "bench", "express")


def start(port: int, secret: str, workers: int = 1, install: bool = True,
          tmp: str = "/tmp") -> Server | None:
    node = shutil.which("node")
    if node is None:
        print("  (node is not on this machine: the Express baseline is skipped)")
        return None
    if not os.path.isdir(os.path.join(FOLDER, "node_modules", "express")):
        npm = shutil.which("npm")
        if npm is None or not install:
            print("  (express is not installed in bench/express and npm is "
                  f"{'missing' if npm is None else 'not run in quick mode'}: "
                  "the Express baseline is skipped)")
            return None
        print("  installing express and stripe from the npm registry into bench/express ...")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=FOLDER,
                       check=True, timeout=600)
    return Server(["bench/express/server.js", str(port), secret, str(workers)],
                  {"BENCH_TMP": tmp}, port, executable=node)
