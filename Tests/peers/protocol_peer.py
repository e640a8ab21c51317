#!/usr/bin/env python3
"""A metatrain worker peer written from docs/PROTOCOL.md alone (pyzmq), for the
tests: it checks that the document is the protocol, and it plays the hostile
peers the coordinator must survive.

    protocol_peer.py --connect tcp://127.0.0.1:5555 --data dataset.h5 --mode join
    protocol_peer.py --connect ... --data ... --mode hold --procs 4096 --seconds 60
    protocol_peer.py --connect ... --data ... --mode flood --count 1000
    protocol_peer.py --connect ... --data ... --mode relay --endpoint-file EP

Modes:
  join   join, fetch the weights, check their size against the formula in
         "Implementing a worker" (V from the dataset's n_items), take one work
         unit and check its task count, say goodbye.
  hold   join claiming --procs processes, heartbeat, never answer a unit.
  flood  join, then send --count of each kind of bad message; count the
         weights replies it gets.
  lie    join, and answer every train unit with a result that is wrong in
         one way (--lie): NaN or infinite gradients, the wrong size, 2^62
         tasks, another unit's id, an old version; join again when dropped.
  relay  an honest peer: bind a ROUTER and PUB (endpoint in --endpoint-file)
         for one metatrain worker to compute behind it, and pass every frame
         between that worker and the coordinator decoded and encoded again
         by this file (the bytes must come out the same).
It prints one JSON line of what it saw, and exits 0 when the protocol held.
"""
import argparse
import json
import os
import struct
import sys
import time

MAGIC = b"MTRN"
VERSION = 7
T = {"hello": 1, "welcome": 2, "refuse": 3, "ready": 4, "work": 5, "train_result": 7, "eval_result": 8,
     "fetch_weights": 9, "weights": 10, "heartbeat": 11, "shutdown": 12, "goodbye": 13, "unit_failed": 14}
NAMES = {v: k for k, v in T.items()}


# --- encoding, as "Frames" says: little-endian; string = u32 length + UTF-8; int = i64 ---
def s(x):
    b = x.encode()
    return struct.pack("<I", len(b)) + b


def i64(x):
    return struct.pack("<q", x)


def envelope(kind, run, body=b""):
    return MAGIC + struct.pack("<H", VERSION) + bytes([T[kind]]) + s(run) + body


def hello(name, fingerprint, procs):
    return envelope("hello", "", s(name) + s(fingerprint) + s("") + s("") + i64(procs) + b"\x00")


def floats(values):
    """A float run from a list of numbers, or from its raw float32 bytes."""
    if isinstance(values, (bytes, bytearray)):
        return struct.pack("<I", len(values) // 4) + bytes(values)
    return struct.pack("<I", len(values)) + struct.pack(f"<{len(values)}f", *values)


def train_result(run, unit, version, theta, loss, tasks):
    return envelope("train_result", run, i64(unit) + i64(version) + b"\x00" + floats(theta) + floats([])
                    + struct.pack("<d", loss) + i64(tasks))


# --- decoding ---
class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, n):
        if self.i + n > len(self.b):
            raise ValueError("short frame")
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def i64(self):
        return struct.unpack("<q", self.take(8))[0]

    def f64(self):
        return struct.unpack("<d", self.take(8))[0]

    def string(self):
        return self.take(self.u32()).decode()

    def ints(self):
        return [self.i64() for _ in range(self.u32())]

    def doubles(self):
        n = self.u32()
        return list(struct.unpack(f"<{n}d", self.take(8 * n)))

    def floats(self):
        """A float run as its raw little-endian float32 bytes (read in place, not unpacked)."""
        return self.take(4 * self.u32())

    def payload(self):
        """A payload's fields: (place, first run, second run, offset); in the message, the runs
        are the floats, in shared memory (place 1) their counts."""
        place = self.u8()
        if place == 0:
            return 0, self.floats(), self.floats(), None
        offset = self.i64()
        return 1, self.u32(), self.u32(), offset


def decode(frame):
    """Every field of a message, by the tables of "Frames"; a short field, trailing bytes, an
    unknown type or a bad magic raise ValueError (the message is malformed)."""
    r = Reader(frame)
    if r.take(4) != MAGIC:
        raise ValueError("bad magic")
    version = struct.unpack("<H", r.take(2))[0]
    type_code = r.u8()
    if type_code not in NAMES:
        raise ValueError(f"unknown type {type_code}")
    kind = NAMES[type_code]
    m = {"kind": kind, "run": r.string(), "version_field": version}
    if kind in ("hello", "welcome"):
        if kind == "hello":
            m["name"] = r.string(); m["fingerprint"] = r.string(); m["cpu"] = r.string(); m["blas"] = r.string()
            m["procs"] = r.i64()
        else:
            m["config"] = r.string(); m["weights_version"] = r.i64()
        m["shared"] = r.u8()
        if m["shared"]:
            m["shm_path"] = r.string(); m["shm_token"] = r.string()
    elif kind == "refuse":
        m["reason"] = r.u8(); m["detail"] = r.string()
    elif kind == "work":
        m["id"] = r.i64(); m["unit_kind"] = r.u8(); m["version"] = r.i64()
        m["leaves"] = [r.ints() for _ in range(r.u32())]
    elif kind == "train_result":
        m["id"] = r.i64(); m["version"] = r.i64(); m["payload"] = r.payload()
        m["loss"] = r.f64(); m["tasks"] = r.i64()
    elif kind == "eval_result":
        m["id"] = r.i64(); m["version"] = r.i64()
        m["sums"] = r.doubles(); m["queries"] = r.ints(); m["losses"] = r.doubles()
    elif kind == "weights":
        m["version"] = r.i64(); m["payload"] = r.payload()
        place, a, b, _ = m["payload"]
        m["theta"], m["alpha"] = (len(a) // 4, len(b) // 4) if place == 0 else (a, b)
    elif kind in ("shutdown", "goodbye"):
        m["reason"] = r.string()
    elif kind == "unit_failed":
        m["id"] = r.i64(); m["reason"] = r.string()
    if r.i < len(frame):
        raise ValueError(f"{len(frame) - r.i} trailing bytes")
    return m


# --- encoding every message from its fields (the inverse of decode) ---
def u8(x):
    return bytes([x])


def ints(xs):
    return struct.pack("<I", len(xs)) + b"".join(i64(x) for x in xs)


def doubles(xs):
    return struct.pack("<I", len(xs)) + struct.pack(f"<{len(xs)}d", *xs)


def payload(p):
    place, a, b, offset = p
    if place == 0:
        return u8(0) + floats(a) + floats(b)
    return u8(1) + i64(offset) + struct.pack("<II", a, b)


def encode(m):
    kind = m["kind"]
    if kind in ("hello", "welcome"):
        if kind == "hello":
            body = s(m["name"]) + s(m["fingerprint"]) + s(m["cpu"]) + s(m["blas"]) + i64(m["procs"])
        else:
            body = s(m["config"]) + i64(m["weights_version"])
        body += u8(m["shared"]) + (s(m["shm_path"]) + s(m["shm_token"]) if m["shared"] else b"")
    elif kind == "refuse":
        body = u8(m["reason"]) + s(m["detail"])
    elif kind == "work":
        body = (i64(m["id"]) + u8(m["unit_kind"]) + i64(m["version"]) + struct.pack("<I", len(m["leaves"]))
                + b"".join(ints(leaf) for leaf in m["leaves"]))
    elif kind == "train_result":
        body = i64(m["id"]) + i64(m["version"]) + payload(m["payload"]) + struct.pack("<d", m["loss"]) + i64(m["tasks"])
    elif kind == "eval_result":
        body = i64(m["id"]) + i64(m["version"]) + doubles(m["sums"]) + ints(m["queries"]) + doubles(m["losses"])
    elif kind == "weights":
        body = i64(m["version"]) + payload(m["payload"])
    elif kind in ("shutdown", "goodbye"):
        body = s(m["reason"])
    elif kind == "unit_failed":
        body = i64(m["id"]) + s(m["reason"])
    else:  # ready, fetch_weights, heartbeat
        body = b""
    return MAGIC + struct.pack("<H", m["version_field"]) + u8(T[kind]) + s(m["run"]) + body


def dataset_facts(path):
    import h5py
    with h5py.File(path, "r") as f:
        return int(f.attrs["n_items"]), str(f.attrs["fingerprint"])


def theta_count(config, V):
    E, H = config["model"]["embedding_dim"], config["model"]["hidden_dim"]
    return V * E + 3 * H * E + 3 * H * H + 6 * H + V * H + V


class Peer:
    def __init__(self, endpoint, name):
        import zmq
        self.zmq = zmq
        self.ctx = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        identity = bytes([1 + os.urandom(1)[0] % 255]) + os.urandom(15)  # first byte never zero
        self.dealer.setsockopt(zmq.ROUTING_ID, identity)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.SNDHWM, 0)  # a flood queues rather than fails
        self.dealer.connect(endpoint)
        self.sub = self.ctx.socket(zmq.SUB)
        host, port = endpoint.rsplit(":", 1)
        self.sub.connect(f"{host}:{int(port) + 1}")
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.poller = zmq.Poller()
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)
        self.name, self.run = name, ""
        self.last_sent = 0.0
        self.seen = {"refuse": 0, "weights_replies": 0, "work": 0, "welcome": 0}

    def send(self, frame):
        try:
            self.dealer.send(frame, self.zmq.NOBLOCK)
        except self.zmq.Again:  # no connection (yet): said again later, as a worker does
            pass
        self.last_sent = time.time()

    def receive(self, timeout_ms):
        """(socket, message) pairs waiting (up to timeout_ms for the first)."""
        out = []
        for sock, _ in self.poller.poll(timeout_ms):
            while True:
                try:
                    frames = sock.recv_multipart(self.zmq.NOBLOCK)
                except self.zmq.Again:
                    break
                m = decode(frames[-1])
                if sock is self.dealer:
                    if m["kind"] in self.seen:
                        self.seen[m["kind"]] += 1
                    if m["kind"] == "weights":
                        self.seen["weights_replies"] += 1
                out.append(("dealer" if sock is self.dealer else "sub", m))
        return out

    def join(self, fingerprint, procs, deadline):
        """hello (empty run id) until welcome; returns the welcome."""
        while time.time() < deadline:
            self.send(hello(self.name, fingerprint, procs))
            for _, m in self.receive(1000):
                if m["kind"] == "welcome":
                    self.run = m["run"]
                    return m
                if m["kind"] == "refuse" and m["reason"] != 1:
                    raise SystemExit(f"refused: {m['detail']}")
        raise SystemExit("no welcome")

    def heartbeat_if_idle(self):
        if time.time() - self.last_sent >= 1.0:
            self.send(envelope("heartbeat", self.run))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--mode", choices=["join", "hold", "flood", "lie", "relay"], required=True)
    ap.add_argument("--lie", default="nan", choices=["nan", "inf", "size", "tasks", "other", "version"],
                    help="lie: how every train result it sends is wrong")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--kind", default="all", choices=["all", "result", "unit_failed", "ready", "fetch", "frames", "junk"],
                    help="flood: the one kind of message to send (default: every kind, in turn)")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--name", default="pypeer")
    ap.add_argument("--endpoint-file", help="relay: where to write the endpoint a metatrain worker connects to")
    a = ap.parse_args()
    if a.mode == "relay":
        return relay(a)
    V, fingerprint = dataset_facts(a.data)
    deadline = time.time() + a.seconds
    peer = Peer(a.connect, a.name)
    welcome = peer.join(fingerprint, a.procs, deadline)
    config = json.loads(welcome["config"])
    report = {"mode": a.mode, "run": peer.run}
    peer.send(envelope("ready", peer.run))

    if a.mode == "join":
        # Weights: fetch them and check their size against the documented formula.
        peer.send(envelope("fetch_weights", peer.run))
        weights = unit = None
        while time.time() < deadline and (weights is None or unit is None):
            for where, m in peer.receive(200):
                if m["kind"] == "weights" and where == "dealer":
                    weights = m
                if m["kind"] == "work" and unit is None and m["unit_kind"] == 0:
                    unit = m  # a train unit: its task count is checked
            peer.heartbeat_if_idle()
        if weights is None or unit is None:
            raise SystemExit("no weights or no work")
        want = theta_count(config, V)
        alpha = want if config["maml"]["algorithm"] == "metasgd" else 0
        report.update(theta=weights["theta"], theta_documented=want, alpha=weights["alpha"], alpha_documented=alpha,
                      unit_tasks=sum(len(l) for l in unit["leaves"]), unit_version=unit["version"])
        peer.send(envelope("goodbye", peer.run, s("protocol peer done")))
        time.sleep(0.3)
        ok = weights["theta"] == want and weights["alpha"] == alpha and peer.run != ""
        print(json.dumps(report))
        return 0 if ok else 1

    if a.mode == "hold":
        held = set()
        while time.time() < deadline:
            for _, m in peer.receive(200):
                if m["kind"] == "work":
                    held.add(m["id"])
                if m["kind"] == "shutdown":
                    deadline = 0
                if m["kind"] == "refuse" and m["reason"] == 1:
                    peer.join(fingerprint, a.procs, time.time() + 30)  # dropped: join again, hold again
                    peer.send(envelope("ready", peer.run))
            peer.heartbeat_if_idle()
        report.update(units_held=len(held), refusals=peer.seen["refuse"])
        print(json.dumps(report))
        return 0

    if a.mode == "lie":
        n = theta_count(config, V)
        lies = 0
        while time.time() < deadline:
            for _, m in peer.receive(200):
                if m["kind"] == "shutdown":
                    deadline = 0
                if m["kind"] == "refuse" and m["reason"] == 1:
                    peer.join(fingerprint, 1, time.time() + 30)
                    peer.send(envelope("ready", peer.run))
                if m["kind"] != "work":
                    continue
                if m["unit_kind"] != 0:
                    # An eval unit: metrics of no episodes, a lie too (an unanswered unit would be held).
                    peer.send(envelope("eval_result", peer.run, i64(m["id"]) + i64(m["version"])
                                       + struct.pack("<I", 0) + struct.pack("<I", 0) + struct.pack("<I", 0)))
                    lies += 1
                    continue
                tasks = sum(len(l) for l in m["leaves"])
                unit, version, theta = m["id"], m["version"], [0.001] * n
                if a.lie == "nan":
                    theta[n // 2] = float("nan")
                elif a.lie == "inf":
                    theta[0] = float("inf")
                elif a.lie == "size":
                    theta = [0.0]
                elif a.lie == "tasks":
                    tasks = 2**62
                elif a.lie == "other":
                    unit = max(0, unit - 1)
                elif a.lie == "version":
                    version = version - 1
                peer.send(train_result(peer.run, unit, version, theta, 1.0, tasks))
                lies += 1
            peer.heartbeat_if_idle()
        report.update(lies=lies, refusals=peer.seen["refuse"])
        print(json.dumps(report))
        return 0

    # flood: every kind of bad message a joined peer can send, --count of each.
    unit = None
    while time.time() < deadline and unit is None:
        for _, m in peer.receive(200):
            if m["kind"] == "work":
                unit = m
        peer.heartbeat_if_idle()
    kinds = ["result", "unit_failed", "ready", "fetch", "frames", "junk"] if a.kind == "all" else [a.kind]
    for i in range(a.count):
        for k in kinds:
            if k == "result":
                peer.send(train_result(peer.run, 10**9 + i, 0, [0.0], 0.0, 1))            # never issued
            elif k == "unit_failed":
                peer.send(envelope("unit_failed", peer.run, i64(10**9 + i) + s("no")))   # not held
            elif k == "ready":
                peer.send(envelope("ready", peer.run))                                   # while holding work
            elif k == "fetch":
                peer.send(envelope("fetch_weights", peer.run))                           # again and again
            elif k == "frames":
                try:
                    peer.dealer.send_multipart([b"junk", b"frames"], peer.zmq.NOBLOCK)  # several frames
                except peer.zmq.Again:
                    pass
            elif k == "junk":
                peer.send(b"MTRN\x07\x00\x63")                                          # malformed
        if i % 50 == 0:
            peer.receive(0)
    end = time.time() + 3
    while time.time() < end:
        peer.receive(100)
    report.update(weights_replies=peer.seen["weights_replies"], refusals=peer.seen["refuse"],
                  sent=len(kinds) * a.count, kinds=kinds)
    print(json.dumps(report))
    return 0


def relay(a):
    """An honest peer whose arithmetic is a metatrain worker's (numpy does not reproduce
    OpenBLAS's float32 bits) and whose protocol is this file's: it binds a ROUTER and a PUB as a
    coordinator does, and one worker (`metatrain worker --procs 1 --no-shared-memory`) connects
    to them. Every frame either side sends is decoded into its fields by the tables of "Frames",
    encoded again from those fields, checked to be the same bytes, and the encoded frame is what
    goes on. The coordinator sees one peer, this one, whose results it accepts or refuses."""
    import zmq
    peer = Peer(a.connect, a.name)
    router, pub = peer.ctx.socket(zmq.ROUTER), peer.ctx.socket(zmq.PUB)
    for s_ in (router, pub):
        s_.setsockopt(zmq.LINGER, 0)
    # PROTOCOL.md: a worker opens its sockets again, same identity, as it reads the welcome;
    # ROUTER_HANDOVER lets that identity in again (without it libzmq parks the new connection
    # unread while the old one is not yet gone, and the worker is never heard again).
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)
    for _ in range(100):  # a free port whose successor is free too
        port = router.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=60000)
        try:
            pub.bind(f"tcp://127.0.0.1:{port + 1}")
            break
        except zmq.ZMQError:
            router.unbind(f"tcp://127.0.0.1:{port}")
    else:
        raise SystemExit("no free pair of ports")
    with open(a.endpoint_file + ".tmp", "w") as f:
        f.write(f"tcp://127.0.0.1:{port}")
    os.rename(a.endpoint_file + ".tmp", a.endpoint_file)
    peer.poller.register(router, zmq.POLLIN)
    relayed = {"up": {}, "down": {}, "broadcast": {}}
    mismatches, worker, results, end = [], None, 0, time.time() + a.seconds

    def again(frame, way):
        m = decode(frame)
        out = encode(m)
        if out != frame:
            mismatches.append(f"{way} {m['kind']}: {len(frame)} bytes received, {len(out)} encoded")
        relayed[way][m["kind"]] = relayed[way].get(m["kind"], 0) + 1
        return m, out

    gone_at = None
    while time.time() < end and (gone_at is None or time.time() < gone_at):
        for sock, _ in peer.poller.poll(200):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if sock is router:  # the worker, to the coordinator
                    worker = frames[0]
                    m, out = again(frames[-1], "up")
                    results += m["kind"] in ("train_result", "eval_result")
                    if m["kind"] == "goodbye":
                        gone_at = time.time() + 0.5
                    peer.dealer.send(out)
                elif sock is peer.dealer:  # the coordinator's replies, to the worker
                    m, out = again(frames[-1], "down")
                    if worker is not None:
                        router.send_multipart([worker, out])
                    if m["kind"] == "shutdown":
                        gone_at = time.time() + 10  # time for the worker's goodbye
                else:  # broadcasts
                    _, out = again(frames[-1], "broadcast")
                    pub.send(out)
    print(json.dumps({"mode": "relay", "relayed": relayed, "results": results, "mismatches": mismatches[:10]}))
    return 0 if not mismatches and results > 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ImportError as e:
        print(f"error: {e.name} is not installed (pip install -r tools/requirements.txt)", file=sys.stderr)
        sys.exit(3)
