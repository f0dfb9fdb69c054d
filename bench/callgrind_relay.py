"""Instructions per event of the event relay, counted by callgrind: the relay's
own cost, steadier than CPU times on a shared VM (see bench/callgrind_requests.py).
Needs valgrind and the .venv of scripts/setup-python.

  .venv/bin/python bench/callgrind_relay.py [BINARY ...] [--seconds S] [--rounds R]

One database is prepared: the feed is started, then allocations are made for S
seconds (wrk, bench/allocate.lua, 20 skus) on an instance whose relay is off,
so that they wait in the change stream. Then each BINARY (default:
target/release/allot) runs as `BINARY serve` under `valgrind --tool=callgrind
--instr-atstart=no` with its relay on and the other background loops slowed;
instrumentation is switched on once it answers, and the instructions counted
(every thread) until its checkpoint has recorded every event are divided by
the events recorded meanwhile. Before each run the events, stock levels and
checkpoint are put back as they were, so every binary relays the same changes.
"""

import argparse
import copy
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import callgrind_requests  # noqa: E402  (its callgrind helpers)
import run  # noqa: E402  (bench/run.py)

DATABASE = "allot_bench"  # as bench/run.py's Allot and mongo()


def prepare(database, seconds):
    """The database as the relay finds it: the feed started, S seconds of allocations unrelayed."""
    db = run.mongo(database)
    os.environ["ALLOT__EVENTS__RELAY_ENABLED"] = "false"
    allot = run.Allot(database, "warn")  # begins the feed at start-up, relays nothing
    try:
        run.add_stock(allot, allot.admin_token("bench-admin"), run.ORIGINAL_SKUS)
        env = {"ALLOT_TOKEN": allot.user_token("bench-buyer"), "ALLOT_SKUS": ",".join(run.ORIGINAL_SKUS)}
        run.wrk(allot.base + "/allocate", seconds, 32, script="allocate.lua", env=env)
    finally:
        allot.stop()
        del os.environ["ALLOT__EVENTS__RELAY_ENABLED"]
    return db, db.event_relay.find_one({"_id": "checkpoint"}), list(db.stock_levels.find())


def measure(binary, database, db, checkpoint, levels, target):
    db.events.delete_many({})
    db.stock_levels.delete_many({})
    if levels:
        db.stock_levels.insert_many(copy.deepcopy(levels))
    db.event_relay.replace_one({"_id": "checkpoint"}, checkpoint)
    port = run.free_port()
    out = tempfile.mkdtemp(prefix="callgrind-relay-")
    env = dict(os.environ, ALLOT_ENV="production", ALLOT__AUTH__JWT_SECRET=run.SECRET,
               ALLOT__MONGO__URI=database.uri, ALLOT__MONGO__DATABASE=DATABASE,
               ALLOT__HTTP__HOST="127.0.0.1", ALLOT__HTTP__PORT=str(port), ALLOT__LOG__LEVEL="warn",
               ALLOT__AUTH__REVOCATION_SYNC_MS="60000", ALLOT__ALLOCATION__RECOVERY_INTERVAL_MS="3600000",
               ALLOT__WEBHOOKS__POLL_INTERVAL_MS="60000")
    process = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                f"--callgrind-out-file={out}/callgrind.out.%p", binary, "serve"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=run.ALLOT_CWD)
    control = lambda option: callgrind_requests.control(option, str(process.pid))  # noqa: E731
    position = lambda: db.event_relay.find_one({"_id": "checkpoint"})["position"]  # noqa: E731
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{binary} did not start under valgrind")
                time.sleep(0.3)
        control("--instr=on")
        control("--zero")
        first = position()
        while position() < target:
            time.sleep(0.2)
        control("--dump")
        events = position() - first
    finally:
        process.terminate()
        process.wait()
    text = callgrind_requests.explicit_dump(out)
    return int(re.search(r"^totals: (\d+)", text, re.M).group(1)) / events, events


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binaries", nargs="*", default=[run.ALLOT])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    database = run.Database()
    try:
        db, checkpoint, levels = prepare(database, args.seconds)
        # Every line allocated is an event, and so is every batch created.
        target = checkpoint["position"] + db.order_lines.count_documents({}) + db.batches.count_documents({})
        for round_ in range(args.rounds):
            for binary in args.binaries:
                per_event, events = measure(binary, database, db, checkpoint, levels, target)
                print(f"round {round_ + 1} {binary}: {per_event / 1000:.1f} k instructions per event "
                      f"({events} events)", flush=True)
    finally:
        database.stop()


if __name__ == "__main__":
    main()
