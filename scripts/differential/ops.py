"""Random operation sequences, and how each operation is sent.

An operation is a dict: `kind`, the connection (`A` or `B`) and channel it runs on, and its
arguments. Names are the seed's own (`s<seed>-q0`, `s<seed>-x1`), plus reserved and edge-case
ones; `("gen", i)` stands for the i-th server-generated queue name of the session, and delivery
tags are chosen by rule (`last`, `first`, `zero`, `unknown`, ...) from the tags the channel has
received, so that one sequence means the same on both brokers.
"""

from __future__ import annotations

import random
import struct

from amqp_raw import FRAME_HEADER, body_frame, frame
from session import ChannelState, Session
from wire import encode_properties, method

BUILTIN_EXCHANGES = ["", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"]
WORDS = ["a", "b", "c"]


class Names:
    def __init__(self, seed: int):
        self.queues = [f"s{seed}-q{i}" for i in range(3)]
        self.exchanges = [f"s{seed}-x{i}" for i in range(3)]
        # Names that a sequence mostly uses while they do not exist.
        self.rare_queue = f"s{seed}-rare-q"
        self.rare_exchange = f"s{seed}-rare-x"
        # Quorum queues, declared and used by the extra operations only (see `extra_op`).
        self.quorum_queues = [f"s{seed}-qq{i}" for i in range(2)]

    def queue(self, rng: random.Random):
        r = rng.random()
        if r < 0.8:
            return rng.choice(self.queues)
        if r < 0.9:
            return ("gen", rng.randrange(3))
        return rng.choice(["", "amq.q", "amq.rabbitmq.x", self.rare_queue])

    def exchange(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.7:
            return rng.choice(self.exchanges)
        if r < 0.93:
            return rng.choice(BUILTIN_EXCHANGES)
        return rng.choice(["amq.custom", self.rare_exchange])


def topic_key(rng: random.Random, pattern: bool) -> str:
    words = WORDS + (["*", "#", ""] if pattern else [""])
    return ".".join(rng.choice(words) for _ in range(rng.randrange(4)))


def headers_table(rng: random.Random) -> dict:
    out = {}
    for key in rng.sample(["k1", "k2"], rng.randrange(3)):
        out[key] = rng.choice([("S", "v"), ("S", "w"), ("I", 1), ("t", True), ("V", None)])
    return out


def binding_args(rng: random.Random) -> dict:
    if rng.random() < 0.6:
        return {}
    args = headers_table(rng)
    if rng.random() < 0.7:
        args["x-match"] = rng.choice([("S", "all"), ("S", "any"), ("S", "bogus"), ("I", 1),
                                      ("S", "all-with-x"), ("S", "any-with-x")])
    return args


def queue_args(rng: random.Random, names: Names) -> dict:
    if rng.random() < 0.7:
        return {}
    choices = {
        "x-message-ttl": [("I", 0), ("I", 600000), ("I", -1), ("S", "abc"), ("l", 600000),
                          ("d", 1.5)],
        "x-expires": [("I", 0), ("I", -5), ("I", 600000), ("S", "x")],
        "x-max-length": [("I", 0), ("I", 1), ("I", 2), ("I", -1), ("S", "x"), ("b", 1)],
        "x-max-length-bytes": [("I", 10), ("I", -1), ("l", 4)],
        "x-overflow": [("S", "drop-head"), ("S", "reject-publish"), ("S", "reject-publish-dlx"),
                       ("S", "bogus"), ("I", 1)],
        "x-dead-letter-exchange": [("S", rng.choice(names.exchanges)), ("S", ""), ("I", 1),
                                   ("S", names.rare_exchange)],
        "x-dead-letter-routing-key": [("S", "a"), ("I", 2)],
        "x-max-priority": [("I", 0), ("I", 5), ("I", 255), ("I", 256), ("I", -1), ("S", "x"),
                           ("b", 3)],
        "x-queue-type": [("S", "classic"), ("S", "bogus"), ("I", 1)],
        "x-single-active-consumer": [("t", True), ("t", False), ("S", "yes")],
        "x-queue-mode": [("S", "lazy"), ("S", "default"), ("S", "bogus")],
        "x-unknown": [("S", "v")],
    }
    keys = rng.sample(sorted(choices), rng.randrange(1, 3))
    return {k: rng.choice(choices[k]) for k in keys}


def properties(rng: random.Random) -> dict:
    # Mostly valid values: a refused publish closes the channel and ends what it was doing.
    choices = {
        "content_type": ["text/plain", ""],
        "delivery_mode": [1, 2, 1, 2, 1, 2, 0, 3],
        "priority": [0, 3, 9, 200],
        "headers": [headers_table(rng), {"CC": ("A", [("S", "a")])}, {"BCC": ("S", "b")},
                    {"x-first-death-queue": ("S", "q")}],
        # Not "0": lockgate drops an expired message wherever it stands, RabbitMQ at the head
        # only, so counts would differ by design (README.md).
        "expiration": ["600000", "600000", "600000", "600000", "-1", "abc", ""],
        "message_id": ["m1"],
        "correlation_id": ["c1"],
        "timestamp": [1700000000],
        "type": ["t"],
        "user_id": ["guest", "guest", "guest", "other"],
        "app_id": ["app"],
        "reply_to": ["r"],
    }
    keys = rng.sample(sorted(choices), rng.randrange(0, 4))
    return {k: rng.choice(choices[k]) for k in keys}


def sync_frame(ch: int) -> bytes:
    """Follows a method without a reply: a passive declare of amq.direct changes nothing, and
    its declare-ok (or the channel's close) tells that the broker has dealt with the method."""
    return method(ch, "exchange.declare", 0, "amq.direct", "", True, False, False, False, False,
                  {})


def setup(rng: random.Random, names: Names) -> list[dict]:
    """A sequence starts with its exchanges, queues (valid arguments) and a few bindings, so
    that what follows has messages to deliver, get, ack and return. Some exchanges and queues
    are auto-delete (they go with their last binding or consumer), some queues exclusive to
    connection A, some exchanges have an alternate exchange."""
    ops: list[dict] = []
    base = {"conn": "A", "ch": 1}
    for exchange in names.exchanges:
        args = {}
        if rng.random() < 0.3:
            args["alternate-exchange"] = ("S", rng.choice(names.exchanges))
        ops.append(dict(base, kind="exchange.declare", name=exchange,
                        type=rng.choice(["direct", "fanout", "topic", "headers"]), passive=False,
                        durable=False, auto_delete=rng.random() < 0.15, internal=False,
                        args=args))
    # A message TTL of 0 dead-letters (or drops) at once what no consumer takes at once.
    valid = {"x-max-length": ("I", 3), "x-message-ttl": ("I", rng.choice([600000, 0])),
             "x-max-priority": ("I", 5),
             "x-overflow": ("S", rng.choice(["reject-publish", "drop-head",
                                             "reject-publish-dlx"])),
             "x-dead-letter-exchange": ("S", rng.choice(names.exchanges)),
             "x-single-active-consumer": ("t", True)}
    for queue in names.queues:
        args = {k: valid[k] for k in rng.sample(sorted(valid), rng.randrange(4))}
        if "x-dead-letter-exchange" in args and rng.random() < 0.5:
            args["x-dead-letter-routing-key"] = ("S", rng.choice(names.queues + ["a"]))
        ops.append(dict(base, kind="queue.declare", name=queue, passive=False, durable=False,
                        exclusive=rng.random() < 0.1, auto_delete=rng.random() < 0.15,
                        args=args))
    for _ in range(4):
        ops.append(dict(base, kind="queue.bind", queue=rng.choice(names.queues),
                        exchange=rng.choice(names.exchanges),
                        key=rng.choice(["a", "b", "#", "a.*"]), args=binding_args(rng)))
    return ops


# Direct reply-to: the pseudo-queue, and the channel its consumer and the publishes that ask
# for replies use. The channel is one no other operation uses (4 is the never-opened channel of
# a frame error), so that the reply deliveries' tags, which lockgate numbers otherwise than
# RabbitMQ on purpose (top-level README), meet no ack by rule.
REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_CHANNEL = 5


def quorum_args(rng: random.Random, names: Names) -> dict:
    """A quorum queue's arguments: mostly valid ones, sometimes one it refuses (those of other
    queue types) or a bad value."""
    args = {"x-queue-type": ("S", "quorum")}
    choices = {
        "x-max-length": [("I", 2), ("I", 3)],
        "x-overflow": [("S", "drop-head"), ("S", "reject-publish"),
                       ("S", "reject-publish-dlx")],
        "x-dead-letter-exchange": [("S", rng.choice(names.exchanges))],
        "x-delivery-limit": [("I", 1), ("I", 2)],
        "x-single-active-consumer": [("t", True)],
        "x-message-ttl": [("I", 600000)],
        "x-dead-letter-strategy": [("S", "at-most-once"), ("S", "bogus")],
        "x-quorum-initial-group-size": [("I", 1), ("I", 0)],
        "x-max-priority": [("I", 5)],
        "x-queue-mode": [("S", "lazy")],
    }
    weights = [4, 3, 3, 3, 2, 2, 1, 1, 1, 1]
    for key in set(rng.choices(sorted(choices), weights, k=rng.randrange(3))):
        args[key] = rng.choice(choices[key])
    return args


def extra_op(rng: random.Random, names: Names) -> dict:
    """An operation in the areas added after the first generator (direct reply-to, quorum
    queues), drawn from a random stream of its own so that the main stream of a seed stays
    what it was."""
    kind = rng.choices(["reply.consume", "reply.publish", "reply.answer", "reply.declare",
                        "reply.cancel", "quorum.declare", "quorum.bind", "quorum.consume",
                        "quorum.get", "frame"],
                       [2, 3, 3, 1, 1, 3, 2, 2, 2, 1])[0]
    conn = rng.choice("AAB")
    if kind == "frame":
        return {"kind": "frame", "conn": conn, "ch": rng.choice([1, 2, 3]),
                "error": rng.choice(sorted(LATER_FRAME_ERRORS))}
    if kind == "reply.consume":
        # With acks, or a second reply consumer on the channel: 406.
        return {"kind": "basic.consume", "conn": conn, "ch": REPLY_CHANNEL, "queue": REPLY_TO,
                "tag": rng.choice(["r1", "r1", ""]), "no_ack": rng.random() < 0.9,
                "exclusive": False, "args": {}}
    if kind == "reply.cancel":
        return {"kind": "basic.cancel", "conn": conn, "ch": REPLY_CHANNEL, "tag": "r1"}
    if kind == "reply.publish":
        # A request: routed to the seed's queues, its reply_to rewritten to the channel's
        # reply address (406 without a reply consumer there).
        exchange = rng.choice(names.exchanges + [""])
        key = rng.choice(names.queues) if exchange == "" else rng.choice(["a", "b", "a.b"])
        props = {"reply_to": REPLY_TO, "correlation_id": rng.choice(["c1", "c2"])}
        return {"kind": "basic.publish", "conn": conn, "ch": REPLY_CHANNEL,
                "exchange": exchange, "key": key, "mandatory": False, "immediate": False,
                "props": props, "body": "req", "count": 1}
    if kind == "reply.answer":
        # A reply to the last address a delivery carried, or to one that never existed.
        # Not mandatory: a delivered mandatory reply is also returned by RabbitMQ 3.10, not
        # by lockgate (top-level README).
        return {"kind": "basic.publish", "conn": conn, "ch": rng.choice([1, 2, 3]),
                "exchange": "", "key": rng.choice([("reply", "last"), ("reply", "last"),
                                                   ("reply", "bogus")]),
                "mandatory": False, "immediate": False,
                "props": {"correlation_id": "c1"}, "body": "reply", "count": 1}
    if kind == "reply.declare":
        return {"kind": "queue.declare", "conn": conn, "ch": rng.choice([1, 2, 3]),
                "name": rng.choice([REPLY_TO, ("reply", "last")]),
                "passive": rng.random() < 0.5, "durable": False, "exclusive": False,
                "auto_delete": False, "args": {}}
    queue = rng.choice(names.quorum_queues)
    ch = rng.choice([1, 1, 2, 3])
    if kind == "quorum.declare":
        # Mostly as a quorum queue must be; sometimes not (refused).
        proper = rng.random() < 0.7
        return {"kind": "queue.declare", "conn": conn, "ch": ch,
                "name": queue if rng.random() < 0.9 else "",
                "passive": rng.random() < 0.1, "durable": proper or rng.random() < 0.5,
                "exclusive": not proper and rng.random() < 0.3,
                "auto_delete": not proper and rng.random() < 0.3,
                "args": quorum_args(rng, names)}
    if kind == "quorum.bind":
        return {"kind": "queue.bind", "conn": conn, "ch": ch, "queue": queue,
                "exchange": rng.choice(names.exchanges),
                "key": rng.choice(["a", "b", "#", "a.*"]), "args": {}}
    if kind == "quorum.consume":
        return {"kind": "basic.consume", "conn": conn, "ch": ch, "queue": queue,
                "tag": rng.choice(["", "q1"]), "no_ack": rng.random() < 0.3,
                "exclusive": False, "args": {}}
    return {"kind": "basic.get", "conn": conn, "ch": ch, "queue": queue,
            "no_ack": rng.random() < 0.4}


def generate(seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    # The extra operations' own stream (see `extra_op`).
    extra = random.Random(seed * 7919 + 17)
    names = Names(seed)
    weights = {
        "exchange.declare": 6, "exchange.delete": 2, "exchange.bind": 3, "exchange.unbind": 1,
        "queue.declare": 9, "queue.bind": 6, "queue.unbind": 2, "queue.purge": 2,
        "queue.delete": 2, "basic.publish": 20, "basic.get": 8, "basic.consume": 6,
        "basic.cancel": 2, "basic.ack": 6, "basic.nack": 3, "basic.reject": 3,
        "basic.recover": 2, "basic.qos": 3, "tx.select": 2, "tx.commit": 2, "tx.rollback": 1,
        "confirm.select": 2, "channel.close": 1, "channel.open": 1, "channel.flow": 1,
        "connection.close": 1, "frame": 1,
    }
    kinds, w = zip(*weights.items())
    ops = setup(rng, names)
    for _ in range(count):
        kind = rng.choices(kinds, w)[0]
        op = {"kind": kind, "conn": rng.choice("AAAB"), "ch": rng.choice([1, 1, 1, 1, 2, 3])}
        if kind == "exchange.declare":
            args = {}
            if rng.random() < 0.2:
                args["alternate-exchange"] = rng.choice([("S", rng.choice(names.exchanges)),
                                                         ("I", 1)])
            op.update(name=names.exchange(rng),
                      type=rng.choice(["direct", "fanout", "topic", "headers", "x-bogus"]),
                      passive=rng.random() < 0.15, durable=rng.random() < 0.3,
                      auto_delete=rng.random() < 0.2, internal=rng.random() < 0.1, args=args)
        elif kind == "exchange.delete":
            op.update(name=names.exchange(rng), if_unused=rng.random() < 0.4)
        elif kind in ("exchange.bind", "exchange.unbind"):
            op.update(dest=names.exchange(rng), source=names.exchange(rng),
                      key=topic_key(rng, True), args=binding_args(rng))
        elif kind == "queue.declare":
            op.update(name=names.queue(rng), passive=rng.random() < 0.15,
                      durable=rng.random() < 0.3, exclusive=rng.random() < 0.3,
                      auto_delete=rng.random() < 0.2, args=queue_args(rng, names))
        elif kind in ("queue.bind", "queue.unbind"):
            op.update(queue=names.queue(rng), exchange=names.exchange(rng),
                      key=topic_key(rng, True), args=binding_args(rng))
        elif kind == "queue.purge":
            op.update(queue=names.queue(rng))
        elif kind == "queue.delete":
            op.update(queue=names.queue(rng), if_unused=rng.random() < 0.4,
                      if_empty=rng.random() < 0.4)
        elif kind == "basic.publish":
            exchange = names.exchange(rng)
            if exchange == "" or rng.random() < 0.2:
                key = rng.choice(names.queues + [""])
            else:
                key = rng.choice(["a", "b", "a.b", topic_key(rng, False)])
            op.update(exchange=exchange, key=key, mandatory=rng.random() < 0.4,
                      immediate=rng.random() < 0.05, props=properties(rng),
                      body=rng.choice(["", "m", "m", "x" * 300, "y" * 200000]),
                      count=rng.choice([1, 1, 2, 3]))
        elif kind == "basic.get":
            op.update(queue=names.queue(rng), no_ack=rng.random() < 0.4)
        elif kind == "basic.consume":
            args = {"x-priority": rng.choice([("I", 1), ("S", "x")])} if rng.random() < 0.1 \
                else {}
            op.update(queue=names.queue(rng), tag=rng.choice(["", "c1", "c2"]),
                      no_ack=rng.random() < 0.3, exclusive=rng.random() < 0.2, args=args)
        elif kind == "basic.cancel":
            op.update(tag=rng.choice(["c1", "c2", "nope"]))
        elif kind in ("basic.ack", "basic.nack", "basic.reject"):
            op.update(tag=rng.choice(["last", "last", "last", "first", "random", "random",
                                      "zero", "unknown"]),
                      multiple=rng.random() < 0.3, requeue=rng.random() < 0.5)
        elif kind == "basic.recover":
            op.update(requeue=rng.random() < 0.8)
        elif kind == "basic.qos":
            op.update(count=rng.choice([0, 1, 2, 5]), size=rng.choice([0, 0, 0, 1000]),
                      glob=rng.random() < 0.4)
        elif kind == "channel.flow":
            # flow(active=false) is a deliberate divergence (see README.md).
            op.update(active=True)
        elif kind == "frame":
            op.update(error=rng.choice(sorted(FRAME_ERRORS)))
        ops.append(op)
        if extra.random() < 0.25:
            ops.append(extra_op(extra, names))
    return ops


def _publish(ch: int) -> bytes:
    return method(ch, "basic.publish", 0, "amq.direct", "k", False, False)


def _header(ch: int, size: int) -> bytes:
    return frame(FRAME_HEADER, ch, struct.pack(">HHQ", 60, 0, size) + b"\x00\x00")


# Frames a client gets wrong, each of which ends the connection (RabbitMQ's code and text).
# Those where RabbitMQ 3.10 answers otherwise than lockgate on purpose, or with Erlang terms
# in the text, are left out (tests/pika/test_raw_robustness.py has them, README.md says which).
FRAME_ERRORS = {
    # 504 "expected 'channel.open'"
    "method-on-unopened-channel": lambda ch: method(4, "basic.qos", 0, 1, False),
    # 504 "second 'channel.open' seen"
    "second-channel-open": lambda ch: method(ch, "channel.open", ""),
    # 504 "unexpected method in connection state running"
    "channel-method-on-channel-0": lambda ch: method(0, "basic.qos", 0, 1, False),
    # 505 "expected method frame, got non method frame instead"
    "header-without-method": lambda ch: _header(ch, 1),
    "body-without-method": lambda ch: body_frame(ch, b"x"),
    "body-after-empty-content": lambda ch: _publish(ch) + _header(ch, 0) + body_frame(ch, b"x"),
    # 505 "expected content header for class 60, got non content header frame instead"
    "method-instead-of-header": lambda ch: _publish(ch) + method(ch, "basic.qos", 0, 1, False),
    # 505 "expected content body, got non content body frame instead"
    "method-instead-of-body": lambda ch: (_publish(ch) + _header(ch, 3)
                                          + method(ch, "basic.qos", 0, 1, False)),
}


def _header_of(ch: int, class_id: int, weight: int) -> bytes:
    return frame(FRAME_HEADER, ch, struct.pack(">HHQ", class_id, weight, 1) + b"\x00\x00")


# Frame errors added later (generated by `extra_op`, so that the main stream's choice among
# FRAME_ERRORS stays what it was).
LATER_FRAME_ERRORS = {
    # 505 "expected content header for class 60, got one for class 50 instead" (60/40)
    "header-of-another-class": lambda ch: _publish(ch) + _header_of(ch, 50, 0),
    # 505 "expected content header for class 60, got non content header frame instead"
    "header-with-a-weight": lambda ch: _publish(ch) + _header_of(ch, 60, 1),
    # 505 "expected content body, got non content body frame instead"
    "header-of-another-class-in-a-body": lambda ch: (_publish(ch) + _header(ch, 3)
                                                     + _header_of(ch, 50, 0)),
    # 505 "expected method frame, got non method frame instead" (channel 6 is never opened)
    "header-on-unopened-channel": lambda ch: _header(6, 1),
}


def describe(op: dict) -> str:
    rest = " ".join(f"{k}={v!r}" if len(repr(v)) < 40 or k != "body" else f"{k}=<{len(v)} octets>"
                    for k, v in op.items() if k not in ("kind", "conn", "ch"))
    return f"{op['conn']}/{op['ch']} {op['kind']} {rest}".rstrip()


def resolve_queue(session: Session, name) -> str:
    """A name as sent: `("gen", i)` a server-generated queue's, `("reply", "last")` the reply
    address the session saw last (in a delivered request's reply_to), `("reply", "bogus")`
    one no broker handed out."""
    if isinstance(name, tuple):
        if name[0] == "reply":
            if name[1] == "last" and session.reply_addresses:
                return session.reply_addresses[-1]
            return REPLY_TO + ".bogus"
        gen = session.generated
        return gen[name[1] % len(gen)] if gen else "amq.gen-none"
    return name


def resolve_tag(tags: list[int], rule: str, rng: random.Random) -> int:
    if rule == "zero":
        return 0
    if rule == "unknown":
        return (tags[-1] if tags else 0) + 100
    if rule == "first":
        return tags[0]
    if rule == "random":
        return rng.choice(tags)
    return tags[-1]


def execute(session: Session, op: dict, rng: random.Random) -> None:
    """Sends one operation; `rng` (seeded per operation) picks among the tags seen."""
    kind, ch = op["kind"], op["ch"]
    if kind == "connection.close":
        c = session.conn(op["conn"])
        session.call(c, 0, method(0, "connection.close", 200, "bye", 0, 0),
                     {"connection.close-ok"})
        return
    if kind == "channel.open":
        c = session.conn(op["conn"])
        if not c.channels.get(ch, ChannelState()).open:
            c.channels.pop(ch)  # the open waits for its own answer, not the old close
        session.call(c, ch, method(ch, "channel.open", ""), {"channel.open-ok"})
        return
    c = session.channel(op["conn"], ch)
    call = session.call
    if kind == "frame":
        # The connection's close ends the call; nothing else answers these.
        frames = {**FRAME_ERRORS, **LATER_FRAME_ERRORS}[op["error"]](ch)
        call(c, 0, frames, {"connection.close"})
    elif kind == "channel.close":
        call(c, ch, method(ch, "channel.close", 200, "bye", 0, 0), {"channel.close-ok"})
    elif kind == "channel.flow":
        call(c, ch, method(ch, "channel.flow", op["active"]), {"channel.flow-ok"})
    elif kind == "exchange.declare":
        call(c, ch, method(ch, kind, 0, op["name"], op["type"], op["passive"], op["durable"],
                           op["auto_delete"], op["internal"], False, op["args"]),
             {"exchange.declare-ok"})
    elif kind == "exchange.delete":
        call(c, ch, method(ch, kind, 0, op["name"], op["if_unused"], False),
             {"exchange.delete-ok"})
    elif kind in ("exchange.bind", "exchange.unbind"):
        call(c, ch, method(ch, kind, 0, op["dest"], op["source"], op["key"], False, op["args"]),
             {kind + "-ok"})
    elif kind == "queue.declare":
        call(c, ch, method(ch, kind, 0, resolve_queue(session, op["name"]), op["passive"],
                           op["durable"], op["exclusive"], op["auto_delete"], False,
                           op["args"]),
             {"queue.declare-ok"})
    elif kind == "queue.bind":
        call(c, ch, method(ch, kind, 0, resolve_queue(session, op["queue"]), op["exchange"],
                           op["key"], False, op["args"]), {"queue.bind-ok"})
    elif kind == "queue.unbind":
        call(c, ch, method(ch, kind, 0, resolve_queue(session, op["queue"]), op["exchange"],
                           op["key"], op["args"]), {"queue.unbind-ok"})
    elif kind == "queue.purge":
        call(c, ch, method(ch, kind, 0, resolve_queue(session, op["queue"]), False),
             {"queue.purge-ok"})
    elif kind == "queue.delete":
        call(c, ch, method(ch, kind, 0, resolve_queue(session, op["queue"]), op["if_unused"],
                           op["if_empty"], False), {"queue.delete-ok"})
    elif kind == "basic.publish":
        body = op["body"].encode()
        frames = b""
        for _ in range(op["count"]):
            frames += (method(ch, kind, 0, op["exchange"], resolve_queue(session, op["key"]),
                              op["mandatory"], op["immediate"])
                       + _content(ch, op["props"], body))
        call(c, ch, frames + sync_frame(ch), {"exchange.declare-ok"})
    elif kind == "basic.get":
        call(c, ch, method(ch, kind, 0, resolve_queue(session, op["queue"]), op["no_ack"]),
             {"basic.get-ok", "basic.get-empty"})
    elif kind == "basic.consume":
        call(c, ch, method(ch, kind, 0, resolve_queue(session, op["queue"]), op["tag"], False,
                           op["no_ack"], op["exclusive"], False, op["args"]),
             {"basic.consume-ok"})
    elif kind == "basic.cancel":
        call(c, ch, method(ch, kind, op["tag"], False), {"basic.cancel-ok"})
    elif kind in ("basic.ack", "basic.nack", "basic.reject"):
        tags = session.tags(c, ch)
        if not tags and op["tag"] in ("last", "first", "random"):
            session.record(c, ch, "reply", "(skipped: no delivery on this channel yet)")
            return
        tag = resolve_tag(tags, op["tag"], rng)
        args = {"basic.ack": (tag, op["multiple"]),
                "basic.nack": (tag, op["multiple"], op["requeue"]),
                "basic.reject": (tag, op["requeue"])}[kind]
        call(c, ch, method(ch, kind, *args) + sync_frame(ch), {"exchange.declare-ok"})
    elif kind == "basic.recover":
        call(c, ch, method(ch, kind, op["requeue"]), {"basic.recover-ok"})
    elif kind == "basic.qos":
        call(c, ch, method(ch, kind, op["size"], op["count"], op["glob"]), {"basic.qos-ok"})
    elif kind == "confirm.select":
        call(c, ch, method(ch, kind, False), {"confirm.select-ok"})
    elif kind in ("tx.select", "tx.commit", "tx.rollback"):
        call(c, ch, method(ch, kind), {kind + "-ok"})
    else:
        raise ValueError(kind)


def _content(ch: int, props: dict, body: bytes) -> bytes:
    """A content header and the body in frames of at most 65,536 octets (below any
    frame_max a broker tunes to), so that a large body takes several."""
    header = frame(FRAME_HEADER, ch,
                   struct.pack(">HHQ", 60, 0, len(body)) + encode_properties(props))
    return header + b"".join(body_frame(ch, body[i:i + 65536])
                             for i in range(0, len(body), 65536))
