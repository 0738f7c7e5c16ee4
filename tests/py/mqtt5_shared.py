#!/usr/bin/env python3
"""MQTT 5 shared subscriptions with paho-mqtt 2.x: three workers share `$share/workers/jobs/#`.

Round 1: 300 QoS 1 jobs are published; each is handled by exactly one worker.
Round 2: 300 more. Worker w3 stops acknowledging after 10 of them and disconnects while
the jobs are still coming. The jobs it received but did not acknowledge go to w1 or w2:
no job is lost (each is handled at least once).

Usage: python3 mqtt5_shared.py HOST PORT
Prints the counts as JSON; exits 1 on a lost or doubly handled job. Every wait is bounded.
"""
import collections
import json
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST, PORT = sys.argv[1], int(sys.argv[2])
N = 300
TIMEOUT = 10  # seconds, for each step

handled = collections.defaultdict(list)  # job -> workers that handled (and acknowledged) it
lock = threading.Lock()


def fail(why, **details):
    print(json.dumps({"ok": False, "error": why, **details}))
    sys.exit(1)


def connect(client_id, on_message=None):
    """An MQTT 5 client (acknowledging messages itself) once the broker accepted it."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    accepted = threading.Event()
    client.on_connect = lambda c, userdata, flags, rc, props: rc == 0 and accepted.set()
    client.on_message = on_message
    client.connect(HOST, PORT, keepalive=30, clean_start=True)
    client.loop_start()
    if not accepted.wait(TIMEOUT):
        fail(f"{client_id}: no successful CONNACK")
    return client


class Worker:
    """A member of the shared subscription: records each job it handles, then acknowledges it."""

    def __init__(self, name):
        self.name = name
        self.acks_left = None  # None: acknowledge everything; a number: then stall
        self.unacked = []  # jobs received while stalled: neither handled nor acknowledged
        self.client = connect(name, self.on_message)
        acked = queue.Queue()
        self.client.on_subscribe = lambda c, userdata, mid, codes, props: acked.put(codes)
        self.client.subscribe("$share/workers/jobs/#", qos=1)
        try:
            codes = acked.get(timeout=TIMEOUT)
        except queue.Empty:
            fail(f"{name}: no SUBACK")
        if codes[0].value != 1:
            fail(f"{name}: shared subscription not granted at QoS 1: {codes[0]}")

    def on_message(self, client, userdata, msg):
        job = msg.payload.decode()
        if self.acks_left == 0:
            self.unacked.append(job)
            return
        if self.acks_left is not None:
            self.acks_left -= 1
        with lock:
            handled[job].append(self.name)
        client.ack(msg.mid, msg.qos)


def publish(client, jobs):
    """Publishes each job at QoS 1 on `jobs/{job}`; returns once all are acknowledged."""
    sent = [client.publish(f"jobs/{job}", job, qos=1) for job in jobs]
    for info in sent:
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            fail("the broker did not acknowledge a job")


def wait_until(condition, what):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            fail(f"timed out waiting for {what}", handled=len(handled))
        time.sleep(0.02)


def report(jobs):
    with lock:
        per_worker = collections.Counter(w for j in jobs for w in handled.get(j, []))
        duplicates = sum(len(handled[j]) - 1 for j in jobs if j in handled)
    return dict(sorted(per_worker.items())), duplicates


workers = [Worker(name) for name in ("w1", "w2", "w3")]
publisher = connect("dispatcher")

# Round 1: every job to exactly one worker, every worker gets some.
round1 = [f"r1-{i}" for i in range(N)]
publish(publisher, round1)
wait_until(lambda: all(j in handled for j in round1), "round 1 to be handled")
time.sleep(0.3)  # a second copy of any job would arrive by now
per_worker, duplicates = report(round1)
if duplicates or len(per_worker) != 3:
    fail("round 1: a job handled twice or a worker left out", per_worker=per_worker, duplicates=duplicates)

# Round 2: w3 stalls after 10 jobs and leaves mid-stream; nothing it held is lost.
w3 = workers[2]
w3.acks_left = 10
round2 = [f"r2-{i}" for i in range(N)]
publish(publisher, round2[: N // 2])
wait_until(lambda: len(w3.unacked) > 0, "w3 to hold unacknowledged jobs")
w3.client.disconnect()
w3.client.loop_stop()
held_by_w3 = list(w3.unacked)
publish(publisher, round2[N // 2 :])
wait_until(lambda: all(j in handled for j in round2), "round 2 to be handled")
per_worker2, duplicates2 = report(round2)

publisher.disconnect()
for w in workers[:2]:
    w.client.disconnect()
print(
    json.dumps(
        {
            "ok": True,
            "round1": {"jobs": N, "per_worker": per_worker, "duplicates": duplicates},
            "round2": {
                "jobs": N,
                "per_worker": per_worker2,
                "duplicates": duplicates2,
                "unacknowledged_by_w3": len(held_by_w3),
                "redelivered": sum(1 for j in held_by_w3 if j in handled),
            },
        }
    )
)
