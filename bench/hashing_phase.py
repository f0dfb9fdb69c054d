"""bench/run.py's hashing phase (budget 3) alone, with what explains it: GET
/tests/hello p99 at 500 requests/s (examples/probe), idle and while `wrk -t1 -c8`
logs one user in flat out (a database and an instance of its own each round, as
in bench/run.py), plus the logins/s, the CPU of the database and of
allot (and allot's part in the kernel), and the database's operations per second (serverStatus opcounters): a loop
for comparing changes, not the benchmark.

  .venv/bin/python bench/hashing_phase.py [--rounds R] [--db-idle] [--sched]
  BENCH_ALLOT=/path/to/other/allot BENCH_ALLOT_CWD=/its/checkout .venv/bin/python bench/hashing_phase.py

--db-idle runs the database's threads under SCHED_IDLE (`chrt -i`), to tell its
share of the CPU from allot's own part in the loaded p99.

--sched records the scheduler (`perf sched record -a`) while the loaded probe
runs, and counts the wake-ups of allot's threads and of the probe's that waited
more than 1 ms for a CPU, by what ran on that CPU meanwhile.
"""

import argparse
import collections
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: Database, Allot, example, login_flood)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db-idle", action="store_true")
    parser.add_argument("--sched", action="store_true")
    args = parser.parse_args()
    for _ in range(args.rounds):
        round_(args)


def round_(args):
    """One round on a database and an instance of its own, as in bench/run.py."""
    database = run.Database()
    allot = run.Allot(database, "warn")
    try:
        allot.user_token("bench-user")
        if args.db_idle:
            for task in os.listdir(f"/proc/{database.process.pid}/task"):
                subprocess.run(["chrt", "-i", "-p", "0", task], check=True)
        status = run.mongo(database).client.admin
        idle = run.example("probe", allot.base + "/tests/hello", 500, 5)
        with run.login_flood(allot, 7) as flood:
            ops = status.command("serverStatus")["opcounters"]
            before = (database.cpu_seconds(), allot.cpu_seconds(), time.time(), allot.kernel_seconds())
            recorder = subprocess.Popen(
                ["perf", "sched", "record", "-a", "-o", SCHED_DATA, "--", "sleep", "5"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if args.sched else None
            loaded = run.example("probe", allot.base + "/tests/hello", 500, 5)
            after = (database.cpu_seconds(), allot.cpu_seconds(), time.time(), allot.kernel_seconds())
            ops = {key: value - ops[key] for key, value in status.command("serverStatus")["opcounters"].items()
                   if isinstance(value, int) and value > ops[key]}
        logins = flood["logins_per_sec"]
        elapsed = after[2] - before[2]
        per_second = {key: round(count / elapsed) for key, count in ops.items()}
        print(f"hello p99 idle {idle['p99_ms']:.2f} ms, under logins {loaded['p99_ms']:.2f} ms "
              f"(ratio {loaded['p99_ms'] / idle['p99_ms']:.2f}); logins/s {logins:.0f}; "
              f"database CPU {100 * (after[0] - before[0]) / elapsed:.0f} %, "
              f"allot CPU {100 * (after[1] - before[1]) / elapsed:.0f} % "
              f"(kernel {100 * (after[3] - before[3]) / elapsed:.0f} %); "
              f"database operations/s {per_second}", flush=True)
        if recorder:
            recorder.wait()
            print(delayed_wakeups(allot.process.pid), flush=True)
    finally:
        allot.stop()
        database.stop()


SCHED_DATA = "/tmp/hashing_phase.sched.data"


def delayed_wakeups(allot_pid):
    """From `perf sched timehist`: the wake-ups of allot's threads and of the
    probe's that waited over 1 ms for their CPU, counted by the task that ran
    longest on that CPU while they waited."""
    text = subprocess.run(["perf", "sched", "timehist", "-i", SCHED_DATA], capture_output=True,
                          text=True).stdout
    rows, by_cpu = [], collections.defaultdict(list)
    for line in text.splitlines()[3:]:
        fields = line.split()
        try:  # time (switched out), cpu, task[tid/pid], wait, scheduling delay, run time (ms)
            row = (float(fields[0]), fields[1], fields[2], *map(float, fields[-3:]))
        except (IndexError, ValueError):
            continue
        rows.append(row)
        by_cpu[row[1]].append(row)
    probe = next((r[2].split("[")[1].rstrip("]") for r in rows if r[2].startswith("probe[")), "?")
    counts = {"allot": collections.Counter(), "probe": collections.Counter()}
    for out, cpu, task, _, delay, ran in rows:
        if delay <= 1.0 or "[" not in task:
            continue
        owner = task.rstrip("]").rsplit("/", 1)[-1] if "/" in task else task.split("[")[1].rstrip("]")
        side = ("allot" if owner == str(allot_pid) and task.startswith("tokio-rt-worker")
                else "probe" if owner == probe else None)
        if side is None:
            continue
        woken, switched_in = out - (ran + delay) / 1000, out - ran / 1000
        meanwhile = collections.Counter()
        for other in by_cpu[cpu]:
            if woken < other[0] <= switched_in and other[2] != task:
                meanwhile[other[2].split("[")[0]] += other[0] - max(other[0] - other[5] / 1000, woken)
        counts[side][meanwhile.most_common(1)[0][0] if meanwhile else "?"] += 1
    return "wake-ups delayed over 1 ms, by what held the CPU: " + "; ".join(
        f"{side} {sum(c.values())} ({', '.join(f'{name} {n}' for name, n in c.most_common())})"
        for side, c in counts.items())


if __name__ == "__main__":
    main()
