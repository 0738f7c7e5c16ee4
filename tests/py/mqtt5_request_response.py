#!/usr/bin/env python3
"""MQTT 5 request/response with paho-mqtt 2.x.

A responder serves requests on `service/echo`: it answers each on the request's Response
Topic, with the request's Correlation Data and User Properties. A requester sends three
requests and matches every reply to its request by the correlation data.

Usage: python3 mqtt5_request_response.py HOST PORT
Prints the exchanges as JSON; exits 1 when a reply is missing or wrong. Every wait is
bounded by TIMEOUT.
"""
import json
import queue
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT = sys.argv[1], int(sys.argv[2])
TIMEOUT = 5  # seconds, for each step
REPLY_TOPIC = "replies/requester-1"


def fail(why):
    print(json.dumps({"ok": False, "error": why}))
    sys.exit(1)


def connect(client_id, on_message):
    """An MQTT 5 client whose network loop runs in a thread, once the broker accepted it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    accepted = threading.Event()
    client.on_connect = lambda c, userdata, flags, rc, props: rc == 0 and accepted.set()
    client.on_message = on_message
    client.connect(HOST, PORT, keepalive=30, clean_start=True)
    client.loop_start()
    if not accepted.wait(TIMEOUT):
        fail(f"{client_id}: no successful CONNACK")
    return client


def subscribe(client, topic_filter):
    """Subscribes at QoS 1 and waits for the SUBACK."""
    acked = queue.Queue()
    client.on_subscribe = lambda c, userdata, mid, codes, props: acked.put(codes)
    client.subscribe(topic_filter, qos=1)
    try:
        codes = acked.get(timeout=TIMEOUT)
    except queue.Empty:
        fail(f"no SUBACK for {topic_filter}")
    if codes[0].is_failure:
        fail(f"SUBSCRIBE {topic_filter} refused: {codes[0]}")


def serve(client, userdata, request):
    """The responder: uppercases the payload, echoes correlation data and user properties."""
    reply = Properties(PacketTypes.PUBLISH)
    reply.CorrelationData = request.properties.CorrelationData
    reply.UserProperty = request.properties.UserProperty + [("served-by", "responder")]
    client.publish(request.properties.ResponseTopic, request.payload.upper(), qos=1, properties=reply)


responder = connect("responder", serve)
subscribe(responder, "service/echo")

replies = queue.Queue()
requester = connect("requester-1", lambda c, userdata, msg: replies.put(msg))
subscribe(requester, REPLY_TOPIC)

sent = {}
for i in range(3):
    request = Properties(PacketTypes.PUBLISH)
    request.ResponseTopic = REPLY_TOPIC
    request.CorrelationData = f"req-{i}".encode()
    # Repeated keys and their order are part of what must arrive unchanged.
    request.UserProperty = [("trace", f"t{i}"), ("unit", "celsius"), ("trace", "again")]
    info = requester.publish("service/echo", f"ping {i}", qos=1, properties=request)
    info.wait_for_publish(TIMEOUT)
    if not info.is_published():
        fail(f"request {i} not acknowledged")
    sent[request.CorrelationData] = (f"PING {i}", request.UserProperty + [("served-by", "responder")])

exchanges = []
while sent:
    try:
        reply = replies.get(timeout=TIMEOUT)
    except queue.Empty:
        fail(f"no reply for {sorted(c.decode() for c in sent)}")
    correlation = reply.properties.CorrelationData
    if correlation not in sent:
        fail(f"reply with unknown correlation data {correlation!r}")
    payload, user_properties = sent.pop(correlation)
    got = {
        "topic": reply.topic,
        "correlation": correlation.decode(),
        "payload": reply.payload.decode(),
        "user_properties": reply.properties.UserProperty,
    }
    if (got["topic"], got["payload"], got["user_properties"]) != (REPLY_TOPIC, payload, user_properties):
        fail(f"wrong reply {got}, expected {payload!r} with {user_properties}")
    exchanges.append(got)

for client in (requester, responder):
    client.disconnect()
    client.loop_stop()
print(json.dumps({"ok": True, "exchanges": exchanges}))
