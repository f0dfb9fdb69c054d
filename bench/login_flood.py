#!/usr/bin/env python3
"""Issue 10's measurements: login throughput with throttling on, and
/tests/hello p99 (and a real user's login) during a wrong-password flood.

    .venv/bin/python bench/login_flood.py [--seconds 10]

Uses bench/run.py's helpers: a fresh in-memory SecantusDB, the release binary
(BENCH_ALLOT to use another, e.g. target/debug/allot) in production
configuration, wrk, and examples/probe (built with
`cargo build --release --example probe`). allot trusts 127.0.0.1 as a proxy,
so the real user's requests can come from another client address
(X-Forwarded-For) than the flood's.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py)


def flood_script(random_usernames):
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
    if random_usernames:
        lua.write('counter = 0\nrequest = function()\n  counter = counter + 1\n'
                  '  local body = string.format(\'{"username":"flood-%d-%d","password":"wrong password"}\', '
                  'math.random(1, 1000000000), counter)\n'
                  '  return wrk.format(nil, nil, nil, body)\nend\n')
    else:
        lua.write('wrk.body = \'{"username":"bench-user","password":"wrong password"}\'\n')
    lua.close()
    return lua.name


def real_logins(allot, seconds, out):
    """A real user logging in once a second from another address, timed."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        started = time.perf_counter()
        status, _ = http_from(allot.base + "/users/login", {"username": "bench-user", "password": run.PASSWORD},
                              "203.0.113.10")
        out.append((status, (time.perf_counter() - started) * 1000))
        time.sleep(1)


def http_from(url, body, client):
    import urllib.request
    import urllib.error
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("X-Forwarded-For", client)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def flood(allot, database, seconds, random_usernames):
    script = flood_script(random_usernames)
    wrk_out = tempfile.TemporaryFile("w+")
    load = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{seconds + 2}s", "-s", script,
                             allot.base + "/users/login"], stdout=wrk_out, text=True)
    time.sleep(1)
    logins = []
    user = threading.Thread(target=real_logins, args=(allot, seconds, logins))
    user.start()
    probed = run.example("probe", allot.base + "/tests/hello", 500, seconds)
    user.join()
    load.wait()
    wrk_out.seek(0)
    text = wrk_out.read()
    os.unlink(script)
    rps = float(run.re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    non2xx = run.re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    # How many failures the flood's address has on record (only hashed attempts count).
    address = run.mongo(database)["login_failures"].find_one({"_id": "address:127.0.0.1"}) or {}
    return {"hello_p99_ms": probed["p99_ms"], "hello_errors": probed["errors"], "flood_rps": rps,
            "address_failures_recorded": address.get("count", 0),
            "flood_non2xx": int(non2xx.group(1)) if non2xx else 0,
            "real_logins": [(s, round(ms, 1)) for s, ms in logins]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    results = {}
    for name, env in [("default limits", {}),
                      ("address limit lifted (a botnet: every request from a new address)",
                       {"ALLOT__AUTH__LOGIN_THROTTLE__ADDRESS_FAILURES": "4000000000"})]:
        database = run.Database()
        os.environ.update(env, ALLOT__HTTP__TRUSTED_PROXIES='["127.0.0.1"]')
        allot = run.Allot(database, "error")
        try:
            allot.user_token("bench-user")
            if not results:
                login = json.dumps({"username": "bench-user", "password": run.PASSWORD})
                results["login (right password, wrk -c8)"] = run.wrk(
                    allot.base + "/users/login", args.seconds, 8, method="POST", body=login, server=allot)
                results["hello idle (probe 500/s)"] = run.example("probe", allot.base + "/tests/hello",
                                                                  500, args.seconds)
            results[f"wrong-password flood, one username, {name}"] = flood(allot, database, args.seconds, False)
            results[f"wrong-password flood, random usernames, {name}"] = flood(allot, database, args.seconds, True)
        finally:
            allot.stop()
            database.stop()
            for key in env:
                os.environ.pop(key, None)
    for key, value in results.items():
        print(f"{key}: {json.dumps(value)}")


if __name__ == "__main__":
    main()
