"""A protocol agent written without the SDK (the way an agent in another language would be),
for the tests: it sends the bytes in $RAW_SEND (garbage included), then a hello and a
heartbeat every $RAW_HEARTBEAT_S, and prints every line it receives as ``recv <json>`` so that
the test can see, in the daemon's log, exactly what this child was told.

$RAW_PERMIT_KEY: on each role push, ask for a permit on this key through the channel.
$RAW_PERMIT_EVERY_S: instead, ask for a permit on a fresh key ($RAW_PERMIT_KEY-N) this often.
$RAW_AFTER_HELLO: bytes (a file path) to send after the hello.
"""

import json
import os
import socket
import sys
import threading
import time

sock = socket.socket(fileno=int(os.environ["AGENTSUP_FD"]))
send_lock = threading.Lock()


def send(data: bytes) -> None:
    with send_lock:
        sock.sendall(data)


def line(obj: dict) -> None:
    send(json.dumps(obj).encode() + b"\n")


if os.environ.get("RAW_SEND"):
    with open(os.environ["RAW_SEND"], "rb") as f:
        send(f.read())
line(
    {
        "type": "hello",
        "version": os.environ["AGENTSUP_VERSION"],
        "pid": os.getpid(),
        "protocol": 1,
        "capabilities": ["permit"],
    }
)
if os.environ.get("RAW_AFTER_HELLO"):
    with open(os.environ["RAW_AFTER_HELLO"], "rb") as f:
        send(f.read())

interval = float(os.environ.get("RAW_HEARTBEAT_S", "0.5"))


def heartbeats() -> None:
    while True:
        line({"type": "heartbeat"})
        time.sleep(interval)


threading.Thread(target=heartbeats, daemon=True).start()
permit_key = os.environ.get("RAW_PERMIT_KEY")
n = 0


def ask_often() -> None:
    # $RAW_PERMIT_EVERY_S: keep asking for permits on fresh keys, like a busy agent.
    every = float(os.environ["RAW_PERMIT_EVERY_S"])
    i = 0
    while True:
        i += 1
        line({"type": "permit", "request_id": f"p{i}", "key": f"{permit_key}-{i}"})
        time.sleep(every)


if os.environ.get("RAW_PERMIT_EVERY_S"):
    threading.Thread(target=ask_often, daemon=True).start()
buf = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        print("channel closed", flush=True)
        sys.exit(0)
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for raw in lines:
        print("recv " + raw.decode(), flush=True)
        msg = json.loads(raw)
        if msg.get("type") == "role" and permit_key and not os.environ.get("RAW_PERMIT_EVERY_S"):
            n += 1
            line({"type": "permit", "request_id": f"r{n}", "key": permit_key})
