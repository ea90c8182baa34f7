"""A model of where every message must be, and a driver that checks a broker against it.

`ModelRun(broker, seed).run()` drives the broker through random valid operations with pika:
a publisher channel with confirms (the only publisher, so publish order is a single sequence),
and worker connections whose channels get, consume with a prefetch (a few consumers no-ack, a
few acking each delivery in its callback), ack, nack, reject, recover, cancel, close channels
and close or drop (socket shut, no connection.close) connections while they hold unacked
deliveries; the checker channel purges queues and reads their counts. Each published copy (one
per queue it was routed to) is ready, unacked on one channel, or settled (acked, dropped by
nack/reject without requeue, purged, or delivered to a no-ack consumer or get).

Deliveries to consumers arrive whenever the broker sends them, so every operation starts at a
sync point: the connections are pumped until no consumer could receive more (each is at its
prefetch, or its queue has nothing ready) and the broker's ready count of every queue equals the
model's. There nothing is in flight and the model is exact, which is what lets it decide the
`redelivered` flag of every delivery and which message a basic.get must return.

Checked, with RabbitMQ 3.10 as the reference:
- a message is delivered only while the model has it ready: never while another channel holds it
  unacked, never after it was acked, dropped or purged (so no duplicate and no double ack);
- `redelivered` is true exactly when the copy was delivered before;
- a consumer never holds more unacked deliveries than its prefetch;
- per queue, copies never delivered before go out in publish order, and basic.get returns the
  ready copy that is first in publish order (RabbitMQ puts a requeued message back at its
  position), with get-ok's message_count the ready count left;
- queue.purge reports and removes exactly the ready copies;
- bodies arrive byte for byte (now and then one of 200 KB, split over several frames);
- delivery tags increase on each channel;
- at the end, after closing every worker connection, each queue drains exactly the copies the
  model has ready, and every copy ever published is accounted for: acked once, dropped, purged,
  auto-acked or drained.

Options (see `ModelRun.__init__`) make variants for hunting: durable queues with persistent
messages, bodies and a backlog large enough for a small memory watermark to spill queues,
other operation weights. A failure raises `ModelViolation` with the seed, the operation log
and the hunt.py command line that replays it.
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pika

from lockgate_harness import Broker, settle, unique

READY, UNACKED, SETTLED = "ready", "unacked", "settled"
SYNC_TIMEOUT = 20.0  # generous: a loaded machine may page spilled queues in slowly
# The tail of the log kept in a failure message; the whole log goes to the file hunt.py writes.
LOG_TAIL = 250
PATTERN = bytes(range(251)) * 1000
DEFAULT_BODY_SIZES = [0, 10, 3000] * 10 + [200_000]
DEFAULT_MAX_READY = 60
DEFAULT_PREFETCHES = [1, 1, 2, 3, 5, 0]


class ModelViolation(AssertionError):
    pass


@dataclass(eq=False)
class Copy:
    """One published message in one queue."""

    mid: str
    queue: str
    seq: int
    body: bytes
    state: str = READY
    delivered: bool = False
    holder: Optional[str] = None
    outcome: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.mid}@{self.queue}"


@dataclass(eq=False)
class Consumer:
    tag: str
    queue: str
    prefetch: int
    auto_ack: bool
    # Acks each delivery in its callback: deliveries and the acks that free their credit
    # cross in the broker while the connections are pumped.
    acks_at_once: bool = False
    held: set = field(default_factory=set)

    def has_credit(self) -> bool:
        return self.auto_ack or self.prefetch == 0 or len(self.held) < self.prefetch


class Chan:
    """A pika channel and what the model knows of it."""

    def __init__(self, name: str, ch):
        self.name = name
        self.ch = ch
        self.unacked: dict[int, tuple[Copy, Optional[Consumer]]] = {}
        self.consumers: dict[str, Consumer] = {}
        self.last_tag = 0
        self.last_fresh: dict[str, int] = {}
        self.consumers_made = 0


class Conn:
    def __init__(self, name: str, conn, chans: list[Chan]):
        self.name = name
        self.conn = conn
        self.chans = chans


class ModelRun:
    def __init__(self, broker: Broker, seed: int, ops: int = 150, workers: int = 3,
                 chans_per_worker: int = 2, weights: Optional[dict[str, int]] = None,
                 body_sizes: Optional[list[int]] = None, max_ready: int = DEFAULT_MAX_READY,
                 persistent: bool = False, prefetches: Optional[list[int]] = None):
        """`weights` overrides the weight of operations by name (`close_connection`, ...);
        `body_sizes` are the sizes a body is drawn from (by default mostly small, and now and
        then one split over several body frames: frame_max is 131072 by default); publishing
        pauses while more than `max_ready` copies are ready; `persistent` declares the queues
        durable and publishes persistent messages, so that the store keeps every copy;
        `prefetches` are the prefetch counts a consumer is drawn from (0 = unlimited)."""
        self.broker = broker
        self.seed = seed
        self.ops = ops
        self.rng = random.Random(seed)
        self.log: list[str] = []
        self.violations: list[str] = []
        self.copies: dict[tuple[str, str], Copy] = {}
        self.published = 0
        self.conn_gen = 0
        prefix = unique(f"model{seed}")
        self.queues = [f"{prefix}-q{i}" for i in range(3)]
        self.fanout = f"{prefix}-fanout"
        self.direct = f"{prefix}-direct"
        q0, q1, q2 = self.queues
        self.routes = [("", q0, [q0]), ("", q1, [q1]), ("", q2, [q2]),
                       (self.fanout, "", [q1, q2]), (self.direct, "both", [q1, q2]),
                       (self.direct, "one", [q2])]
        self.weights = weights or {}
        self.body_sizes = body_sizes or DEFAULT_BODY_SIZES
        self.max_ready = max_ready
        self.persistent = persistent
        self.prefetches = prefetches or DEFAULT_PREFETCHES
        self.n_workers = workers
        self.chans_per_worker = chans_per_worker
        self.pub_conn = None
        self.workers: list[Conn] = []

    # ----- setup and teardown

    def _setup(self) -> None:
        self.pub_conn = self.broker.connect()
        self.pub = self.pub_conn.channel()
        self.pub.confirm_delivery()
        self.check = Chan("check", self.pub_conn.channel())
        ch = self.check.ch
        for q in self.queues:
            ch.queue_declare(q, durable=self.persistent)
        ch.exchange_declare(self.fanout, exchange_type="fanout", durable=self.persistent)
        ch.exchange_declare(self.direct, exchange_type="direct", durable=self.persistent)
        for q in self.queues[1:]:
            ch.queue_bind(q, self.fanout)
            ch.queue_bind(q, self.direct, routing_key="both")
        ch.queue_bind(self.queues[2], self.direct, routing_key="one")
        self.workers = [self._open_conn() for _ in range(self.n_workers)]

    def _open_conn(self) -> Conn:
        self.conn_gen += 1
        name = f"w{self.conn_gen}"
        conn = self.broker.connect()
        chans = [Chan(f"{name}.{i}", conn.channel()) for i in range(self.chans_per_worker)]
        return Conn(name, conn, chans)

    def _teardown(self) -> None:
        for w in self.workers:
            if w.conn.is_open:
                w.conn.close()
        if self.pub_conn is not None and self.pub_conn.is_open:
            ch = self.pub_conn.channel()
            for q in self.queues:
                ch.queue_delete(q)
            ch.exchange_delete(self.fanout)
            ch.exchange_delete(self.direct)
            self.pub_conn.close()

    # ----- model helpers

    def _chans(self) -> list[Chan]:
        return [c for w in self.workers for c in w.chans]

    def _consumers(self) -> list[tuple[Chan, Consumer]]:
        return [(c, k) for c in self._chans() for k in c.consumers.values()]

    def _ready(self, queue: str) -> list[Copy]:
        return sorted((c for c in self.copies.values() if c.queue == queue and c.state == READY),
                      key=lambda c: c.seq)

    def _ready_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.queues, 0)
        for c in self.copies.values():
            if c.state == READY:
                counts[c.queue] += 1
        return counts

    def _violation(self, what: str) -> None:
        self.log.append(f"  VIOLATION {what}")
        self.violations.append(what)

    def _raise_violations(self) -> None:
        if self.violations:
            raise ModelViolation("; ".join(self.violations))

    def _settle_copy(self, copy: Copy, outcome: str) -> None:
        copy.state, copy.holder, copy.outcome = SETTLED, None, outcome

    def _requeue_copy(self, copy: Copy) -> None:
        copy.state, copy.holder = READY, None

    # ----- observing deliveries

    def _observe(self, chan: Chan, queue: str, method, props, body: bytes,
                 consumer: Optional[Consumer], auto_ack: bool, outcome: str = "auto-acked") -> None:
        mid = props.message_id
        tag = method.delivery_tag
        via = consumer.tag if consumer else "get"
        self.log.append(f"  deliver {chan.name}/{via} tag={tag} {mid}@{queue} "
                        f"redelivered={method.redelivered}")
        copy = self.copies.get((mid, queue))
        if copy is None:
            self._violation(f"{chan.name}/{via} got unknown message {mid!r} from {queue}")
            return
        if body != copy.body:
            self._violation(f"{copy} delivered to {chan.name}/{via} with a body of {len(body)} "
                            f"bytes, not the {len(copy.body)} published")
        if tag <= chan.last_tag:
            self._violation(f"{chan.name}: delivery tag {tag} after {chan.last_tag}")
        chan.last_tag = max(chan.last_tag, tag)
        if copy.state == SETTLED:
            self._violation(f"{copy} delivered to {chan.name}/{via} after it was {copy.outcome}")
            return
        if copy.state == UNACKED:
            self._violation(f"{copy} delivered to {chan.name}/{via} while unacked on {copy.holder}")
            return
        if bool(method.redelivered) != copy.delivered:
            self._violation(f"{copy} delivered to {chan.name}/{via} with redelivered="
                            f"{method.redelivered}, but it was "
                            f"{'delivered before' if copy.delivered else 'never delivered'}")
        if not copy.delivered:
            last = chan.last_fresh.get(queue, -1)
            if copy.seq < last:
                self._violation(f"{chan.name}: first delivery of {copy} (seq {copy.seq}) after "
                                f"seq {last} of the same queue")
            chan.last_fresh[queue] = max(last, copy.seq)
        copy.delivered = True
        if auto_ack:
            self._settle_copy(copy, outcome)
            return
        copy.state, copy.holder = UNACKED, f"{chan.name} tag {tag}"
        chan.unacked[tag] = (copy, consumer)
        if consumer is not None:
            consumer.held.add(tag)
            if consumer.prefetch and len(consumer.held) > consumer.prefetch:
                self._violation(f"{chan.name}/{consumer.tag} holds {len(consumer.held)} "
                                f"unacked, prefetch {consumer.prefetch}")
            if consumer.acks_at_once:
                self.log.append(f"  ack at once {chan.name} tag={tag}")
                self._take(chan, tag, False)
                self._settle_copy(copy, "acked")
                chan.ch.basic_ack(tag)

    def _on_message(self, chan: Chan, consumer: Consumer) -> Callable:
        def on_message(_ch, method, props, body):
            self._observe(chan, consumer.queue, method, props, body, consumer, consumer.auto_ack)
        return on_message

    # ----- sync point

    def _all_conns(self) -> list:
        return [self.pub_conn] + [w.conn for w in self.workers]

    def _pump(self) -> None:
        for conn in self._all_conns():
            conn.process_data_events(time_limit=0.001)
        self._raise_violations()

    def _quiescent(self) -> bool:
        ready = self._ready_counts()
        return not any(ready[k.queue] and k.has_credit() for _, k in self._consumers())

    def _broker_counts(self) -> dict[str, int]:
        return {q: self.check.ch.queue_declare(q, passive=True).method.message_count
                for q in self.queues}

    def _check_fresh_order(self) -> None:
        """Copies never delivered are handed out in publish order, so at a sync point every copy
        delivered so far precedes every copy still waiting for its first delivery."""
        for q in self.queues:
            delivered = [c.seq for c in self.copies.values() if c.queue == q and c.delivered]
            fresh = [c.seq for c in self.copies.values()
                     if c.queue == q and c.state == READY and not c.delivered]
            if delivered and fresh and max(delivered) > min(fresh):
                self._violation(f"{q}: seq {min(fresh)} never delivered, but seq "
                                f"{max(delivered)} was")

    def sync(self) -> None:
        """Pump until nothing is in flight and the broker's ready counts equal the model's."""
        deadline = time.monotonic() + SYNC_TIMEOUT
        counts: dict[str, int] = {}
        while True:
            self._pump()
            if self._quiescent():
                counts = self._broker_counts()
                if counts == self._ready_counts():
                    self._check_fresh_order()
                    self._raise_violations()
                    return
            if time.monotonic() > deadline:
                waiting = [f"{c.name}/{k.tag} on {k.queue} holds {len(k.held)}/{k.prefetch}"
                           for c, k in self._consumers() if k.has_credit()]
                raise ModelViolation(
                    f"no sync point within {SYNC_TIMEOUT}s: model ready {self._ready_counts()}, "
                    f"broker ready {counts or '(not read: a consumer should still receive)'}, "
                    f"consumers with credit: {waiting}")

    # ----- operations (each returns False when it does not apply now)

    def op_publish(self) -> bool:
        if sum(self._ready_counts().values()) > self.max_ready:
            return False
        exchange, key, targets = self.rng.choice(self.routes)
        for _ in range(self.rng.randint(1, 4)):
            self.published += 1
            mid = f"s{self.seed}-m{self.published}"
            size = self.rng.choice(self.body_sizes)
            body = mid.encode() + PATTERN[:size]
            self.log.append(f"publish {mid} ({len(body)} B) -> {exchange or '(default)'}/"
                            f"{key or '-'} = {[q[-2:] for q in targets]}")
            for q in targets:
                self.copies[(mid, q)] = Copy(mid, q, self.published, body)
            props = pika.BasicProperties(message_id=mid, headers={"seq": self.published},
                                         delivery_mode=2 if self.persistent else 1)
            self.pub.basic_publish(exchange, key, body, props, mandatory=True)
        return True

    def op_get(self) -> bool:
        chan = self._pick_chan()
        queue = self.rng.choice(self.queues)
        auto_ack = self.rng.random() < 0.3
        self.log.append(f"get {chan.name} {queue[-2:]} auto_ack={auto_ack}")
        self._get(chan, queue, auto_ack)
        return True

    def _get(self, chan: Chan, queue: str, auto_ack: bool, outcome: str = "auto-acked") -> bool:
        ready = self._ready(queue)
        method, props, body = chan.ch.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            if ready:
                self._violation(f"get on {queue} was empty, model has {len(ready)} ready: "
                                f"{[str(c) for c in ready[:5]]}")
            self.log.append("  get-empty")
            return False
        if ready and props.message_id != ready[0].mid:
            self._violation(f"get on {queue} returned {props.message_id}, model expects "
                            f"{ready[0]} (first ready in publish order)")
        if ready and method.message_count != len(ready) - 1:
            self._violation(f"get-ok on {queue}: message_count {method.message_count}, model "
                            f"has {len(ready) - 1} ready after it")
        self._observe(chan, queue, method, props, body, None, auto_ack, outcome)
        return True

    def op_consume(self) -> bool:
        if len(self._consumers()) >= 5:
            return False
        chan = self._pick_chan()
        if len(chan.consumers) >= 2:
            return False
        queue = self.rng.choice(self.queues)
        mode = self.rng.random()
        auto_ack, acks_at_once = mode < 0.05, 0.05 <= mode < 0.15
        prefetch = self.rng.choice(self.prefetches)
        chan.consumers_made += 1
        consumer = Consumer(f"{chan.name}-c{chan.consumers_made}", queue, prefetch, auto_ack,
                            acks_at_once)
        self.log.append(f"consume {consumer.tag} {queue[-2:]} prefetch={prefetch} "
                        f"auto_ack={auto_ack} acks_at_once={acks_at_once}")
        chan.ch.basic_qos(prefetch_count=prefetch)
        chan.consumers[consumer.tag] = consumer
        chan.ch.basic_consume(queue, self._on_message(chan, consumer), auto_ack=auto_ack,
                              consumer_tag=consumer.tag)
        return True

    def op_cancel(self) -> bool:
        consumers = self._consumers()
        if not consumers:
            return False
        chan, consumer = self.rng.choice(consumers)
        # Cancelling leaves the consumer's deliveries unacked on the channel (RabbitMQ).
        self.log.append(f"cancel {consumer.tag} (holds {sorted(consumer.held)})")
        del chan.consumers[consumer.tag]
        chan.ch.basic_cancel(consumer.tag)
        return True

    def _pick_unacked(self) -> Optional[tuple[Chan, int]]:
        chans = [c for c in self._chans() if c.unacked]
        if not chans:
            return None
        chan = self.rng.choice(chans)
        return chan, self.rng.choice(sorted(chan.unacked))

    def _take(self, chan: Chan, tag: int, multiple: bool) -> list[Copy]:
        """Remove the deliveries an ack/nack of `tag` settles from the channel's model."""
        if multiple:
            tags = [t for t in sorted(chan.unacked) if tag == 0 or t <= tag]
        else:
            tags = [tag]
        taken = []
        for t in tags:
            copy, consumer = chan.unacked.pop(t)
            if consumer is not None:
                consumer.held.discard(t)
            taken.append(copy)
        return taken

    def op_ack(self) -> bool:
        picked = self._pick_unacked()
        if picked is None:
            return False
        chan, tag = picked
        multiple = self.rng.random() < 0.3
        if multiple and self.rng.random() < 0.2:
            tag = 0
        copies = self._take(chan, tag, multiple)
        self.log.append(f"ack {chan.name} tag={tag} multiple={multiple} "
                        f"-> {[str(c) for c in copies]}")
        for copy in copies:
            self._settle_copy(copy, "acked")
        chan.ch.basic_ack(tag, multiple=multiple)
        return True

    def op_nack(self) -> bool:
        picked = self._pick_unacked()
        if picked is None:
            return False
        chan, tag = picked
        multiple = self.rng.random() < 0.4
        if multiple and self.rng.random() < 0.2:
            tag = 0
        requeue = self.rng.random() < 0.7
        copies = self._take(chan, tag, multiple)
        self.log.append(f"nack {chan.name} tag={tag} multiple={multiple} requeue={requeue} "
                        f"-> {[str(c) for c in copies]}")
        for copy in copies:
            if requeue:
                self._requeue_copy(copy)
            else:
                self._settle_copy(copy, "dropped")
        chan.ch.basic_nack(tag, multiple=multiple, requeue=requeue)
        return True

    def op_reject(self) -> bool:
        picked = self._pick_unacked()
        if picked is None:
            return False
        chan, tag = picked
        requeue = self.rng.random() < 0.7
        (copy,) = self._take(chan, tag, False)
        self.log.append(f"reject {chan.name} tag={tag} requeue={requeue} -> {copy}")
        if requeue:
            self._requeue_copy(copy)
        else:
            self._settle_copy(copy, "dropped")
        chan.ch.basic_reject(tag, requeue=requeue)
        return True

    def _requeue_all(self, chan: Chan) -> list[Copy]:
        copies = [chan.unacked.pop(t)[0] for t in sorted(chan.unacked)]
        for copy in copies:
            self._requeue_copy(copy)
        for consumer in chan.consumers.values():
            consumer.held.clear()
        return copies

    def op_recover(self) -> bool:
        chans = [c for c in self._chans() if c.unacked]
        if not chans:
            return False
        chan = self.rng.choice(chans)
        copies = self._requeue_all(chan)
        self.log.append(f"recover {chan.name} requeue=True -> {[str(c) for c in copies]}")
        chan.ch.basic_recover(requeue=True)
        return True

    def op_close_channel(self) -> bool:
        worker = self.rng.choice(self.workers)
        i = self.rng.randrange(len(worker.chans))
        chan = worker.chans[i]
        copies = self._requeue_all(chan)
        self.log.append(f"close channel {chan.name} (consumers {sorted(chan.consumers)}) "
                        f"-> requeue {[str(c) for c in copies]}")
        chan.consumers.clear()
        chan.ch.close()
        worker.chans[i] = Chan(f"{chan.name}'", worker.conn.channel())
        return True

    def op_close_connection(self) -> bool:
        i = self.rng.randrange(len(self.workers))
        self._close_worker(self.workers[i], "close connection")
        self.workers[i] = self._open_conn()
        self.log.append(f"  opened {self.workers[i].name}")
        return True

    def op_drop_connection(self) -> bool:
        i = self.rng.randrange(len(self.workers))
        self._close_worker(self.workers[i], "drop connection", drop=True)
        self.workers[i] = self._open_conn()
        self.log.append(f"  opened {self.workers[i].name}")
        return True

    def _close_worker(self, worker: Conn, label: str, drop: bool = False) -> None:
        """Close a worker connection; `drop` shuts its socket instead of connection.close, as
        a client that crashes (the broker reads EOF)."""
        # Channels go one at a time (pika closes them in turn; a broker tears down a dropped
        # connection's channels in turn), so what the first requeues may go to a no-ack
        # consumer of a channel not closed yet, whose delivery nobody reads: the message is
        # gone, with RabbitMQ too. Cancelling the no-ack consumers first keeps the model exact;
        # a no-ack consumer on a closed channel is still covered by op_close_channel.
        for chan in worker.chans:
            for consumer in [k for k in chan.consumers.values() if k.auto_ack]:
                self.log.append(f"{label} {worker.name}: first cancel no-ack {consumer.tag}")
                del chan.consumers[consumer.tag]
                chan.ch.basic_cancel(consumer.tag)
        copies = [c for chan in worker.chans for c in self._requeue_all(chan)]
        self.log.append(f"{label} {worker.name} -> requeue {[str(c) for c in copies]}")
        for chan in worker.chans:
            chan.consumers.clear()
        if drop:
            # pika has no public handle on its socket; this connection object is not used again.
            sock = worker.conn._impl._transport._sock
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        else:
            worker.conn.close()

    def op_purge(self) -> bool:
        queue = self.rng.choice(self.queues)
        ready = self._ready(queue)
        self.log.append(f"purge {queue[-2:]} -> model {[str(c) for c in ready]}")
        purged = self.check.ch.queue_purge(queue).method.message_count
        if purged != len(ready):
            self._violation(f"purge of {queue} removed {purged}, model had {len(ready)} ready")
        for copy in ready:
            self._settle_copy(copy, "purged")
        return True

    def _pick_chan(self) -> Chan:
        return self.rng.choice(self._chans())

    # ----- the run

    def _ops(self) -> list[tuple[int, Callable[[], bool]]]:
        weights = {"publish": 14, "get": 10, "consume": 5, "cancel": 3, "ack": 12, "nack": 6,
                   "reject": 4, "recover": 2, "close_channel": 2, "close_connection": 1,
                   "drop_connection": 1, "purge": 1}
        weights.update(self.weights)
        return [(w, getattr(self, f"op_{name}")) for name, w in weights.items() if w > 0]

    def _step(self) -> None:
        ops = self._ops()
        weights = [w for w, _ in ops]
        while True:
            (_, op), = self.rng.choices(ops, weights)
            if op():
                return

    def _finish(self) -> dict[str, int]:
        self.sync()
        # Nothing may arrive beyond what the model expects: no consumer has credit for a ready
        # message now, so any delivery is a duplicate or over the prefetch.
        self.log.append("final: settle")
        settle(self._all_conns(), 0.2)
        self._raise_violations()
        while self.workers:
            # What one close requeues may go to a consumer on a connection still open: a sync
            # point before each close sees those deliveries before the next close drops them.
            self.sync()
            self._close_worker(self.workers.pop(0), "final: close connection")
        self.sync()
        for queue in self.queues:
            self.log.append(f"final: drain {queue[-2:]}")
            while self._get(self.check, queue, auto_ack=True, outcome="drained"):
                self._raise_violations()
            self._raise_violations()
        outcomes: dict[str, int] = {}
        for copy in self.copies.values():
            if copy.state != SETTLED:
                self._violation(f"{copy} lost: model has it {copy.state}, the broker drained "
                                "its queue without it")
            outcomes[copy.outcome or copy.state] = outcomes.get(copy.outcome or copy.state, 0) + 1
        self.sync()
        self._raise_violations()
        return outcomes

    def run(self) -> dict[str, int]:
        """Run the operations and the final drain; return how many copies ended which way."""
        try:
            self._setup()
            for i in range(self.ops):
                self.sync()
                self.log.append(f"#{i}")
                self._step()
            return self._finish()
        except Exception as exc:
            raise ModelViolation(self.report(exc)) from exc
        finally:
            try:
                self._teardown()
            except Exception:  # noqa: BLE001 - a broken broker must not hide the report
                pass

    def replay_args(self) -> str:
        args = [f"--seeds {self.seed}", f"--ops {self.ops}"]
        if self.weights:
            args.append("--weights " + ",".join(f"{k}={v}" for k, v in self.weights.items()))
        if self.body_sizes != DEFAULT_BODY_SIZES:
            args.append("--body-sizes " + ",".join(map(str, self.body_sizes)))
        if self.max_ready != DEFAULT_MAX_READY:
            args.append(f"--max-ready {self.max_ready}")
        if self.persistent:
            args.append("--persistent")
        if self.prefetches != DEFAULT_PREFETCHES:
            args.append("--prefetches " + ",".join(map(str, self.prefetches)))
        if (self.n_workers, self.chans_per_worker) != (3, 2):
            args.append(f"--workers {self.n_workers} --channels {self.chans_per_worker}")
        return " ".join(args)

    def report(self, exc: BaseException) -> str:
        tail = self.log[-LOG_TAIL:]
        return (f"model run failed: seed={self.seed} ops={self.ops} persistent={self.persistent} "
                f"published={self.published}\n"
                f"{type(exc).__name__}: {exc}\n"
                f"replay: python tests/model/hunt.py {self.replay_args()}\n"
                f"operation log ({len(tail)} of {len(self.log)} lines):\n" + "\n".join(tail))
