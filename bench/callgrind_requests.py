"""Instructions per plain request, counted by callgrind: a steadier look at the
request path than CPU times, which vary by ±10 % on a shared VM (bench/quick.py).
Needs valgrind (Debian: apt-get install valgrind) and the .venv of
scripts/setup-python.

  .venv/bin/python bench/callgrind_requests.py [BINARY ...] [--requests N] [--rounds R]
                                               [--path /tests/hello]

Each BINARY (default: target/release/allot) runs as `BINARY serve` in production
configuration under `valgrind --tool=callgrind --instr-atstart=no`, with the
background loops (lease, revocation sync, recovery pass) slowed to their
longest settings. Instrumentation is switched on once the server answers, then
N sequential GETs go over one kept-alive connection, and the instructions
counted in that window (every thread of the process) are divided by N; so are
the calls to glibc's memcpy/memmove (with their instructions) and to malloc.
The total moves by about ±1 % from run to run (threads park and wake at
different moments); the call counts hardly at all.
Binaries are measured in turn, R rounds. Decision record 0003 used it to weigh
building the request's future in place (docs/decisions/0003-driving-hyper-directly.md).
"""

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: Database, free_port, SECRET)


def control(*args):
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def measure(binary, database, requests, path):
    port = run.free_port()
    out = tempfile.mkdtemp(prefix="callgrind-")
    env = dict(os.environ, ALLOT_ENV="production", ALLOT__AUTH__JWT_SECRET=run.SECRET,
               ALLOT__MONGO__URI=database.uri, ALLOT__MONGO__DATABASE="allot_callgrind",
               ALLOT__HTTP__HOST="127.0.0.1", ALLOT__HTTP__PORT=str(port),
               ALLOT__LOG__LEVEL="warn", ALLOT__MONGO__INSTANCE_LEASE_MS="60000",
               ALLOT__AUTH__REVOCATION_SYNC_MS="60000",
               ALLOT__ALLOCATION__RECOVERY_INTERVAL_MS="3600000")
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out}/callgrind.out.%p", binary, "serve"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=run.ALLOT_CWD)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        deadline = time.time() + 120
        while True:
            try:
                connection.request("GET", "/health")
                connection.getresponse().read()
                break
            except OSError:
                connection.close()
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{binary} did not start under valgrind")
                time.sleep(0.2)
        pid = str(process.pid)
        control("--instr=on", pid)
        # Warm up (the first requests fill caches and pools), then count.
        for _ in range(50):
            connection.request("GET", path)
            connection.getresponse().read()
        control("--zero", pid)
        for _ in range(requests):
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
        control("--dump", pid)
        connection.close()
    finally:
        process.terminate()
        process.wait()
    return {key: value / requests for key, value in count(explicit_dump(out)).items()}


def explicit_dump(out):
    """The text of the dump `callgrind_control --dump` wrote into `out` (then removed):
    it holds the counted window; the final one (at exit) only what came after it."""
    try:
        for name in os.listdir(out):
            with open(os.path.join(out, name)) as dump:
                text = dump.read()
            if re.search(r"^desc: Trigger: dump", text, re.M):
                return text
        raise RuntimeError(f"no dump in {out}")
    finally:
        shutil.rmtree(out)


def count(text):
    """The window's instructions, and the calls to and instructions in glibc's
    memcpy/memmove (futures and buffers moved) and calls to malloc."""
    counts = {"instructions": int(re.search(r"^totals: (\d+)", text, re.M).group(1)),
              "memcpy calls": 0, "memcpy instructions": 0, "malloc calls": 0}
    names, fn, cfn, call_line = {}, "", "", False
    for line in text.split("\n"):
        named = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if named:
            if named.group(3):
                names[named.group(2)] = named.group(3)
            if named.group(1) == "fn":
                fn = names.get(named.group(2), "")
            else:
                cfn = names.get(named.group(2), "")
            continue
        if line.startswith("calls="):
            call_line = True
            calls = int(line.split("=")[1].split()[0])
            if re.search(r"memcpy|memmove", cfn):
                counts["memcpy calls"] += calls
            elif re.search(r"(^|:)malloc$", cfn):
                counts["malloc calls"] += calls
            continue
        if call_line:  # the cost line of a call: inclusive, not the caller's own
            call_line = False
            continue
        cost = line.split()
        if len(cost) == 2 and (line[:1].isdigit() or line[:1] in "+-*"):
            if re.search(r"memcpy|memmove", fn):
                counts["memcpy instructions"] += int(cost[1])
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binaries", nargs="*", default=[run.ALLOT])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", default="/tests/hello")
    args = parser.parse_args()
    database = run.Database()
    results = {binary: [] for binary in args.binaries}
    try:
        for round_ in range(args.rounds):
            for binary in args.binaries:
                results[binary].append(measure(binary, database, args.requests, args.path))
                print(f"round {round_ + 1}: {binary}: " + describe(results[binary][-1]), file=sys.stderr)
    finally:
        database.stop()
    for binary, rounds in results.items():
        print(f"{binary} GET {args.path}, per request, median of {len(rounds)} rounds: "
              + describe({key: statistics.median(r[key] for r in rounds) for key in rounds[0]})
              + "; instructions by round: " + ", ".join(f"{r['instructions']:,.0f}" for r in rounds))


def describe(counts):
    return ", ".join(f"{value:,.1f} {key}" if key.endswith("calls") else f"{value:,.0f} {key}"
                     for key, value in counts.items())


if __name__ == "__main__":
    main()
