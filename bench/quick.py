"""A quick look at the request path's budget while working on it: GET /tests/secret
on one or more allot binaries against the floor (examples/floor.rs), interleaved,
with CPU per request from schedstat. Not the benchmark (that is bench/run); a
loop for comparing builds side by side on a noisy machine.

  .venv/bin/python bench/quick.py [BINARY ...] [--rounds N] [--seconds S]
                                  [--path /tests/secret] [--perf OUT.data]

Each BINARY (default: target/release/allot) runs as `BINARY serve` in production
configuration from this checkout, exactly as bench/run.py starts it. With --perf,
the first binary is recorded (`perf record -F 2000 -g --call-graph dwarf`) during
one extra wrk run after the rounds.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: Database, Allot, Floor, wrk)


def measure(server, url, seconds, connections, headers=()):
    before = server.cpu_seconds_precise()
    result = run.wrk(url, seconds, connections, headers)
    result["cpu_us"] = (server.cpu_seconds_precise() - before) * 1e6 / max(result["rps"] * seconds, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binaries", nargs="*", default=[run.ALLOT])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--path", default="/tests/secret")
    parser.add_argument("--perf", help="perf.data to record the first binary into")
    args = parser.parse_args()

    database = run.Database()
    allots = []
    try:
        floor = run.Floor()
        for binary in args.binaries:
            run.ALLOT = os.path.abspath(binary)
            allots.append(run.Allot(database, "warn"))
        token = allots[0].user_token("quick-user")
        auth = [f"Authorization: Bearer {token}"]
        results = {name: [] for name in ["floor", *args.binaries]}
        for round_ in range(args.rounds):
            results["floor"].append(measure(floor, floor.base + "/tests/hello", args.seconds, args.connections))
            for binary, allot in zip(args.binaries, allots):
                results[binary].append(measure(allot, allot.base + args.path, args.seconds,
                                               args.connections, auth))
            print(f"round {round_ + 1}: " + "; ".join(
                f"{name}: {r[-1]['rps']:.0f}/s {r[-1]['cpu_us']:.2f}µs" for name, r in results.items()),
                file=sys.stderr)
        floor_rps = statistics.median(r["rps"] for r in results["floor"])
        floor_cpu = statistics.median(r["cpu_us"] for r in results["floor"])
        print(f"floor: {floor_rps:.0f} req/s, {floor_cpu:.2f} µs/request")
        for binary, allot in zip(args.binaries, allots):
            rps = statistics.median(r["rps"] for r in results[binary])
            cpu = statistics.median(r["cpu_us"] for r in results[binary])
            print(f"{binary} {args.path}: {rps:.0f} req/s ({rps / floor_rps:.2f}× floor), "
                  f"{cpu:.2f} µs/request ({cpu / floor_cpu:.2f}× floor), "
                  f"peak RSS {allot.peak_rss_mib():.1f} MiB")
        print(f"floor peak RSS {floor.peak_rss_mib():.1f} MiB")
        if args.perf:
            allot = allots[0]
            perf = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "--call-graph", "dwarf",
                                     "-o", args.perf, "-p", str(allot.process.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            run.wrk(allot.base + args.path, 5, args.connections, auth)
            perf.send_signal(signal.SIGINT)
            perf.wait()
        floor.stop()
    finally:
        for allot in allots:
            allot.stop()
        database.stop()


if __name__ == "__main__":
    main()
