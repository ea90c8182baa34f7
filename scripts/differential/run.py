"""Differential conformance: the same random AMQP sessions against RabbitMQ and lockgate.

    /work/main/.venv/bin/python scripts/differential/run.py --seeds 1-100 [--ops 60]
        [--out DIR] [--rabbitmq-url amqp://guest:guest@127.0.0.1:PORT/]
        [--lockgate-url amqp://...] [--quiet 0.05]

Without --rabbitmq-url it starts a private RabbitMQ node (scripts/rabbitmq.sh, directory
$LOCKGATE_RABBITMQ_DIR or a temporary one) and stops it at the end; without --lockgate-url it
starts $LOCKGATE_BIN. Each seed's sequence runs against both brokers at once; a seed whose
normalised transcripts differ gets DIR/seed-N.diff (a unified diff, RabbitMQ first) and
DIR/seed-N.full (the operations, then both raw transcripts: every event with the operation
during which it was read). The exit status is the number of diverging seeds (capped at 100).
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

from lockgate_harness import LockgateProcess, parse_seeds  # noqa: E402
from ops import Names, describe, execute, generate  # noqa: E402
from session import Session  # noqa: E402
from wire import method  # noqa: E402

# Server-generated queue names and consumer tags, and direct reply-to addresses (whose
# suffix is the broker's own encoding).
GENERATED = re.compile(r"amq\.(gen|ctag)-[A-Za-z0-9_\-]+"
                       r"|amq\.rabbitmq\.(reply)-to\.[A-Za-z0-9_\-.=+/]+")
# When a message was dead-lettered (x-death's `time`), in seconds: timing.
DEATH_TIME = re.compile(r"time=T:\d+")


def host_port(url: str) -> tuple[str, int]:
    u = urllib.parse.urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 5672


def run_sequence(host: str, port: int, seed: int, ops: list[dict], quiet: float) -> Session:
    session = Session(host, port, quiet)
    for i, op in enumerate(ops):
        session.op = i
        execute(session, op, random.Random(seed * 100003 + i))
        session.settle()
    # What the brokers do while the connections close one after the other (requeue a closed
    # connection's unacked messages to the next one's consumers) is a race: not recorded.
    session.recording = False
    session.close_all()
    clean_up(host, port, Names(seed), session.generated, ops)
    return session


def clean_up(host: str, port: int, names: Names, generated: list[str],
             ops: list[dict]) -> None:
    """Deletes what the sequence may have left (durable or not), and the bindings it may have
    made between the predeclared amq.* exchanges, outside any transcript."""
    session = Session(host, port, 0)

    def send(name: str, *args) -> None:
        c = session.channel("cleanup", 1)  # again after a refusal closed it
        session.call(c, 1, method(1, name, *args), {name + "-ok"})

    for op in ops:
        if op["kind"] == "exchange.bind":
            send("exchange.unbind", 0, op["dest"], op["source"], op["key"], False, op["args"])
    for queue in names.queues + names.quorum_queues + [names.rare_queue] + generated:
        send("queue.delete", 0, queue, False, False, False)
    for exchange in names.exchanges + [names.rare_exchange]:
        send("exchange.delete", 0, exchange, False, False)
    session.close_all()


def normalise(session: Session, ops: list[dict]) -> list[str]:
    """The comparable transcript: each operation with the replies it got, then each channel's
    asynchronous events in order, publisher confirms apart and one per tag, deliveries apart
    per consumer and without their delivery tags. Server-generated names become
    <gen1>, <ctag1>, ..."""
    mapping: dict[str, str] = {}

    def names(text: str) -> str:
        def sub(m: re.Match) -> str:
            if m.group(0) not in mapping:
                kind = m.group(1) or m.group(2)
                count = sum(1 for v in mapping.values() if v.startswith(f"<{kind}"))
                mapping[m.group(0)] = f"<{kind}{count + 1}>"
            return mapping[m.group(0)]
        return DEATH_TIME.sub("time=T:_", GENERATED.sub(sub, text))

    lines: list[str] = []
    replies = [e for e in session.events if e.kind == "reply"]
    for i, op in enumerate(ops):
        lines.append(f"#{i} {describe(op)}")
        lines += [f"    {e.conn}/{e.channel} {names(e.text)}" for e in replies if e.op == i]
    streams: dict[tuple[str, int, str], list[str]] = {}
    confirmed: dict[tuple[str, int], set[int]] = {}
    for e in session.events:
        if e.kind != "async":
            continue
        if e.text.startswith(("basic.ack ", "basic.nack ")):
            # A broker may confirm several publishes in one multiple ack, or one by one, and
            # before or after the returns and deliveries of later publishes.
            stream = streams.setdefault((e.conn, e.channel, "confirms"), [])
            kind, tag, multiple = e.text.split(" ")[:3]
            done = confirmed.setdefault((e.conn, e.channel), set())
            tags = range(1, int(tag) + 1) if multiple == "True" else [int(tag)]
            stream += [f"{kind} {t}" for t in tags if t not in done]
            done.update(tags)
        elif e.text.startswith("basic.deliver "):
            # Deliveries from different queues to one channel interleave by timing, and take
            # delivery tags in that order: each consumer's own, without the tag.
            _, consumer, _tag, rest = names(e.text).split(" ", 3)
            streams.setdefault((e.conn, e.channel, f"consumer {consumer}"), []).append(
                f"basic.deliver {consumer} _ {rest}")
        else:
            streams.setdefault((e.conn, e.channel, ""), []).append(names(e.text))
    for (conn, ch, part), events in sorted(streams.items()):
        lines.append(f"async {conn}/{ch} {part}".rstrip())
        lines += [f"    {text}" for text in events]
    return lines


def full(session: Session) -> list[str]:
    return [f"#{e.op} {e.conn}/{e.channel} {e.kind} {e.text}" for e in session.events]


def run_seed(seed: int, count: int, quiet: float, brokers: dict[str, tuple[str, int]],
             out: Path) -> bool:
    ops = generate(seed, count)
    sessions: dict[str, Session] = {}
    errors: dict[str, BaseException] = {}

    def one(name: str) -> None:
        try:
            sessions[name] = run_sequence(*brokers[name], seed, ops, quiet)
        except Exception as exc:  # noqa: BLE001 - reported with the seed below
            errors[name] = exc

    threads = [threading.Thread(target=one, args=(name,)) for name in brokers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"seed {seed}: {errors}")
    rabbit, lockgate = (normalise(sessions[n], ops) for n in ("rabbitmq", "lockgate"))
    if rabbit == lockgate:
        return True
    (out / f"seed-{seed}.diff").write_text("\n".join(difflib.unified_diff(
        rabbit, lockgate, "rabbitmq", "lockgate", n=6, lineterm="")) + "\n")
    (out / f"seed-{seed}.full").write_text(
        "=== operations\n" + "\n".join(f"#{i} {describe(op)}" for i, op in enumerate(ops))
        + "\n=== rabbitmq\n" + "\n".join(full(sessions["rabbitmq"]))
        + "\n=== lockgate\n" + "\n".join(full(sessions["lockgate"])) + "\n")
    return False


def start_rabbitmq() -> tuple[str, int]:
    env = dict(os.environ)
    env.setdefault("LOCKGATE_RABBITMQ_DIR", tempfile.mkdtemp(prefix="differential-rmq-"))
    port = subprocess.run([str(ROOT / "scripts" / "rabbitmq.sh"), "start"], env=env,
                          check=True, capture_output=True, text=True).stdout.strip()
    return env["LOCKGATE_RABBITMQ_DIR"], int(port)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="1-20")
    p.add_argument("--ops", type=int, default=60, help="operations per sequence")
    p.add_argument("--out", type=Path, default=Path("differential-out"))
    p.add_argument("--rabbitmq-url")
    p.add_argument("--lockgate-url")
    p.add_argument("--quiet", type=float, default=0.05,
                   help="seconds without a frame after which an operation has settled")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rabbit_dir = None
    process = None
    try:
        if a.rabbitmq_url:
            rabbit = host_port(a.rabbitmq_url)
        else:
            rabbit_dir, port = start_rabbitmq()
            rabbit = ("127.0.0.1", port)
        if a.lockgate_url:
            lockgate = host_port(a.lockgate_url)
        else:
            process = LockgateProcess(log_level="info")
            lockgate = process.addr
        failed = 0
        for seed in parse_seeds(a.seeds):
            same = run_seed(seed, a.ops, a.quiet, {"rabbitmq": rabbit, "lockgate": lockgate},
                            a.out)
            failed += not same
            print(f"seed {seed}: {'same' if same else 'DIFFERENT'}", flush=True)
        print(f"{failed} of {len(parse_seeds(a.seeds))} seeds differ (diffs in {a.out})")
        return min(failed, 100)
    finally:
        if process is not None:
            process.stop()
        if rabbit_dir is not None:
            subprocess.run([str(ROOT / "scripts" / "rabbitmq.sh"), "stop", str(rabbit[1])],
                           env=dict(os.environ, LOCKGATE_RABBITMQ_DIR=rabbit_dir), check=False,
                           capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
