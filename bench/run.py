"""allot's performance benchmark. Run it through bench/run, which installs and builds first.

Each budget line of the performance issue is measured as a ratio within one run:
  1. auth cost: /tests/secret vs /tests/hello on the same instance (rps, p99);
     the request path's floor: /tests/secret vs bare poem serving the same
     /tests/hello JSON (examples/floor.rs), interleaved (rps, CPU per request);
  2. allocation: POST /allocate vs the same round trips issued straight from the
     MongoDB driver (examples/raw_allocate.rs), each on a fresh database;
  3. hashing: /tests/hello p99 at a fixed rate, idle vs while logins run flat out,
     a fresh database and instance each round, the floor probed alike as reference;
  4. peak RSS, start-up time to /health, release binary size;
  5. growth: one sku whose batches already hold 0, 5,000 and 20,000 lines
     (preloaded straight into the database), sequential POST /allocate vs the
     raw driver on the same state: allot's CPU per allocation must stay flat and
     no document may grow with the number of lines;
  6. hot sku: 200 concurrent buyers of one sku must all get 201, and the stock
     must add up afterwards;
  7. observability: what metrics (metrics.enabled) and request ids
     (log.request_ids) cost per request: GET /tests/hello on instances with both
     on and both off, interleaved, at log level warn and info (allot's CPU per
     request from schedstat);
  8. allocation at the database's limit (issue 17): POST /allocate on allot vs
     bench/original, the original Flask service's allocation (one find, one
     findAndModify that pushes the line into the batch) under gunicorn with 2 sync
     workers, the same wrk load on each, a fresh database and stock per run:
     allocations/s, p99, server CPU and database commands (serverStatus) per allocation.
Scenarios are interleaved and repeated; medians are reported. Phases can be
chosen with --only / --skip: http (1, 3, 4), allocate (2), growth (5), hot-sku (6),
observability (7), original (8).
"""

import argparse
import concurrent.futures
import contextlib
import datetime
from http.client import HTTPConnection, HTTPException
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pymongo
from bson import Int64, ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")
# BENCH_ALLOT / BENCH_ALLOT_CWD: measure another allot build (e.g. an older version's, run
# from its own checkout for its config/); the examples still come from TARGET.
ALLOT = os.environ.get("BENCH_ALLOT") or os.path.join(TARGET, "release/allot")
ALLOT_CWD = os.environ.get("BENCH_ALLOT_CWD") or ROOT
EXAMPLES = os.path.join(TARGET, "release/examples")
PHASES = ["http", "allocate", "growth", "hot-sku", "observability", "original"]
SECANTUSD = os.path.join(ROOT, ".venv/bin/secantusd-py")
GUNICORN = os.path.join(ROOT, ".venv/bin/gunicorn")
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


class Measured:
    """A server process whose CPU and memory are read from /proc."""

    process: subprocess.Popen

    def start(self, command, ready_url, **popen):
        """Starts the server and waits until `ready_url` answers 200 (start-up time)."""
        started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, **popen)
        while True:
            try:
                if http("GET", ready_url)[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited at start-up")
            time.sleep(0.001)
        self.startup_ms = (time.perf_counter() - started) * 1000

    def cpu_seconds(self):
        """User + system CPU time the process has used (steal time is not counted)."""
        return sum(self._cpu_ticks()) / os.sysconf("SC_CLK_TCK")

    def kernel_seconds(self):
        """The system (kernel) part of cpu_seconds."""
        return self._cpu_ticks()[1] / os.sysconf("SC_CLK_TCK")

    def _cpu_ticks(self):
        """User and system clock ticks, from /proc/<pid>/stat."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])

    def cpu_seconds_precise(self):
        """The same, in nanoseconds rather than 10 ms clock ticks: the sum of the
        threads' run time from /proc/<pid>/task/*/schedstat, over the processes of
        pids() (threads that exit meanwhile take theirs with them; allot's runtime
        threads do not)."""
        total = 0
        for pid in self.pids():
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except FileNotFoundError:
                continue
            for task in tasks:
                try:
                    with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
                        total += int(schedstat.read().split()[0])
                except (FileNotFoundError, ProcessLookupError):
                    pass
        return total / 1e9

    def pids(self):
        """The processes whose CPU is the server's."""
        return [self.process.pid]

    def context_switches(self):
        """Voluntary and involuntary context switches of all its threads so far."""
        voluntary = involuntary = 0
        for task in os.listdir(f"/proc/{self.process.pid}/task"):
            try:
                with open(f"/proc/{self.process.pid}/task/{task}/status") as status:
                    text = status.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            voluntary += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
            involuntary += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        return voluntary, involuntary

    def peak_rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            kib = int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1))
        return kib / 1024

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()


class Database(Measured):
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


class Allot(Measured):
    """The release binary in production configuration on a free port."""

    def __init__(self, database, log_level, **settings):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, ALLOT_ENV="production", ALLOT__AUTH__JWT_SECRET=SECRET,
                        ALLOT__MONGO__URI=database.uri, ALLOT__MONGO__DATABASE="allot_bench",
                        ALLOT__HTTP__HOST="127.0.0.1", ALLOT__HTTP__PORT=str(self.port),
                        ALLOT__LOG__LEVEL=log_level, ALLOT_ADMIN_PASSWORD=PASSWORD, **settings)
        self.start([ALLOT, "serve"], self.base + "/health", env=self.env, cwd=ALLOT_CWD)

    def user_token(self, username):
        status, body = http("POST", self.base + "/users/registration",
                            {"username": username, "password": PASSWORD})
        assert status == 201, body
        return body["access_token"]

    def admin_token(self, username):
        subprocess.run([ALLOT, "users", "create-admin", "--username", username],
                       env=self.env, cwd=ALLOT_CWD, check=True, stdout=subprocess.DEVNULL)
        status, body = http("POST", self.base + "/users/login",
                            {"username": username, "password": PASSWORD})
        assert status == 200, body
        return body["access_token"]


class Original(Measured):
    """bench/original: the original Flask allocation service under gunicorn, on a free port."""

    def __init__(self, database, workers=2):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, MONGO_URI=database.uri, MONGO_DATABASE=ORIGINAL_DB)
        self.start([GUNICORN, "--workers", str(workers), "--worker-class", "sync", "--log-level", "warning",
                    "--bind", f"127.0.0.1:{self.port}", "--chdir", os.path.join(ROOT, "bench/original"), "app:app"],
                   self.base + "/health", env=env)

    def pids(self):
        """gunicorn's master and its workers: the processes whose parent is in the tree
        (from /proc/*/stat; this kernel has no /proc/<pid>/task/<tid>/children)."""
        parents = {}
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass
        tree = [self.process.pid]
        for pid in tree:  # grows while it is walked
            tree += [child for child, parent in parents.items() if parent == pid]
        return tree


class Floor(Measured):
    """examples/floor: bare poem serving allot's /tests/hello, on a free port."""

    def __init__(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.start([os.path.join(EXAMPLES, "floor"), str(self.port)], self.base + "/tests/hello")


@contextlib.contextmanager
def login_flood(allot, seconds):
    """`wrk -t1 -c8` logging bench-user in flat out for `seconds`, entered once it has
    run for 1 s; the dict it gives holds the flood's logins_per_sec when it has ended."""
    login = json.dumps({"username": "bench-user", "password": PASSWORD})
    flood = {}
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua, tempfile.TemporaryFile("w+") as out:
        lua.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(login)}\n'
                  'wrk.headers["Content-Type"] = "application/json"\n')
        lua.flush()
        load = subprocess.Popen(["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", lua.name,
                                 allot.base + "/users/login"], stdout=out, text=True)
        try:
            time.sleep(1)
            yield flood
        finally:
            load.wait()
        out.seek(0)
        flood["logins_per_sec"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out.read()).group(1))


def hashing_round(log_level, seconds, floor, peaks):
    """Budget 3's measurement: GET /tests/hello at 500/s (examples/probe), idle and while
    `wrk -c8` logs one user in flat out, on a database and an instance of its own. By this
    point phase 1's shared database has taken thousands of login writes, and SecantusDB
    slows down for good after about 10k updates; a login writes three times (issue 20),
    so later rounds would measure the database's decline rather than allot. The floor
    (bare poem, another process) is probed the same way under the same flood, as the
    reference for what the machine itself does to a server's p99 while logins hash and
    the database runs on the same cores."""
    database = Database()
    allot = Allot(database, log_level)
    try:
        allot.user_token("bench-user")
        idle = example("probe", allot.base + "/tests/hello", 500, seconds)
        floor_idle = example("probe", floor.base + "/tests/hello", 500, seconds)
        with login_flood(allot, 2 * seconds + 3) as flood:
            loaded = example("probe", allot.base + "/tests/hello", 500, seconds)
            floor_loaded = example("probe", floor.base + "/tests/hello", 500, seconds)
        peaks.append(allot.peak_rss_mib())
    finally:
        allot.stop()
        database.stop()
    round_ = {"idle_p99_ms": idle["p99_ms"], "loaded_p99_ms": loaded["p99_ms"],
              "floor_idle_p99_ms": floor_idle["p99_ms"], "floor_loaded_p99_ms": floor_loaded["p99_ms"],
              "logins_per_sec": flood["logins_per_sec"],
              "errors": idle["errors"] + loaded["errors"] + floor_idle["errors"] + floor_loaded["errors"]}
    print(f"  hashing: {round_}", file=sys.stderr)
    return round_


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
    created = re.search(r"^201 responses: (\d+)$", out, re.M)  # from allocate.lua, when asked
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "p50_ms": latency(50), "p99_ms": latency(99), "errors": errors, "requests": requests,
              "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0}
    if created:
        result["created"] = int(created.group(1))
    if server:
        result["cpu_us"] = cpu_used * 1e6 / max(requests, 1)
    return result


def example(name, *args, env=None):
    out = subprocess.run([os.path.join(EXAMPLES, name), *map(str, args)],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, **(env or {}))).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_of(runs, key):
    return statistics.median(run[key] for run in runs)


def percentile(values, percent):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[int(rank) - 1]


# --- data straight in the database (growth preload, checks, document sizes) ---

def mongo(database):
    return pymongo.MongoClient(database.uri)["allot_bench"]


def new_layout(db):
    """Whether allot recorded the order_lines layout (allot_meta); else 0.1's embedded lines."""
    return db["allot_meta"].find_one({"_id": "layout"}) is not None


def preload_lines(database, sku, batchref, count, chunk=2000):
    """Gives batch `batchref` `count` allocated lines of one unit each, written straight
    into the database in the layout allot uses, with the batch's counters to match."""
    db = mongo(database)
    now = datetime.datetime.now(datetime.timezone.utc)
    started = time.perf_counter()
    if new_layout(db):
        for first in range(0, count, chunk):
            db["order_lines"].insert_many([
                {"_id": ObjectId(), "orderid": f"pre-{n}", "sku": sku, "qty": Int64(1),
                 "status": "allocated", "batchref": batchref, "batch_seq": Int64(n + 1),
                 "acknowledged_at": now}
                for n in range(first, min(first + chunk, count))])
        if count:
            db["batches"].update_one({"_id": batchref}, {"$inc": {
                "available_quantity": Int64(-count), "version": Int64(count), "allocation_seq": Int64(count)}})
    else:
        for first in range(0, count, chunk):
            n = min(first + chunk, count) - first
            db["batches"].update_one({"_id": batchref}, {
                "$push": {"allocations": {"$each": [{"orderid": f"pre-{k}", "qty": Int64(1)}
                                                    for k in range(first, first + n)]}},
                "$inc": {"available_quantity": Int64(-n), "version": Int64(n)}})
    db.client.close()
    return time.perf_counter() - started


def document_sizes(database, sku):
    """BSON sizes (bytes) of the sku's largest batch document and of one of its order lines."""
    db = mongo(database)
    raw = CodecOptions(document_class=RawBSONDocument)
    batch = max((len(d.raw) for d in db.get_collection("batches", codec_options=raw).find({"sku": sku})),
                default=0)
    line = db.get_collection("order_lines", codec_options=raw).find_one({"sku": sku})
    db.client.close()
    return batch, len(line.raw) if line else 0


def stock_check(database, sku):
    """Per batch of the sku: purchased, available and what its lines hold; and the count of lines."""
    db = mongo(database)
    batches = list(db["batches"].find({"sku": sku}))
    held, lines = {}, 0
    if new_layout(db):
        for line in db["order_lines"].find({"sku": sku}):
            lines += 1
            if line.get("status") == "allocated":
                held[line["batchref"]] = held.get(line["batchref"], 0) + line["qty"]
    else:
        for batch in batches:
            allocations = batch.get("allocations", [])
            lines += len(allocations)
            held[batch["_id"]] = sum(a["qty"] for a in allocations)
    db.client.close()
    rows = [{"reference": b["_id"], "purchased": b["purchased_quantity"], "available": b["available_quantity"],
             "held": held.get(b["_id"], 0)} for b in batches]
    return rows, lines


class Connection:
    """One keep-alive HTTP connection to allot (what wrk does, unlike urllib)."""

    def __init__(self, allot, token, timeout=120):
        self.connection = HTTPConnection("127.0.0.1", allot.port, timeout=timeout)
        self.connection.connect()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def allocate(self, orderid, sku, qty=1):
        """POST /allocate; returns the status and the seconds it took."""
        body = json.dumps({"orderid": orderid, "sku": sku, "qty": qty})
        started = time.perf_counter()
        self.connection.request("POST", "/allocate", body=body, headers=self.headers)
        response = self.connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started

    def close(self):
        self.connection.close()


# --- phase 5: growth ---

GROWTH_SKU = "growth-sku"
WARMUP = 10


def growth_stock(allot, token):
    """Three batches of the growth sku with plenty of stock; the first (in the
    warehouse) is the one every allocation draws from."""
    references = []
    for n, eta in enumerate([None, "2030-01-01", "2031-01-01"]):
        reference = f"{GROWTH_SKU}-b{n}"
        status, body = http("POST", allot.base + "/batches",
                            {"reference": reference, "sku": GROWTH_SKU,
                             "purchased_quantity": 1_000_000, "eta": eta}, token)
        assert status == 201, body
        references.append(reference)
    return references


def growth_allot(args, size, idle_seconds=0):
    database = Database()
    allot = Allot(database, args.log_level)
    try:
        references = growth_stock(allot, allot.admin_token("bench-admin"))
        preload_s = preload_lines(database, GROWTH_SKU, references[0], size)
        connection = Connection(allot, allot.user_token("bench-buyer"))
        for n in range(WARMUP):
            connection.allocate(f"warm-{n}", GROWTH_SKU)
        idle_us_per_s = float("nan")
        if idle_seconds:
            before = allot.cpu_seconds_precise()
            time.sleep(idle_seconds)
            idle_us_per_s = (allot.cpu_seconds_precise() - before) * 1e6 / idle_seconds
        latencies, errors = [], 0
        ticks_before, cpu_before = allot.cpu_seconds(), allot.cpu_seconds_precise()
        switches_before = allot.context_switches()
        started = time.perf_counter()
        for n in range(args.growth_requests):
            status, seconds = connection.allocate(f"growth-{n}", GROWTH_SKU)
            latencies.append(seconds * 1000)
            errors += status != 201
        elapsed = time.perf_counter() - started
        cpu_us = (allot.cpu_seconds_precise() - cpu_before) * 1e6 / args.growth_requests
        ticks_us = (allot.cpu_seconds() - ticks_before) * 1e6 / args.growth_requests
        voluntary, involuntary = (round((after - before) / args.growth_requests, 1)
                                  for after, before in zip(allot.context_switches(), switches_before))
        connection.close()
        batch_bytes, line_bytes = document_sizes(database, GROWTH_SKU)
        return {"size": size, "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
                "rps": args.growth_requests / elapsed, "cpu_us": cpu_us, "ticks_cpu_us": ticks_us, "errors": errors,
                "switches_voluntary": voluntary, "switches_involuntary": involuntary,
                "batch_bytes": batch_bytes, "line_bytes": line_bytes, "preload_s": preload_s,
                "idle_us_per_s": idle_us_per_s, "startup_ms": allot.startup_ms, "peak_mib": allot.peak_rss_mib()}
    finally:
        allot.stop()
        database.stop()


def growth_raw(args, size):
    database = Database()
    allot = Allot(database, args.log_level)  # prepares the same data the same way
    try:
        references = growth_stock(allot, allot.admin_token("bench-admin"))
    finally:
        allot.stop()
    try:
        preload_lines(database, GROWTH_SKU, references[0], size)
        raw = example("raw_allocate", database.uri, "allot_bench", 1, 3600, GROWTH_SKU,
                      env={"RAW_ALLOCATE_MAX_OPS": str(WARMUP + args.growth_requests)})
        return {"size": size, "p50_ms": raw["p50_ms"], "p99_ms": raw["p99_ms"], "rps": raw["ops_per_sec"],
                "cpu_us": raw["cpu_us_per_op"], "errors": raw["errors"]}
    finally:
        database.stop()


# --- phase 6: hot sku ---

HOT_SKU = "hot-sku"


def hot_sku(args):
    """`--hot-buyers` buyers of one sku at once, one request each; the sku's two
    batches (half the buyers' worth in the warehouse, all of it later) can serve them all."""
    buyers = args.hot_buyers
    database = Database()
    allot = Allot(database, args.log_level)
    try:
        admin = allot.admin_token("bench-admin")
        for n, (eta, qty) in enumerate([(None, buyers // 2), ("2030-01-01", buyers)]):
            status, body = http("POST", allot.base + "/batches",
                                {"reference": f"{HOT_SKU}-b{n}", "sku": HOT_SKU,
                                 "purchased_quantity": qty, "eta": eta}, admin)
            assert status == 201, body
        token = allot.user_token("bench-buyer")
        barrier = threading.Barrier(buyers + 1)
        answers = [None] * buyers

        def buy(n):
            try:
                connection = Connection(allot, token)
            except OSError as error:
                barrier.wait()
                answers[n] = (f"connect: {error}", 0.0)
                return
            barrier.wait()
            try:
                answers[n] = connection.allocate(f"hot-{n}", HOT_SKU)
            except (OSError, HTTPException) as error:
                answers[n] = (f"{type(error).__name__}", 0.0)
            connection.close()

        threads = [threading.Thread(target=buy, args=(n,)) for n in range(buyers)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # let allot accept every connection before the clock starts
        barrier.wait()
        cpu_before = allot.cpu_seconds_precise()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu_used = allot.cpu_seconds_precise() - cpu_before
        statuses = {}
        for status, _ in answers:
            statuses[status] = statuses.get(status, 0) + 1
        latencies = [seconds * 1000 for status, seconds in answers if status == 201]
        rows, lines = stock_check(database, HOT_SKU)
        off = [row for row in rows if row["purchased"] - row["available"] != row["held"]]
        created = statuses.get(201, 0)
        return {"buyers": buyers, "elapsed_s": elapsed, "statuses": statuses, "created": created,
                "allocs_per_s": created / elapsed,
                "unavailable": statuses.get(503, 0), "cpu_us": cpu_used * 1e6 / max(created, 1),
                "p50_ms": percentile(latencies, 50), "max_ms": max(latencies, default=float("nan")),
                "lines": lines, "batches": rows, "batches_off": len(off) + (lines != created),
                "startup_ms": allot.startup_ms, "peak_mib": allot.peak_rss_mib()}
    finally:
        allot.stop()
        database.stop()


# --- phase 8: allocation at the database's limit, allot vs the original service ---

ORIGINAL_DB = "original_bench"
ORIGINAL_SKUS = [f"sku-{n:03}" for n in range(20)]
OPCOUNTERS = ["insert", "query", "update", "delete", "getmore", "command"]


def units_taken(database, name):
    """Stock taken from every batch (purchased - available): with qty 1, the allocations
    the server made, those whose answer wrk no longer read included."""
    client = pymongo.MongoClient(database.uri)
    taken = sum(b["purchased_quantity"] - b["available_quantity"] for b in client[name]["batches"].find())
    client.close()
    return taken


def allocation_run(args, side):
    """One run of `side` (allot or original) on a fresh database with fresh stock: wrk
    with allocate.lua, the server's CPU (its process tree) and the database's commands
    (serverStatus opcounters, less those of the reads themselves) per allocation made."""
    database = Database()
    server = Allot(database, args.log_level) if side == "allot" else Original(database)
    try:
        if side == "allot":
            add_stock(server, server.admin_token("bench-admin"), ORIGINAL_SKUS)
            token, name = server.user_token("bench-allocator"), "allot_bench"
        else:
            add_stock(server, None, ORIGINAL_SKUS)  # the reference checks no token
            token, name = "none", ORIGINAL_DB
        env = dict(os.environ, ALLOT_TOKEN=token, ALLOT_SKUS=",".join(ORIGINAL_SKUS), ALLOT_COUNT_201="1")
        client = pymongo.MongoClient(database.uri, heartbeatFrequencyMS=3_600_000)

        def opcounters():
            return client.admin.command("serverStatus")["opcounters"]

        opcounters()  # connects
        first, before = opcounters(), opcounters()
        own = {key: before[key] - first[key] for key in OPCOUNTERS}  # what one serverStatus read counts
        cpu_before = server.cpu_seconds_precise()
        result = wrk(server.base + "/allocate", int(args.original_seconds), args.original_connections,
                     script="allocate.lua", env=env)
        time.sleep(1)  # the requests wrk left in flight finish
        cpu_used = server.cpu_seconds_precise() - cpu_before
        after = opcounters()
        client.close()
        made = units_taken(database, name)
        ops = {key: after[key] - before[key] - own[key] for key in OPCOUNTERS}
        created = result["created"]
        return {"allocs_per_s": result["rps"] * created / max(result["requests"], 1), "created": created,
                "non201": result["requests"] - created, "socket_errors": result["socket_errors"], "made": made,
                "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "cpu_us": cpu_used * 1e6 / max(made, 1),
                "db_ops": sum(ops.values()) / max(made, 1),
                **{f"db_{key}": ops[key] / max(made, 1) for key in OPCOUNTERS}}
    finally:
        server.stop()
        database.stop()


def original_vs_allot(args):
    print(f"phase 8: allocation at the database's limit, allot vs the original service, "
          f"wrk -c{args.original_connections}, {len(ORIGINAL_SKUS)} skus", file=sys.stderr)
    runs = {"allot": [], "original": []}
    for round_ in range(args.repeats):
        for side, results in runs.items():
            results.append(allocation_run(args, side))
            print(f"  round {round_ + 1} {side}: {results[-1]}", file=sys.stderr)
    return {side: {key: median_of(r, key) for key in r[0]} for side, r in runs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5, help="length of each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of interleaved measurements")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for HTTP scenarios")
    parser.add_argument("--alloc-concurrency", type=int, default=16,
                        help="concurrent allocations (wrk connections and raw-driver tasks)")
    parser.add_argument("--log-level", default="warn", help="allot's log.level during the run")
    parser.add_argument("--only", default=",".join(PHASES), metavar="PHASES",
                        help=f"comma-separated phases to run, of: {', '.join(PHASES)} (default: all)")
    parser.add_argument("--skip", default="", metavar="PHASES", help="comma-separated phases not to run")
    parser.add_argument("--growth-sizes", default="0,5000,20000", metavar="N,N,...",
                        help="lines the growth sku already holds, one fresh database each (first and last are compared)")
    parser.add_argument("--growth-requests", type=int, default=200,
                        help="sequential POST /allocate (and raw-driver allocations) per growth size")
    parser.add_argument("--growth-repeats", type=int, default=1, help="rounds of the growth phase (medians)")
    parser.add_argument("--hot-buyers", type=int, default=200, help="concurrent buyers of the hot sku")
    parser.add_argument("--original-seconds", type=float, default=10,
                        help="length of each run of the original phase (allot vs the original service)")
    parser.add_argument("--original-connections", type=int, default=32,
                        help="wrk connections of the original phase")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench/results/latest.md"))
    args = parser.parse_args()
    chosen = {p.strip() for p in args.only.split(",") if p.strip()} - {p.strip() for p in args.skip.split(",")}
    unknown = chosen - set(PHASES)
    if unknown or not chosen:
        parser.error(f"unknown or no phases: {', '.join(sorted(unknown)) or '(none)'}; choose from {', '.join(PHASES)}")
    args.phases = [p for p in PHASES if p in chosen]
    args.growth_sizes = [int(n) for n in args.growth_sizes.split(",")]
    seconds = int(args.seconds)
    results = {name: [] for name in ["floor", "hello", "secret", "me", "login", "allocate", "raw"]}
    hashing = []
    startups, peaks = [], []
    growth = {"allot": {n: [] for n in args.growth_sizes}, "raw": {n: [] for n in args.growth_sizes}}
    hot = None

    if "http" in args.phases:
        print("phase 1: HTTP scenarios on one instance", file=sys.stderr)
        database = Database()
        allot = Allot(database, args.log_level)
        floor = Floor()
        startups.append(allot.startup_ms)
        token = allot.user_token("bench-user")
        auth = [f"Authorization: Bearer {token}"]
        login = {"username": "bench-user", "password": PASSWORD}
        for round_ in range(args.repeats):
            for name, run in [
                ("floor", lambda: wrk(floor.base + "/tests/hello", seconds, args.connections, server=floor)),
                ("hello", lambda: wrk(allot.base + "/tests/hello", seconds, args.connections, server=allot)),
                ("secret", lambda: wrk(allot.base + "/tests/secret", seconds, args.connections, auth, server=allot)),
                ("me", lambda: wrk(allot.base + "/users/me", seconds, args.connections, auth, server=allot)),
                ("login", lambda: wrk(allot.base + "/users/login", seconds, 8, method="POST",
                                      body=json.dumps(login), server=allot)),
            ]:
                results[name].append(run())
                print(f"  round {round_ + 1} {name}: {results[name][-1]}", file=sys.stderr)
            hashing.append(hashing_round(args.log_level, seconds, floor, peaks))
        peaks.append(allot.peak_rss_mib())
        allot.stop()
        floor.stop()
        database.stop()

    if "allocate" in args.phases:
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
            results["raw"].append({"rps": raw["ops_per_sec"], "p50_ms": raw.get("p50_ms", float("nan")),
                                   "p99_ms": raw.get("p99_ms", float("nan")), "errors": raw["errors"],
                                   "cpu_us": raw.get("cpu_us_per_op", float("nan"))})
            print(f"  round {round_ + 1} raw driver: {raw}", file=sys.stderr)
            database.stop()

    if "growth" in args.phases:
        print(f"phase 5: growth, one sku holding {args.growth_sizes} lines, "
              f"{args.growth_requests} sequential allocations, allot vs the raw driver", file=sys.stderr)
        for round_ in range(args.growth_repeats):
            # Every other round runs the sizes the other way, so drift in the machine's load
            # does not read as growth.
            for size in args.growth_sizes[::-1] if round_ % 2 else args.growth_sizes:
                run = growth_allot(args, size, idle_seconds=3)
                growth["allot"][size].append(run)
                startups.append(run["startup_ms"])
                peaks.append(run["peak_mib"])
                print(f"  round {round_ + 1} {size} lines, allot: {run}", file=sys.stderr)
                raw = growth_raw(args, size)
                growth["raw"][size].append(raw)
                print(f"  round {round_ + 1} {size} lines, raw driver: {raw}", file=sys.stderr)

    if "hot-sku" in args.phases:
        print(f"phase 6: hot sku, {args.hot_buyers} concurrent buyers", file=sys.stderr)
        hot = hot_sku(args)
        startups.append(hot["startup_ms"])
        peaks.append(hot["peak_mib"])
        print(f"  hot sku: {hot}", file=sys.stderr)

    observability = observability_cost(args) if "observability" in args.phases else None
    original = original_vs_allot(args) if "original" in args.phases else None

    report(args, results, hashing, startups, peaks, growth, hot, observability, original)


OBSERVABILITY = {"on": {}, "off": {"ALLOT__METRICS__ENABLED": "false", "ALLOT__LOG__REQUEST_IDS": "false"}}


def observability_cost(args):
    """CPU per GET /tests/hello with metrics and request ids on and off, per log level."""
    print("phase 7: the cost of metrics and request ids per request", file=sys.stderr)
    seconds = int(args.seconds)
    database = Database()
    levels = sorted({args.log_level, "info"})
    runs = {(level, side): [] for level in levels for side in OBSERVABILITY}
    instances = {key: Allot(database, key[0], **OBSERVABILITY[key[1]]) for key in runs}
    for round_ in range(args.repeats):
        for key, allot in instances.items():
            before = allot.cpu_seconds_precise()
            result = wrk(allot.base + "/tests/hello", seconds, args.connections, server=allot)
            requests = result["rps"] * seconds
            result["cpu_us"] = (allot.cpu_seconds_precise() - before) * 1e6 / max(requests, 1)
            runs[key].append(result)
            print(f"  round {round_ + 1} log {key[0]}, metrics and request ids {key[1]}: {result}", file=sys.stderr)
    for allot in instances.values():
        allot.stop()
    database.stop()
    return {key: {k: median_of(r, k) for k in r[0]} for key, r in runs.items()}


def report(args, results, hashing, startups, peaks, growth, hot, observability=None, original=None):
    med = {name: {key: median_of(runs, key) for key in runs[0]} for name, runs in results.items() if runs}
    binary_mib = os.path.getsize(ALLOT) / 2**20
    budget = []
    lines = [f"# allot benchmark — {datetime.datetime.now().isoformat(timespec='seconds')}", "",
             f"Machine: {os.cpu_count()} CPUs. Database: SecantusDB (in-memory, fresh per phase). "
             f"Phases: {', '.join(args.phases)}. "
             f"Each HTTP/allocate figure is the median of {args.repeats} interleaved runs of {args.seconds:g} s; "
             f"wrk -t2 -c{args.connections} (login -c8, allocate -c{args.alloc_concurrency}); "
             f"allot in production config with log.level={args.log_level}.", ""]
    if med:
        lines += ["| scenario | requests/s | p50 ms | p99 ms | errors | allot CPU µs/request |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, label in [("floor", "floor: bare poem, GET /tests/hello"),
                            ("hello", "GET /tests/hello"), ("secret", "GET /tests/secret"),
                            ("me", "GET /users/me"), ("login", "POST /users/login"),
                            ("allocate", "POST /allocate"),
                            ("raw", "raw driver: transaction (findOneAndUpdate + insertOne + commit); CPU: its own")]:
            if name not in med:
                continue
            m = med[name]
            lines.append(f"| {label} | {m['rps']:.0f} | {m.get('p50_ms', float('nan')):.2f} | "
                         f"{m.get('p99_ms', float('nan')):.2f} | {m['errors']:.0f} | "
                         f"{m.get('cpu_us', float('nan')):.1f} |")
        lines.append("")
    if "hello" in med:
        hello, secret = med["hello"], med["secret"]
        idle_p99 = statistics.median(h["idle_p99_ms"] for h in hashing)
        loaded_p99 = statistics.median(h["loaded_p99_ms"] for h in hashing)
        logins_per_sec = statistics.median(h["logins_per_sec"] for h in hashing)
        floor_ratio = (statistics.median(h["floor_loaded_p99_ms"] for h in hashing)
                       / statistics.median(h["floor_idle_p99_ms"] for h in hashing))
        floor = med["floor"]
        budget += [
            ("1. /tests/secret rps ≥ 0.8 × the floor's", secret["rps"] / floor["rps"], 0.8, ">="),
            ("1. /tests/secret CPU per request ≤ 1.3 × the floor's", secret["cpu_us"] / floor["cpu_us"], 1.3, "<="),
            ("1. /tests/secret rps ≥ 0.8 × /tests/hello", secret["rps"] / hello["rps"], 0.8, ">="),
            ("1. /tests/secret p99 ≤ 2 × /tests/hello p99", secret["p99_ms"] / hello["p99_ms"], 2.0, "<="),
        ]
        lines += [f"CPU per request (steal-proof): secret/hello = {secret['cpu_us'] / hello['cpu_us']:.2f} "
                  f"(authentication's cost), hello/floor = {hello['cpu_us'] / floor['cpu_us']:.2f} and "
                  f"secret/floor = {secret['cpu_us'] / floor['cpu_us']:.2f} (the request path's cost over bare poem). "
                  f"Throughput: hello/floor = {hello['rps'] / floor['rps']:.2f}, "
                  f"secret/floor = {secret['rps'] / floor['rps']:.2f}.", "",
                  f"Hashing: /tests/hello at 500 req/s, p99 idle {idle_p99:.2f} ms, "
                  f"while logins run flat out {loaded_p99:.2f} ms; logins/s {logins_per_sec:.1f} "
                  f"(a database and an instance of their own each round). The floor, another process "
                  f"probed the same way under the same flood: p99 ratio {floor_ratio:.2f} (the machine's "
                  f"share: the hashing thread and the database on the same {os.cpu_count()} cores).", ""]
    if "allocate" in med:
        budget.append(("2. /allocate rps ≥ 0.9 × raw driver", med["allocate"]["rps"] / med["raw"]["rps"], 0.9, ">="))
    if "hello" in med:
        budget.append(("3. hello p99 under logins ≤ 2 × idle p99", loaded_p99 / idle_p99, 2.0, "<="))

    sizes = args.growth_sizes
    if "growth" in args.phases:
        g = {side: {n: {key: median_of(runs, key) for key in runs[0]} for n, runs in by_size.items()}
             for side, by_size in growth.items()}
        lines += [f"Growth (phase 5): sku `{GROWTH_SKU}` with 3 batches; the preferred one already holds N lines "
                  f"(preloaded straight into the database); {args.growth_requests} sequential POST /allocate on one "
                  f"keep-alive connection after {WARMUP} warm-up requests, vs raw_allocate (concurrency 1, same "
                  f"transaction) on a database prepared the same way; median of {args.growth_repeats} round(s).", "",
                  "CPU: allot's from /proc/<pid>/task/*/schedstat (in brackets: /proc/<pid>/stat, 10 ms ticks); "
                  "the raw driver's own from getrusage.", "",
                  "| lines held | allot p50 ms | allot p99 ms | allot CPU µs/alloc | raw p50 ms | raw p99 ms | "
                  "raw CPU µs/op | allot/raw p50 | allot/raw CPU | errors (allot/raw) | largest batch doc B | "
                  "order line doc B |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n in sizes:
            a, r = g["allot"][n], g["raw"][n]
            lines.append(f"| {n} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} | {a['cpu_us']:.0f} ({a['ticks_cpu_us']:.0f}) | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us']:.0f} | {a['p50_ms'] / r['p50_ms']:.2f} | "
                         f"{a['cpu_us'] / r['cpu_us']:.2f} | {a['errors']:.0f}/{r['errors']:.0f} | "
                         f"{a['batch_bytes']:.0f} | {a['line_bytes']:.0f} |")
        first, last = sizes[0], sizes[-1]
        a0, a1, r0, r1 = g["allot"][first], g["allot"][last], g["raw"][first], g["raw"][last]
        largest_kib = max(max(a["batch_bytes"], a["line_bytes"]) for a in g["allot"].values()) / 1024
        lines += ["", f"{last} vs {first} lines: allot CPU ×{a1['cpu_us'] / a0['cpu_us']:.2f}, "
                  f"allot p50 ×{a1['p50_ms'] / a0['p50_ms']:.2f}; raw driver CPU ×{r1['cpu_us'] / r0['cpu_us']:.2f}, "
                  f"p50 ×{r1['p50_ms'] / r0['p50_ms']:.2f} (the database's own slow-down). allot's background CPU while idle (recovery and revocation "
                  f"loops): " + ", ".join(f"{g['allot'][n]['idle_us_per_s']:.0f} µs/s at {n}" for n in sizes)
                  + ", included in the figures above. allot's context switches per allocation (voluntary/involuntary): "
                  + ", ".join(f"{g['allot'][n]['switches_voluntary']:.1f}/{g['allot'][n]['switches_involuntary']:.1f} "
                              f"at {n}" for n in sizes) + ".", ""]
        budget += [
            ("5. growth: allot CPU per allocation ≤ 100 µs (worst size)",
             max(a["cpu_us"] for a in g["allot"].values()), 100.0, "<="),
            (f"5. growth: allot CPU per allocation {last}/{first} lines ≤ 1.5", a1["cpu_us"] / a0["cpu_us"], 1.5, "<="),
            ("5. growth: largest document ≤ 4 KiB", largest_kib, 4.0, "<="),
            ("5. growth: failed allocations (allot + raw)",
             sum(a["errors"] for a in g["allot"].values()) + sum(r["errors"] for r in g["raw"].values()), 0, "<="),
        ]
    if hot:
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(hot["statuses"].items(), key=str))
        lines += [f"Hot sku (phase 6): {hot['buyers']} buyers of `{HOT_SKU}` at once (one request each, distinct "
                  f"order ids, one keep-alive connection each). Answers: {statuses}. All answered in "
                  f"{hot['elapsed_s']:.2f} s, {hot['allocs_per_s']:.1f} allocations (201s) per second; p50 of the 201s {hot['p50_ms']:.0f} ms, slowest {hot['max_ms']:.0f} ms; "
                  f"allot CPU {hot['cpu_us']:.1f} µs per allocation. Stock afterwards: "
                  + "; ".join(f"{b['reference']} purchased {b['purchased']}, available {b['available']}, "
                              f"held by lines {b['held']}" for b in hot["batches"])
                  + f"; {hot['lines']} lines stored.", ""]
        budget += [
            (f"6. hot sku: 201 for every one of {hot['buyers']} buyers", hot["created"], hot["buyers"], ">="),
            ("6. hot sku: 503 answers", hot["unavailable"], 0, "<="),
            ("6. hot sku: batches whose stock does not add up (+1 if lines ≠ 201s)", hot["batches_off"], 0, "<="),
        ]
    if observability:
        lines += [f"Observability (phase 7): GET /tests/hello, wrk -c{args.connections}, on instances with metrics "
                  "and request ids both on (the default) and both off (`metrics.enabled=false`, "
                  "`log.request_ids=false`), interleaved; allot CPU per request from schedstat; medians of "
                  f"{args.repeats} rounds. At log level info every request also writes its log line.", "",
                  "| log level | on: requests/s | on: CPU µs/request | off: requests/s | off: CPU µs/request | "
                  "cost µs/request | cost % |", "|---|---:|---:|---:|---:|---:|---:|"]
        for level in sorted({key[0] for key in observability}):
            on, off = observability[(level, "on")], observability[(level, "off")]
            cost = on["cpu_us"] - off["cpu_us"]
            lines.append(f"| {level} | {on['rps']:.0f} | {on['cpu_us']:.1f} | {off['rps']:.0f} | {off['cpu_us']:.1f} | "
                         f"{cost:.1f} | {100 * cost / off['cpu_us']:.1f} |")
        lines.append("")
    if original:
        a, o = original["allot"], original["original"]
        lines += [f"Allocation at the database's limit (phase original, issue 17): POST /allocate "
                  f"(bench/allocate.lua: {len(ORIGINAL_SKUS)} skus, each with a warehouse batch and a later one, "
                  f"qty 1, new order ids) by wrk -t2 -c{args.original_connections} for {args.original_seconds:g} s "
                  "on allot (bearer token) and on bench/original, the original Flask service's allocation (one find "
                  "of the sku's batches, the choice in Python, one findAndModify that takes the stock and pushes "
                  "the line into the batch document; no authentication) under gunicorn with 2 sync workers; "
                  f"interleaved, a fresh database and stock per run, medians of {args.repeats} rounds. "
                  "Allocations/s counts the 201s only. CPU: the server's process tree (gunicorn's master and "
                  "workers) from schedstat; CPU and database commands (SecantusDB serverStatus opcounters, less "
                  "the reads themselves, background work included) per allocation made, i.e. per unit of stock "
                  "taken (each one the server answered 201; wrk's count of 201s misses those it left in "
                  "flight), counted after they finished.", "",
                  "| server | allocations/s | 201s | non-201 | socket errors | allocations made | p50 ms | p99 ms | "
                  "CPU µs/allocation | DB commands/allocation | " + " | ".join(OPCOUNTERS) + " |",
                  "|---|" + "---:|" * (9 + len(OPCOUNTERS))]
        for label, m in [("allot", a), ("original (Flask, gunicorn 2 sync workers)", o)]:
            lines.append(f"| {label} | {m['allocs_per_s']:.1f} | {m['created']:.0f} | {m['non201']:.0f} | "
                         f"{m['socket_errors']:.0f} | {m['made']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                         f"{m['cpu_us']:.0f} | {m['db_ops']:.2f} | "
                         + " | ".join(f"{m['db_' + key]:.2f}" for key in OPCOUNTERS) + " |")
        lines += ["", f"allot/original: allocations/s {a['allocs_per_s'] / o['allocs_per_s']:.2f}, "
                  f"p99 {a['p99_ms'] / o['p99_ms']:.2f}, CPU per allocation {a['cpu_us'] / o['cpu_us']:.2f}.", ""]
        budget += [
            ("17. allot allocations/s ≥ 1.5 × the original's", a["allocs_per_s"] / o["allocs_per_s"], 1.5, ">="),
            ("17. allot p99 ≤ the original's p99", a["p99_ms"] / o["p99_ms"], 1.0, "<="),
            ("17. allot CPU per allocation ≤ 150 µs", a["cpu_us"], 150.0, "<="),
            ("17. allot DB commands per allocation ≤ 1.5", a["db_ops"], 1.5, "<="),
        ]
    if peaks:
        lines += [f"Peak RSS {max(peaks):.1f} MiB (per instance: {', '.join(f'{p:.1f}' for p in peaks)}); "
                  f"start to /health median {statistics.median(startups):.1f} ms; binary {binary_mib:.1f} MiB.", ""]
        budget += [("4. peak RSS ≤ 30 MiB", max(peaks), 30.0, "<="),
                   ("4. start to /health ≤ 100 ms", statistics.median(startups), 100.0, "<=")]
    budget.append(("4. release binary ≤ 25 MiB", binary_mib, 25.0, "<="))
    lines += ["| budget | measured | limit | verdict |", "|---|---:|---:|---|"]
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
