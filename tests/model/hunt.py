"""Run the model test over many seeds, outside CI, to hunt for defects.

    python tests/model/hunt.py --seeds 1-200 [--ops 150] [--weights close_connection=5,recover=4]
                               [--persistent] [--config FILE] [--url amqp://...] [--log-dir DIR]
                               (--help lists the rest)

Without --url it starts the lockgate binary ($LOCKGATE_BIN) once and runs every seed against it.
A failing seed's full operation log is written to DIR/seed-N.log; the exit status is the number
of failing seeds (capped at 100), or 101 after a hang (DIR/seed-N.hang holds both logs).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import _broker_from_url  # noqa: E402
from lockgate_harness import LockgateProcess, parse_seeds  # noqa: E402
from queue_model import ModelRun, ModelViolation  # noqa: E402


def report_hang(run: ModelRun, process, path: Path) -> None:
    broker_log = process.log()[-20000:] if process is not None else "(not started here)"
    path.write_text(f"seed {run.seed} hung; replay: {run.replay_args()}\n\noperation log:\n"
                    + "\n".join(run.log[-400:]) + f"\n\nbroker log tail:\n{broker_log}\n")
    print(f"seed {run.seed}: HANG (log: {path})", flush=True)
    if process is not None:
        process.proc.kill()
        process.stop()
    os._exit(101)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", default="1-200", help="e.g. 1-200 or 3,17,40-45")
    ap.add_argument("--ops", type=int, default=150)
    ap.add_argument("--weights", default="",
                    help="operation weights to override, e.g. close_channel=6,purge=0")
    ap.add_argument("--body-sizes", help="comma-separated body sizes to draw from")
    ap.add_argument("--max-ready", type=int, default=60)
    ap.add_argument("--prefetches", help="comma-separated prefetch counts to draw from (0 = "
                    "unlimited); leave 0 out when a small memory watermark must not block")
    ap.add_argument("--workers", type=int, default=3, help="worker connections")
    ap.add_argument("--channels", type=int, default=2, help="channels per worker connection")
    ap.add_argument("--persistent", action="store_true",
                    help="durable queues and persistent messages")
    ap.add_argument("--config", type=Path, help="a lockgate config file for the process started")
    ap.add_argument("--url", help="an already running broker (e.g. RabbitMQ)")
    ap.add_argument("--log-dir", default=".", type=Path)
    ap.add_argument("--hang-after", type=float, default=120,
                    help="seconds a seed may take before it is reported as a hang")
    args = ap.parse_args()
    weights = {k: int(v) for k, _, v in (w.partition("=") for w in args.weights.split(",") if w)}
    config = args.config.read_text() if args.config else None
    sizes = [int(x) for x in args.body_sizes.split(",")] if args.body_sizes else None
    process = None if args.url else LockgateProcess(config=config, log_level="info")
    failed = []
    started = time.monotonic()
    try:
        for seed in parse_seeds(args.seeds):
            if process is not None and not process.alive():
                print(f"lockgate exited; log tail:\n{process.log()[-4000:]}")
                return 100
            broker = _broker_from_url(args.url) if args.url else process.broker()
            run = ModelRun(broker, seed, ops=args.ops, weights=weights, body_sizes=sizes,
                           max_ready=args.max_ready, persistent=args.persistent,
                           workers=args.workers, chans_per_worker=args.channels,
                           prefetches=[int(x) for x in args.prefetches.split(",")]
                           if args.prefetches else None)
            # A broker that stops answering blocks pika without a timeout: dump what is known.
            watchdog = threading.Timer(args.hang_after, report_hang,
                                       (run, process, args.log_dir / f"seed-{seed}.hang"))
            watchdog.start()
            try:
                outcomes = run.run()
            except ModelViolation as exc:
                watchdog.cancel()
                failed.append(seed)
                path = args.log_dir / f"seed-{seed}.log"
                path.write_text(f"{exc}\n\nfull log:\n" + "\n".join(run.log) + "\n")
                first = str(exc).splitlines()[1]
                print(f"seed {seed}: FAIL {first} (log: {path})", flush=True)
                continue
            watchdog.cancel()
            print(f"seed {seed}: ok {outcomes}", flush=True)
    finally:
        if process is not None:
            process.stop()
    print(f"{len(failed)} failing seeds {failed} in {time.monotonic() - started:.1f}s")
    return min(len(failed), 100)


if __name__ == "__main__":
    sys.exit(main())
