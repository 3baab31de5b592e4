"""Abuse the seqlab kernel with raw pyzmq and raw TCP, then check it still answers. Prints JSON.

Usage: robust.py DENO ROOT BIG_MB
Each probe is bounded: sockets have receive timeouts, the whole run stops after 150 s.
"""
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import zmq
from jupyter_client.session import Session

DENO, ROOT, BIG_MB = sys.argv[1], sys.argv[2], int(sys.argv[3])
KEY = b"robustness-key"
DEADLINE = time.time() + 150


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


ports = free_ports(5)
conn = dict(zip(["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"], ports))
conn.update(ip="127.0.0.1", transport="tcp", key=KEY.decode(), signature_scheme="hmac-sha256")
tmp = tempfile.mkdtemp(prefix="seqlab-robust-")
cf = os.path.join(tmp, "conn.json")
with open(cf, "w") as f:
    json.dump(conn, f)
log = open(os.path.join(tmp, "kernel.log"), "w+")
kernel = subprocess.Popen([DENO, "run", "-A", "--quiet", "--config", f"{ROOT}/deno.json", f"{ROOT}/kernel/main.ts", cf,
                           "--no-preload"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
ctx = zmq.Context()
session = Session(key=KEY, signature_scheme="hmac-sha256")
url = lambda name: f"tcp://127.0.0.1:{conn[name]}"


def dealer(identity=None):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 20000)
    if identity:
        s.setsockopt(zmq.IDENTITY, identity)
    s.connect(url("shell_port"))
    return s


def request(sock, msg_type, content, timeout=20):
    msg = session.msg(msg_type, content)
    session.send(sock, msg)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sock.poll(int(max(1, (deadline - time.time()) * 1000))):
            _, reply = session.recv(sock, mode=0)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply
    return None


def execute(sock, code, timeout=20):
    r = request(sock, "execute_request", {"code": code, "silent": False, "store_history": True,
                                          "user_expressions": {}, "allow_stdin": False, "stop_on_error": False},
                timeout)
    return r["content"] if r else None


def alive(sock):
    r = request(sock, "kernel_info_request", {}, timeout=10)
    return bool(r and r["content"]["status"] == "ok")


def sign(parts):
    h = hmac.new(KEY, digestmod=hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.hexdigest().encode()


def body(msg_type, content):
    header = {"msg_id": uuid.uuid4().hex, "session": session.session, "username": "t", "date": "2024-01-01T00:00:00Z",
              "msg_type": msg_type, "version": "5.3"}
    return [json.dumps(x).encode() for x in (header, {}, {}, content)]


results = {}
try:
    shell = dealer(b"main-client")
    t0 = time.time()
    while not alive(shell):
        if time.time() - t0 > 60:
            raise SystemExit("kernel never answered kernel_info")
    results["started"] = True

    # Raw TCP that is not ZMTP at all, and a ZMTP greeting followed by a frame with invalid flags.
    for payload in [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096),
                    b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 48 + b"\xf0\xff\xff"]:
        s = socket.create_connection(("127.0.0.1", conn["shell_port"]), timeout=5)
        s.sendall(payload)
        time.sleep(0.2)
        s.close()
    results["after_raw_tcp"] = alive(shell)

    # A socket type the ROUTER must refuse.
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(url("shell_port"))
    time.sleep(0.3)
    sub.close()
    results["after_wrong_socket_type"] = alive(shell)

    # Malformed Jupyter messages: no delimiter, too few frames, bad / missing signature, bad JSON.
    code = "globalThis.pwned = (globalThis.pwned ?? 0) + 1"
    b_exec = body("execute_request", {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                      "allow_stdin": False, "stop_on_error": False})
    shell.send_multipart([b"no delimiter here"])
    shell.send_multipart([b"<IDS|MSG>", b"sig", b"{}"])
    shell.send_multipart([b"<IDS|MSG>", b"0" * 64] + b_exec)
    shell.send_multipart([b"<IDS|MSG>", b""] + b_exec)
    bad_json = [b"{not json", b"{}", b"{}", b"{}"]
    shell.send_multipart([b"<IDS|MSG>", sign(bad_json)] + bad_json)
    no_type = [b'{"msg_id": "x"}', b"{}", b"{}", b"{}"]
    shell.send_multipart([b"<IDS|MSG>", sign(no_type)] + no_type)
    # A correctly signed message sent twice: the replay is dropped.
    b_once = body("execute_request", {"code": "globalThis.replayed = (globalThis.replayed ?? 0) + 1",
                                      "silent": True, "store_history": False, "user_expressions": {},
                                      "allow_stdin": False, "stop_on_error": False})
    shell.send_multipart([b"<IDS|MSG>", sign(b_once)] + b_once)
    shell.send_multipart([b"<IDS|MSG>", sign(b_once)] + b_once)
    # Unknown message type, correctly signed.
    b_unknown = body("frobnicate_request", {"x": 1})
    shell.send_multipart([b"<IDS|MSG>", sign(b_unknown)] + b_unknown)
    time.sleep(1.0)
    while shell.poll(100):
        shell.recv_multipart()
    results["after_malformed"] = alive(shell)
    r = execute(shell, "[typeof globalThis.pwned, globalThis.replayed]")
    results["forged_not_executed"] = r and r["status"] == "ok"
    results["forged_check_text"] = None
    # Read the result through iopub-free means: ask via user_expressions.
    ue = request(shell, "execute_request", {"code": "", "silent": True, "store_history": False,
                                            "user_expressions": {"p": "String(typeof globalThis.pwned)",
                                                                 "r": "String(globalThis.replayed)"},
                                            "allow_stdin": False, "stop_on_error": False})
    exprs = ue["content"]["user_expressions"]
    results["pwned_type"] = exprs["p"]["data"]["text/plain"]
    results["replayed_count"] = exprs["r"]["data"]["text/plain"]

    # A 50 MB message: the kernel reads it, runs it, and answers.
    t = time.time()
    big = 'const big = "' + "x" * (BIG_MB * 1024 * 1024) + '"; big.length'
    r = request(shell, "execute_request", {"code": big, "silent": False, "store_history": False,
                                           "user_expressions": {"n": "String(big.length)"},
                                           "allow_stdin": False, "stop_on_error": False}, timeout=90)
    results["big_status"] = r and r["content"]["status"]
    results["big_length"] = r and r["content"]["user_expressions"]["n"]["data"]["text/plain"]
    results["big_seconds"] = time.time() - t
    del big

    # A client that disconnects in the middle of a request.
    gone = dealer(b"leaving-client")
    session.send(gone, session.msg("execute_request", {"code": "await new Promise(r => setTimeout(r, 800)); 5",
                                                         "silent": False, "store_history": True,
                                                         "user_expressions": {}, "allow_stdin": False,
                                                         "stop_on_error": False}))
    time.sleep(0.2)
    gone.close()
    results["after_disconnect"] = alive(shell)
    r = execute(shell, "1 + 1")
    results["after_disconnect_execute"] = r and r["status"]

    # Heartbeat still echoes.
    hb = ctx.socket(zmq.REQ)
    hb.setsockopt(zmq.LINGER, 0)
    hb.setsockopt(zmq.RCVTIMEO, 5000)
    hb.connect(url("hb_port"))
    hb.send(b"ping")
    results["heartbeat"] = hb.recv() == b"ping"
    hb.close()
finally:
    kernel.terminate()
    try:
        kernel.wait(10)
    except subprocess.TimeoutExpired:
        kernel.kill()
    log.seek(0)
    results["kernel_log"] = log.read()[-6000:]
    results["kernel_exit"] = kernel.returncode
    ctx.destroy(linger=0)
    print(json.dumps(results))
