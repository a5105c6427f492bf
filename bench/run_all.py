"""Run every benchmark (or the ones named) and print their figures.

    python bench/run_all.py                 # everything, full size (several minutes)
    python bench/run_all.py signed webhooks # some of them
    python bench/run_all.py --quick         # small and fast: checks that they run and that
                                            # their correctness counts hold (CI runs this)
    python bench/run_all.py --json out.json # also write the figures as JSON

Each benchmark starts the real service as a separate process and loads it from another one,
and compares with its baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import install_sync  # noqa: E402
import instructions  # noqa: E402
import processes  # noqa: E402
import prune  # noqa: E402
import scheduled_runs  # noqa: E402
import signed_requests  # noqa: E402
import tasks  # noqa: E402
import webhook_ingest  # noqa: E402

BENCHMARKS = {
    "signed": signed_requests.run,
    "webhooks": webhook_ingest.run,
    "scheduled": scheduled_runs.run,
    "processes": processes.run,
    "prune": prune.run,
    "installs": install_sync.run,
    "tasks": tasks.run,
    "instructions": instructions.run,
}


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         "")
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpus} cores {model}, Python " \
           f"{platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], default=[])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    names = args.names or list(BENCHMARKS)
    print(f"machine: {machine()}  mode: {'quick' if args.quick else 'full'}")
    results, failed = {}, []
    for name in names:
        started = time.monotonic()
        try:
            results[name] = BENCHMARKS[name](quick=args.quick)
        except AssertionError as exc:
            failed.append(name)
            print(f"\n!! {name}: a correctness check failed: {exc}")
        print(f"  ({name} took {time.monotonic() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "quick": args.quick, "results": results}, f,
                      indent=2)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print(f"\nall {len(names)} benchmarks ran and their correctness checks held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
