"""bench/run.py's hashing phase (budget 3) alone, with what explains it: GET
/tests/hello p99 at 500 requests/s (examples/probe), idle and while `wrk -t1 -c8`
logs one user in flat out, plus the logins/s, the CPU of the database and of
allot, and the database's operations per second (serverStatus opcounters): a loop
for comparing changes, not the benchmark.

  .venv/bin/python bench/hashing_phase.py [--rounds R] [--db-idle]
  BENCH_ALLOT=/path/to/other/allot BENCH_ALLOT_CWD=/its/checkout .venv/bin/python bench/hashing_phase.py

--db-idle runs the database's threads under SCHED_IDLE (`chrt -i`), to tell its
share of the CPU from allot's own part in the loaded p99.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: Database, Allot, example)
from allocate_load import cpu_seconds  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db-idle", action="store_true")
    args = parser.parse_args()
    database = run.Database()
    allot = run.Allot(database, "warn")
    try:
        allot.user_token("bench-user")
        if args.db_idle:
            for task in os.listdir(f"/proc/{database.process.pid}/task"):
                subprocess.run(["chrt", "-i", "-p", "0", task], check=True)
        status = run.mongo(database).client.admin
        login = json.dumps({"username": "bench-user", "password": run.PASSWORD})
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
            lua.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(login)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
            lua.flush()
            for _ in range(args.rounds):
                idle = run.example("probe", allot.base + "/tests/hello", 500, 5)
                with tempfile.TemporaryFile("w+") as out:
                    load = subprocess.Popen(["wrk", "-t1", "-c8", "-d7s", "-s", lua.name,
                                             allot.base + "/users/login"], stdout=out, text=True)
                    time.sleep(1)
                    ops = status.command("serverStatus")["opcounters"]
                    before = (cpu_seconds(database.process.pid), cpu_seconds(allot.process.pid), time.time())
                    loaded = run.example("probe", allot.base + "/tests/hello", 500, 5)
                    after = (cpu_seconds(database.process.pid), cpu_seconds(allot.process.pid), time.time())
                    ops = {key: value - ops[key] for key, value in status.command("serverStatus")["opcounters"].items()
                           if isinstance(value, int) and value > ops[key]}
                    load.wait()
                    out.seek(0)
                    logins = float(re.search(r"Requests/sec:\s+([\d.]+)", out.read()).group(1))
                elapsed = after[2] - before[2]
                per_second = {key: round(count / elapsed) for key, count in ops.items()}
                print(f"hello p99 idle {idle['p99_ms']:.2f} ms, under logins {loaded['p99_ms']:.2f} ms "
                      f"(ratio {loaded['p99_ms'] / idle['p99_ms']:.2f}); logins/s {logins:.0f}; "
                      f"database CPU {100 * (after[0] - before[0]) / elapsed:.0f} %, "
                      f"allot CPU {100 * (after[1] - before[1]) / elapsed:.0f} %; "
                      f"database operations/s {per_second}", flush=True)
    finally:
        allot.stop()
        database.stop()


if __name__ == "__main__":
    main()
