"""Drives sequential POST /allocate against one allot binary on a fresh SecantusDB,
optionally under `perf record`, and prints allot's CPU per allocation (from /proc).

  .venv/bin/python bench/profile.py BINARY [--cwd DIR] [--requests N] [--skus N]
                                   [--perf OUT.data] [--perf-args "-e cpu-clock -g"]

BINARY runs as `BINARY serve` in production configuration from --cwd (where its
config/ is; default: this checkout), exactly as bench/run.py starts it. Build it
with `cargo build --profile profiling --bin allot` for symbols.
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: Database, Allot, Connection)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary")
    parser.add_argument("--cwd", default=run.ALLOT_CWD, help="directory allot runs in (its config/)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--skus", type=int, default=4, help="skus (2 batches each) the requests go round")
    parser.add_argument("--perf", help="perf.data to record allot into while the requests run")
    parser.add_argument("--perf-args", default="-e cpu-clock -g")
    parser.add_argument("--log-level", default="warn")
    args = parser.parse_args()
    run.ALLOT, run.ALLOT_CWD = os.path.abspath(args.binary), os.path.abspath(args.cwd)

    database = run.Database()
    allot = run.Allot(database, args.log_level)
    perf = None
    try:
        skus = [f"prof-{n}" for n in range(args.skus)]
        run.add_stock(allot, allot.admin_token("bench-admin"), skus)
        connection = run.Connection(allot, allot.user_token("bench-buyer"))
        for n in range(20):  # warm-up: pools, lazy statics
            connection.allocate(f"warm-{n}", skus[n % len(skus)])
        if args.perf:
            perf = subprocess.Popen(["perf", "record", *shlex.split(args.perf_args), "-o", args.perf,
                                     "-p", str(allot.process.pid)], stderr=subprocess.DEVNULL)
            time.sleep(1)
        cpu_before = allot.cpu_seconds()
        started = time.perf_counter()
        statuses = {}
        for n in range(args.requests):
            status, _ = connection.allocate(f"prof-{n}", skus[n % len(skus)])
            statuses[status] = statuses.get(status, 0) + 1
        elapsed = time.perf_counter() - started
        cpu = allot.cpu_seconds() - cpu_before
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        print(f"{args.requests} sequential POST /allocate in {elapsed:.2f} s ({statuses}); "
              f"allot CPU {cpu * 1e3:.0f} ms = {cpu * 1e6 / args.requests:.0f} µs per allocation")
    finally:
        if perf and perf.poll() is None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        allot.stop()
        database.stop()


if __name__ == "__main__":
    main()
