"""allot's performance benchmark. Run it through bench/run, which installs and builds first.

Each budget line of the performance issue is measured as a ratio within one run:
  1. auth cost: /tests/secret vs /tests/hello on the same instance (rps, p99);
  2. allocation: POST /allocate vs the same round trips issued straight from the
     MongoDB driver (examples/raw_allocate.rs), each on a fresh database;
  3. hashing: /tests/hello p99 at a fixed rate, idle vs while logins run flat out;
  4. peak RSS, start-up time to /health, release binary size.
Scenarios are interleaved and repeated; medians are reported.
"""

import argparse
import datetime
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOT = os.path.join(ROOT, "target/release/allot")
EXAMPLES = os.path.join(ROOT, "target/release/examples")
SECANTUSD = os.path.join(ROOT, ".venv/bin/secantusd-py")
SECRET = "benchmark-secret-that-is-long-enough-0123456789"
PASSWORD = "benchmark password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class Database:
    """A fresh in-memory SecantusDB server (it slows down for good after ~10k updates)."""

    def __init__(self):
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self.process = subprocess.Popen(
            [SECANTUSD, "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", ":memory:", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("SecantusDB did not start")

    def stop(self):
        self.process.terminate()
        self.process.wait()


class Allot:
    """The release binary in production configuration on a free port."""

    def __init__(self, database, log_level):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, ALLOT_ENV="production", ALLOT__AUTH__JWT_SECRET=SECRET,
                        ALLOT__MONGO__URI=database.uri, ALLOT__MONGO__DATABASE="allot_bench",
                        ALLOT__HTTP__HOST="127.0.0.1", ALLOT__HTTP__PORT=str(self.port),
                        ALLOT__LOG__LEVEL=log_level, ALLOT_ADMIN_PASSWORD=PASSWORD)
        started = time.perf_counter()
        self.process = subprocess.Popen([ALLOT, "serve"], env=self.env, cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                if http("GET", self.base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError("allot exited at start-up")
            time.sleep(0.001)
        self.startup_ms = (time.perf_counter() - started) * 1000

    def cpu_seconds(self):
        """User + system CPU time the process has used (steal time is not counted)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            kib = int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1))
        return kib / 1024

    def user_token(self, username):
        status, body = http("POST", self.base + "/users/registration",
                            {"username": username, "password": PASSWORD})
        assert status == 201, body
        return body["access_token"]

    def admin_token(self, username):
        subprocess.run([ALLOT, "users", "create-admin", "--username", username],
                       env=self.env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        status, body = http("POST", self.base + "/users/login",
                            {"username": username, "password": PASSWORD})
        assert status == 200, body
        return body["access_token"]

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()


def add_stock(allot, token, skus):
    for sku in skus:
        for n, eta in enumerate([None, "2030-01-01"]):
            status, body = http("POST", allot.base + "/batches",
                                {"reference": f"{sku}-b{n}", "sku": sku,
                                 "purchased_quantity": 1_000_000, "eta": eta}, token)
            assert status == 201, body


def wrk(url, seconds, connections, headers=(), script=None, env=None, method=None, body=None, server=None):
    """Runs wrk; returns rps, p50/p99 in ms, the count of errors and non-2xx answers,
    and, given the server, its CPU time per request in µs."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    for header in headers:
        command += ["-H", header]
    lua = None
    if script:
        command += ["-s", os.path.join(ROOT, "bench", script)]
    elif method:
        lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        lua.write(f'wrk.method = "{method}"\nwrk.body = {json.dumps(body)}\n'
                  'wrk.headers["Content-Type"] = "application/json"\n')
        lua.close()
        command += ["-s", lua.name]
    cpu_before = server.cpu_seconds() if server else None
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    cpu_used = server.cpu_seconds() - cpu_before if server else None
    if lua:
        os.unlink(lua.name)

    def latency(percent):
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "p50_ms": latency(50), "p99_ms": latency(99), "errors": errors}
    if server:
        result["cpu_us"] = cpu_used * 1e6 / max(requests, 1)
    return result


def example(name, *args):
    out = subprocess.run([os.path.join(EXAMPLES, name), *map(str, args)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_of(runs, key):
    return statistics.median(run[key] for run in runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5, help="length of each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of interleaved measurements")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for HTTP scenarios")
    parser.add_argument("--alloc-concurrency", type=int, default=16,
                        help="concurrent allocations (wrk connections and raw-driver tasks)")
    parser.add_argument("--log-level", default="warn", help="allot's log.level during the run")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench/results/latest.md"))
    args = parser.parse_args()
    seconds = int(args.seconds)
    results = {name: [] for name in ["hello", "secret", "me", "login", "allocate", "raw"]}
    hashing = []
    startups, peaks = [], []

    print("phase 1: HTTP scenarios on one instance", file=sys.stderr)
    database = Database()
    allot = Allot(database, args.log_level)
    startups.append(allot.startup_ms)
    token = allot.user_token("bench-user")
    auth = [f"Authorization: Bearer {token}"]
    login = {"username": "bench-user", "password": PASSWORD}
    for round_ in range(args.repeats):
        for name, run in [
            ("hello", lambda: wrk(allot.base + "/tests/hello", seconds, args.connections, server=allot)),
            ("secret", lambda: wrk(allot.base + "/tests/secret", seconds, args.connections, auth, server=allot)),
            ("me", lambda: wrk(allot.base + "/users/me", seconds, args.connections, auth, server=allot)),
            ("login", lambda: wrk(allot.base + "/users/login", seconds, 8, method="POST",
                                  body=json.dumps(login), server=allot)),
        ]:
            results[name].append(run())
            print(f"  round {round_ + 1} {name}: {results[name][-1]}", file=sys.stderr)
        idle = example("probe", allot.base + "/tests/hello", 500, seconds)
        with tempfile.TemporaryFile("w+") as out:
            lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
            lua.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(login))}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
            lua.close()
            load = subprocess.Popen(["wrk", "-t1", "-c8", f"-d{seconds + 2}s", "-s", lua.name,
                                     allot.base + "/users/login"], stdout=out, text=True)
            time.sleep(1)
            loaded = example("probe", allot.base + "/tests/hello", 500, seconds)
            load.wait()
            os.unlink(lua.name)
            out.seek(0)
            logins_per_sec = float(re.search(r"Requests/sec:\s+([\d.]+)", out.read()).group(1))
        hashing.append({"idle_p99_ms": idle["p99_ms"], "loaded_p99_ms": loaded["p99_ms"],
                        "logins_per_sec": logins_per_sec, "errors": idle["errors"] + loaded["errors"]})
        print(f"  round {round_ + 1} hashing: {hashing[-1]}", file=sys.stderr)
    peaks.append(allot.peak_rss_mib())
    allot.stop()
    database.stop()

    print("phase 2: allocation, allot vs the raw driver, each on a fresh database", file=sys.stderr)
    skus = [f"sku-{n:03}" for n in range(200)]
    for round_ in range(args.repeats):
        database = Database()
        allot = Allot(database, args.log_level)
        startups.append(allot.startup_ms)
        add_stock(allot, allot.admin_token("bench-admin"), skus)
        env = dict(os.environ, ALLOT_TOKEN=allot.user_token("bench-allocator"), ALLOT_SKUS=",".join(skus))
        results["allocate"].append(wrk(allot.base + "/allocate", seconds, args.alloc_concurrency,
                                       script="allocate.lua", env=env, server=allot))
        print(f"  round {round_ + 1} allocate: {results['allocate'][-1]}", file=sys.stderr)
        peaks.append(allot.peak_rss_mib())
        allot.stop()
        database.stop()

        database = Database()
        allot = Allot(database, args.log_level)  # prepares the same data the same way
        add_stock(allot, allot.admin_token("bench-admin"), skus)
        allot.stop()
        raw = example("raw_allocate", database.uri, "allot_bench", args.alloc_concurrency, seconds, *skus)
        results["raw"].append({"rps": raw["ops_per_sec"], "errors": raw["errors"]})
        print(f"  round {round_ + 1} raw driver: {raw}", file=sys.stderr)
        database.stop()

    report(args, results, hashing, startups, peaks)


def report(args, results, hashing, startups, peaks):
    med = {name: {key: median_of(runs, key) for key in runs[0]} for name, runs in results.items() if runs}
    hello, secret = med["hello"], med["secret"]
    binary_mib = os.path.getsize(ALLOT) / 2**20
    idle_p99 = statistics.median(h["idle_p99_ms"] for h in hashing)
    loaded_p99 = statistics.median(h["loaded_p99_ms"] for h in hashing)
    logins_per_sec = statistics.median(h["logins_per_sec"] for h in hashing)
    budget = [
        ("1. /tests/secret rps ≥ 0.8 × /tests/hello", secret["rps"] / hello["rps"], 0.8, ">="),
        ("1. /tests/secret p99 ≤ 2 × /tests/hello p99", secret["p99_ms"] / hello["p99_ms"], 2.0, "<="),
        ("2. /allocate rps ≥ 0.9 × raw driver", med["allocate"]["rps"] / med["raw"]["rps"], 0.9, ">="),
        ("3. hello p99 under logins ≤ 2 × idle p99", loaded_p99 / idle_p99, 2.0, "<="),
        ("4. peak RSS ≤ 30 MiB", max(peaks), 30.0, "<="),
        ("4. start to /health ≤ 100 ms", statistics.median(startups), 100.0, "<="),
        ("4. release binary ≤ 25 MiB", binary_mib, 25.0, "<="),
    ]
    lines = [f"# allot benchmark — {datetime.datetime.now().isoformat(timespec='seconds')}", "",
             f"Machine: {os.cpu_count()} CPUs. Database: SecantusDB (in-memory, fresh per phase). "
             f"Each figure is the median of {args.repeats} interleaved runs of {args.seconds:g} s; "
             f"wrk -t2 -c{args.connections} (login -c8, allocate -c{args.alloc_concurrency}); "
             f"allot in production config with log.level={args.log_level}.", "",
             "| scenario | requests/s | p50 ms | p99 ms | errors | allot CPU µs/request |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, label in [("hello", "GET /tests/hello"), ("secret", "GET /tests/secret"),
                        ("me", "GET /users/me"), ("login", "POST /users/login"),
                        ("allocate", "POST /allocate"), ("raw", "raw driver: find + conditional update")]:
        m = med[name]
        lines.append(f"| {label} | {m['rps']:.0f} | {m.get('p50_ms', float('nan')):.2f} | "
                     f"{m.get('p99_ms', float('nan')):.2f} | {m['errors']:.0f} | "
                     f"{m.get('cpu_us', float('nan')):.1f} |")
    lines += ["", f"Authentication's CPU cost per request (steal-proof): secret/hello = "
              f"{secret['cpu_us'] / hello['cpu_us']:.2f}.",
              "", f"Hashing: /tests/hello at 500 req/s, p99 idle {idle_p99:.2f} ms, "
              f"while logins run flat out {loaded_p99:.2f} ms; logins/s {logins_per_sec:.1f}.",
              f"Peak RSS {max(peaks):.1f} MiB (per instance: {', '.join(f'{p:.1f}' for p in peaks)}); "
              f"start to /health median {statistics.median(startups):.1f} ms; binary {binary_mib:.1f} MiB.", "",
              "| budget | measured | limit | verdict |", "|---|---:|---:|---|"]
    failed = False
    for label, value, limit, op in budget:
        ok = value >= limit if op == ">=" else value <= limit
        failed |= not ok
        lines.append(f"| {label} | {value:.2f} | {limit:g} | {'PASS' if ok else 'FAIL'} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as out:
        out.write(text)
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
