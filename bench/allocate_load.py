"""One load of POST /allocate on one allot build against a fresh SecantusDB, in
bench/run.py's setting of the `original` phase (wrk -t2 -c32, 8 s, 20 skus, qty 1,
new order ids), printing wrk's figures, the CPU of the database and of allot, and
allot's context switches per allocation (each costs this 2-core VM about 45 µs):
a loop for comparing changes, not the benchmark.

  .venv/bin/python bench/allocate_load.py          # BENCH_ALLOT=... for another build
  ALLOT__EVENTS__RELAY_ENABLED=false .venv/bin/python bench/allocate_load.py   # without the event relay
  .venv/bin/python bench/allocate_load.py perf     # perf record -g allot into /tmp/allocate.perf.data
  .venv/bin/python bench/allocate_load.py spy      # py-spy record the database into /tmp/allocate.db.json

(py-spy: `.venv/bin/pip install py-spy`; perf wants `cargo build --profile profiling`.)
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: Database, Allot, add_stock, wrk)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else None
    database = run.Database()
    allot = run.Allot(database, "warn")
    try:
        run.add_stock(allot, allot.admin_token("bench-admin"), run.ORIGINAL_SKUS)
        env = {"ALLOT_TOKEN": allot.user_token("bench-buyer"), "ALLOT_SKUS": ",".join(run.ORIGINAL_SKUS)}
        recorder = None
        if mode == "perf":
            recorder = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-p", str(allot.process.pid),
                                         "-o", "/tmp/allocate.perf.data", "--", "sleep", "7"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif mode == "spy":
            recorder = subprocess.Popen([os.path.join(run.ROOT, ".venv/bin/py-spy"), "record", "-p",
                                         str(database.process.pid), "-d", "7", "-f", "speedscope",
                                         "-o", "/tmp/allocate.db.json", "-r", "50"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # allot's background loops (leases, revocations, recovery, the relay)
        # while no request comes, to tell them from the allocations' own CPU;
        # after the relay has told the batches' creation.
        time.sleep(2)
        idle_from = (allot.cpu_seconds_precise(), time.time())
        time.sleep(3)
        idle = (allot.cpu_seconds_precise() - idle_from[0]) / (time.time() - idle_from[1])
        before = (database.cpu_seconds(), allot.cpu_seconds(), time.time(),
                  allot.cpu_seconds_precise(), sum(allot.context_switches()))
        result = run.wrk(allot.base + "/allocate", 8, 32, script="allocate.lua", env=env, server=allot)
        after = (database.cpu_seconds(), allot.cpu_seconds(), time.time(),
                 allot.cpu_seconds_precise(), sum(allot.context_switches()))
        elapsed = after[2] - before[2]
        net = (after[3] - before[3] - idle * elapsed) / result["requests"]
        print(result)
        print(f"database CPU {100 * (after[0] - before[0]) / elapsed:.0f} %, "
              f"allot CPU {100 * (after[1] - before[1]) / elapsed:.0f} %; "
              f"allot idle {1e6 * idle:.0f} µs/s, CPU per allocation net of it {1e6 * net:.0f} µs; "
              f"context switches per allocation {(after[4] - before[4]) / result['requests']:.2f}")
        if recorder:
            recorder.wait()
    finally:
        allot.stop()
        database.stop()


if __name__ == "__main__":
    main()
