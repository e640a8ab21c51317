"""A client of `metatrain serve`, written from docs/SERVING.md alone (standard library only).

usage:
  serve_client.py check  BASE EVENTS.json ANSWER.json   the answer, bad requests, probes, metrics
  serve_client.py drain  BASE EVENTS.json PID           requests in flight when SIGTERM arrives all finish
  serve_client.py reload BASE EVENTS.json RUNDIR FILE...  answers stay 200 while best.h5 is replaced
  serve_client.py auth   BASE EVENTS.json TOKENFILE     bearer tokens
  serve_client.py idle   BASE SECONDS                   an idle connection is closed

Prints one line per check and exits 1 on the first failure.
"""
import calendar
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def request(base, path, body=None, raw=None, token=None, method=None, timeout=30):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def expect_error(base, what, status, field, **kw):
    code, text, _ = request(base, "/v1/recommend", **kw)
    if code != status:
        fail(f"{what}: status {code}, expected {status}: {text}")
    err = json.loads(text)
    if err.get("field") != field or not err.get("error", "").startswith(field):
        fail(f"{what}: {err}, expected field {field!r}")
    print(f"ok {what}: {code} {err['error']}")


def check(base, events, answer):
    code, text, _ = request(base, "/healthz")
    if code != 200:
        fail(f"/healthz {code}")
    code, text, _ = request(base, "/readyz")
    ready = json.loads(text)
    if code != 200 or not ready.get("ready") or not ready["model"].get("sha256"):
        fail(f"/readyz {code} {text}")
    k = len(answer["items"])
    code, text, _ = request(base, "/v1/recommend", {"events": events, "k": k, "include_seen": False})
    if code != 200:
        fail(f"recommend {code} {text}")
    got = json.loads(text)
    for key in ["adapted", "support_pairs", "unknown_items"]:
        if got[key] != answer[key]:
            fail(f"{key}: {got[key]} vs recommend's {answer[key]}")
    if [(i["item"], i["score"]) for i in got["items"]] != [(i["item"], i["score"]) for i in answer["items"]]:
        fail("items differ from recommend's")
    if got["model"]["sha256"] != ready["model"]["sha256"] or "iteration" not in got["model"]:
        fail(f"model {got['model']}")
    print(f"ok the same {k} courses and scores as recommend --json, adapted={got['adapted']}")
    # Times as unix seconds give the same answer.
    unix = [dict(e, time=calendar.timegm(time.strptime(e["time"], "%Y-%m-%d %H:%M:%S"))) for e in events]
    code, text, _ = request(base, "/v1/recommend", {"events": unix, "k": k})
    if code != 200 or json.loads(text)["items"] != got["items"]:
        fail(f"unix-seconds times: {code} {text[:200]}")
    print("ok unix-seconds times give the same answer")

    # No events at all: popularity, said so (never an error: a learner who has just arrived).
    code, text, _ = request(base, "/v1/recommend", body={"events": [], "k": 3})
    if code != 200 or json.loads(text).get("basis") != "popularity" or len(json.loads(text)["items"]) != 3:
        fail(f"no events: {code} {text[:300]}")
    print("ok no events: popularity")

    catalogue = None
    good = events[:4]
    expect_error(base, "malformed JSON", 400, "body", raw=b'{"events": [')
    expect_error(base, "not an object", 400, "body", raw=b'[1, 2]')
    expect_error(base, "events missing", 400, "events", body={"k": 3})
    expect_error(base, "events not a list", 400, "events", body={"events": "C1"})
    bad = [dict(e) for e in good] + [dict(good[0], time="yesterday")]
    expect_error(base, "a bad time", 400, "events[4].time", body={"events": bad})
    bad = [dict(e) for e in good]
    del bad[3]["item"]
    expect_error(base, "an event without item", 400, "events[3].item", body={"events": bad})
    bad = [dict(e) for e in good]
    bad[2]["item"] = [1]
    expect_error(base, "an item of the wrong type", 400, "events[2].item", body={"events": bad})
    bad = [dict(e) for e in good]
    bad[1] = 7
    expect_error(base, "an event that is not an object", 400, "events[1]", body={"events": bad})
    expect_error(base, "k = 0", 400, "k", body={"events": good, "k": 0})
    expect_error(base, "k as a string", 400, "k", body={"events": good, "k": "5"})
    expect_error(base, "k over the catalogue", 400, "k", body={"events": good, "k": 10 ** 9})
    expect_error(base, "include_seen not a boolean", 400, "include_seen", body={"events": good, "include_seen": "yes"})
    expect_error(base, "an unknown field", 400, "user", body={"events": good, "user": "u1"})
    expect_error(base, "10,001 events", 400, "events", body={"events": [{"item": good[0]["item"], "time": 0}] * 10001})
    expect_error(base, "a body over 1 MiB", 413, "body", raw=b'{"events": [' + b" " * (1 << 20) + b"]}")
    code, text, _ = request(base, "/v1/recommend", method="GET")
    if not 400 <= code < 500:
        fail(f"GET /v1/recommend: {code}")
    code, text, _ = request(base, "/no/such/route")
    if code != 404 or "error" not in json.loads(text):
        fail(f"unknown route: {code} {text}")
    print("ok a wrong method and an unknown route get 4xx JSON")
    code, text, _ = request(base, "/v1/recommend", {"events": [dict(good[0], item="no-such-course")]})
    got = json.loads(text)
    if code != 200 or got["unknown_items"] != 1 or got["adapted"]:
        fail(f"unknown course only: {code} {text[:200]}")
    print("ok a learner with only an unknown course gets popularity, the id counted")

    code, text, _ = request(base, "/metrics")
    for needle in ['metatrain_http_requests_total{route="/v1/recommend",status="200"}',
                   'metatrain_http_requests_total{route="/v1/recommend",status="400"}',
                   "metatrain_http_request_duration_seconds_bucket", "metatrain_adaptation_steps_total",
                   "metatrain_model_iteration", "metatrain_model_loaded_timestamp_seconds"]:
        if needle not in text:
            fail(f"/metrics lacks {needle}:\n{text[:2000]}")
    print("ok /metrics has requests by route and status, latency, adaptation steps, the model")


def drain(base, events, pid):
    results = []
    lock = threading.Lock()

    def one():
        code, text, _ = request(base, "/v1/recommend", {"events": events, "k": 5}, timeout=60)
        with lock:
            results.append(code)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    for t in threads:
        t.join(90)
    if len(results) != 16 or any(c != 200 for c in results):
        fail(f"requests in flight at SIGTERM: {results}")
    print("ok 16 requests in flight at SIGTERM all answered 200")


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def reload(base, events, rundir, files):
    best = os.path.join(rundir, "best.h5")
    known = {sha(f) for f in files}
    answers, problems = [], []
    stop = threading.Event()
    lock = threading.Lock()

    def loop():
        while not stop.is_set():
            code, text, _ = request(base, "/v1/recommend", {"events": events, "k": 5})
            with lock:
                if code != 200:
                    problems.append(f"{code} {text[:200]}")
                else:
                    answers.append(json.loads(text)["model"]["sha256"])

    def serving():
        code, text, _ = request(base, "/readyz")
        return code, json.loads(text)

    def replace(src):
        tmp = os.path.join(rundir, ".best.h5.incoming")
        shutil.copyfile(src, tmp)
        os.replace(tmp, best)

    # The first model (best.h5 is in place) must be serving before the load starts.
    deadline = time.time() + 20
    while time.time() < deadline and serving()[0] != 200:
        time.sleep(0.05)
    if serving()[0] != 200:
        fail(f"no model ready within 20 s: {serving()}")
    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    order = [files[(i + 1) % len(files)] for i in range(2 * len(files))]
    for src in order:
        replace(src)
        want = sha(src)
        deadline = time.time() + 20
        while time.time() < deadline and serving()[1].get("model", {}).get("sha256") != want:
            time.sleep(0.05)
        if serving()[1]["model"]["sha256"] != want:
            fail(f"{src} was not swapped in within 20 s")
        time.sleep(0.2)
    print(f"ok {len(order)} reloads, each served within 20 s")
    # A file that does not read back whole: the old model stays, /readyz says why.
    before = serving()[1]["model"]["sha256"]
    damaged = os.path.join(rundir, ".damaged.h5")
    shutil.copyfile(files[0], damaged)
    import h5py
    with h5py.File(damaged, "r+") as f:
        w = f["model/fc.bias"][...]
        w[0] += 1.0
        f["model/fc.bias"][...] = w
    os.replace(damaged, best)
    deadline = time.time() + 20
    while time.time() < deadline and "best.h5" not in (serving()[1].get("problem") or ""):
        time.sleep(0.05)
    code, state = serving()
    if code != 200 or state["model"]["sha256"] != before or "best.h5" not in (state.get("problem") or ""):
        fail(f"a damaged best.h5: {code} {state}")
    print(f"ok a damaged best.h5 is refused, the old model kept: {state['problem'][:120]}")
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(60)
    if problems:
        fail(f"{len(problems)} requests failed during reloads: {problems[:3]}")
    seen = set(answers)
    if not seen <= known or len(seen) < 2:
        fail(f"answers named {len(seen)} models, {len(seen - known)} unknown")
    print(f"ok {len(answers)} requests during reloads, all 200, naming {len(seen)} of the {len(known)} models")


def auth(base, events, token_file):
    token = open(token_file).read().strip()
    body = {"events": events, "k": 3}
    code, text, headers = request(base, "/v1/recommend", body)
    if code != 401 or json.loads(text)["field"] != "authorization" or "Bearer" not in headers.get("WWW-Authenticate", ""):
        fail(f"no token: {code} {text}")
    code, _, _ = request(base, "/v1/recommend", body, token=token[:-1] + ("x" if token[-1] != "x" else "y"))
    if code != 401:
        fail(f"a wrong token: {code}")
    code, _, _ = request(base, "/metrics")
    if code != 401:
        fail(f"/metrics without a token: {code}")
    code, text, _ = request(base, "/v1/recommend", body, token=token)
    if code != 200:
        fail(f"the right token: {code} {text}")
    for probe in ["/healthz", "/readyz"]:
        code, _, _ = request(base, probe)
        if code != 200:
            fail(f"{probe} without a token: {code}")
    print("ok no token and a wrong token get 401; the right one 200; probes need none")


def idle(base, seconds):
    host, port = base.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(seconds + 20)
    start = time.time()
    try:
        data = s.recv(1)
    except socket.timeout:
        fail("an idle connection stayed open")
    except ConnectionResetError:
        data = b""
    if data != b"":
        fail(f"unexpected bytes {data!r}")
    print(f"ok an idle connection was closed after {time.time() - start:.1f} s")


if __name__ == "__main__":
    mode, base = sys.argv[1], sys.argv[2]
    if mode == "idle":
        idle(base, float(sys.argv[3]))
        sys.exit(0)
    events = json.load(open(sys.argv[3]))
    if mode == "check":
        check(base, events, json.load(open(sys.argv[4])))
    elif mode == "drain":
        drain(base, events, int(sys.argv[4]))
    elif mode == "reload":
        reload(base, events, sys.argv[4], sys.argv[5:])
    elif mode == "auth":
        auth(base, events, sys.argv[4])
    else:
        fail(f"unknown mode {mode}")
