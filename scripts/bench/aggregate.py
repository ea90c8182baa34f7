#!/usr/bin/env python3
"""Summarise lockgate-bench JSON lines from scripts/bench-vs-rabbitmq.sh.

    aggregate.py RESULTS.jsonl META.json OUT_DIR

Reads every record (one per scenario case, broker and round), takes for each
(scenario, case, metric, broker) the median with min and max over rounds, and
writes OUT_DIR/results.md (markdown ready for the README) and
OUT_DIR/ratios.svg (a chart of lockgate/RabbitMQ ratios). Prints the markdown
on stdout. Standard library only.
"""

import json
import math
import statistics
import sys
from collections import OrderedDict
from xml.sax.saxutils import escape

LG = "lockgate"
RMQ = "rabbitmq"


def load(path):
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                records.append(json.loads(line))
    return records


def spread(values):
    if not values:
        return None
    return (statistics.median(values), min(values), max(values))


def fmt(v):
    if v is None:
        return "–"
    a = abs(v)
    if a >= 10000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_spread(s):
    if s is None:
        return "–"
    med, lo, hi = s
    return f"{fmt(med)} ({fmt(lo)}–{fmt(hi)})"


def collect(records):
    """(scenario, case, metric) -> {broker: [values]}, plus units/direction,
    per-case resource samples and failure counts."""
    metrics = OrderedDict()
    info = {}
    resources = OrderedDict()
    failed = {}
    for r in records:
        label = r.get("label")
        key_case = (r["scenario"], r["case"])
        if not r.get("ok", False):
            failed[(key_case, label)] = failed.get((key_case, label), 0) + 1
        for m in r.get("metrics", []):
            key = (r["scenario"], r["case"], m["name"])
            metrics.setdefault(key, {}).setdefault(label, []).append(m["value"])
            info[key] = (m["unit"], m["higher_is_better"])
        res = resources.setdefault(key_case, {}).setdefault(
            label, {"cpu": [], "rss": [], "bench_cpu": []}
        )
        if r.get("broker"):
            res["cpu"].append(r["broker"]["cpu_pct"])
            res["rss"].append(r["broker"]["rss_max_mib"])
        if r.get("bench"):
            res["bench_cpu"].append(r["bench"]["cpu_pct"])
    return metrics, info, resources, failed


def ratio_of(by_broker):
    lg = spread(by_broker.get(LG, []))
    rmq = spread(by_broker.get(RMQ, []))
    if lg is None or rmq is None or rmq[0] == 0:
        return None
    return lg[0] / rmq[0]


def markdown(records, meta):
    metrics, info, resources, failed = collect(records)
    rounds = max((r.get("round", 1) for r in records), default=0)
    out = []
    out.append(
        f"lockgate vs RabbitMQ {meta.get('rabbitmq_version', '')}, "
        f"{meta.get('date', '')}, mode `{meta.get('mode', '')}`, {rounds} rounds "
        f"(A B alternated), median (min–max). Machine: {meta.get('machine', '')}."
    )
    out.append("")
    out.append("| scenario | case | metric | lockgate | RabbitMQ | lockgate/RabbitMQ |")
    out.append("|---|---|---|---:|---:|---:|")
    for (scenario, case, name), by_broker in metrics.items():
        unit, higher = info[(scenario, case, name)]
        ratio = ratio_of(by_broker)
        better = ""
        if ratio is not None:
            good = ratio > 1 if higher else ratio < 1
            better = " ✓" if good and abs(math.log(ratio)) > 0.05 else ""
        arrow = "↑" if higher else "↓"
        out.append(
            f"| {scenario} | {case} | {name} ({unit}, {arrow}) | "
            f"{fmt_spread(spread(by_broker.get(LG, [])))} | "
            f"{fmt_spread(spread(by_broker.get(RMQ, [])))} | "
            f"{'–' if ratio is None else f'{ratio:.3g}×'}{better} |"
        )
    out.append("")
    out.append("Broker resources during each measured window (median peak RSS, median CPU % of one")
    out.append("core), and the bench's own CPU, to tell which side was the bottleneck:")
    out.append("")
    out.append("| scenario | case | lockgate RSS MiB | lockgate CPU | RabbitMQ RSS MiB | RabbitMQ CPU | bench CPU (lg / rmq) |")
    out.append("|---|---|---:|---:|---:|---:|---:|")
    for (scenario, case), by_broker in resources.items():
        lg = by_broker.get(LG, {"cpu": [], "rss": [], "bench_cpu": []})
        rmq = by_broker.get(RMQ, {"cpu": [], "rss": [], "bench_cpu": []})

        def med(v, suffix=""):
            return "–" if not v else f"{statistics.median(v):.0f}{suffix}"

        out.append(
            f"| {scenario} | {case} | {med(lg['rss'])} | {med(lg['cpu'], '%')} | "
            f"{med(rmq['rss'])} | {med(rmq['cpu'], '%')} | "
            f"{med(lg['bench_cpu'], '%')} / {med(rmq['bench_cpu'], '%')} |"
        )
    out.append("")
    out.append("| broker | idle RSS (MiB) | start to accepting connections (s) |")
    out.append("|---|---:|---:|")
    for label, name in ((LG, "lockgate"), (RMQ, "RabbitMQ")):
        b = meta.get(label, {})
        out.append(
            f"| {name} | {fmt(b.get('idle_rss_mib'))} | {fmt(b.get('start_s'))} |"
        )
    if failed:
        out.append("")
        out.append("**Verification failures** (runs that lost, duplicated, corrupted or misrouted")
        out.append("messages, or failed outright; their figures are not results):")
        out.append("")
        for ((scenario, case), label), n in failed.items():
            out.append(f"- {label}: {scenario} {case}: {n} run(s)")
    errors = meta.get("errors", [])
    if errors:
        out.append("")
        out.append("Runs that exited with an error: " + ", ".join(errors))
    out.append("")
    out.append("↑ higher is better, ↓ lower is better; ✓ marks where lockgate is ahead by more than 5%.")
    out.append("Broker and bench share the machine's cores, so a broker that needs less CPU leaves more")
    out.append("to the load generator. RabbitMQ figures are for its `beam.smp` process; its start time")
    out.append("is measured around `scripts/rabbitmq.sh start`, which polls every 0.5 s.")
    return "\n".join(out) + "\n"


def svg(records):
    metrics, info, _, _ = collect(records)
    rows = []
    for key, by_broker in metrics.items():
        ratio = ratio_of(by_broker)
        if ratio is None or ratio <= 0:
            continue
        scenario, case, name = key
        _, higher = info[key]
        rows.append((f"{scenario} {case} {name}", ratio, higher))
    bar_h, gap, left, right, top = 18, 6, 330, 90, 50
    plot_w = 420
    height = top + len(rows) * (bar_h + gap) + 40
    width = left + plot_w + right
    lo = min([r for _, r, _ in rows] + [0.5])
    hi = max([r for _, r, _ in rows] + [2.0])
    lmin, lmax = math.log10(lo) - 0.05, math.log10(hi) + 0.05

    def x(v):
        return left + (math.log10(v) - lmin) / (lmax - lmin) * plot_w

    p = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
        "lockgate / RabbitMQ (median, log scale)</text>",
        f'<text x="{width / 2}" y="37" text-anchor="middle" fill="#555">'
        "green: lockgate better (higher rate, or lower latency/memory); red: RabbitMQ better</text>",
    ]
    decades = (0.001, 0.01, 0.1, 1, 10, 100)
    ticks = decades if hi / lo > 200 else decades + (0.2, 0.5, 2, 5, 20, 50)
    for tick in ticks:
        if lo * 0.8 <= tick <= hi * 1.25:
            tx = x(tick)
            p.append(
                f'<line x1="{tx:.1f}" y1="{top - 5}" x2="{tx:.1f}" y2="{height - 30}" '
                f'stroke="{"#000" if tick == 1 else "#ddd"}"/>'
            )
            p.append(
                f'<text x="{tx:.1f}" y="{height - 15}" text-anchor="middle">{tick:g}×</text>'
            )
    one = x(1)
    for i, (label, ratio, higher) in enumerate(rows):
        y = top + i * (bar_h + gap)
        good = ratio >= 1 if higher else ratio <= 1
        color = "#2a9d4b" if good else "#c8443a"
        x0, x1 = sorted((one, x(ratio)))
        suffix = "" if higher else " ↓"
        p.append(
            f'<text x="{left - 8}" y="{y + bar_h - 5}" text-anchor="end">'
            f"{escape(label)}{suffix}</text>"
        )
        p.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar_h}" '
            f'fill="{color}"/>'
        )
        p.append(
            f'<text x="{max(x(ratio), one) + 4:.1f}" y="{y + bar_h - 5}">{ratio:.3g}×</text>'
        )
    p.append("</svg>")
    return "\n".join(p) + "\n"


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    records = load(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        meta = json.load(f)
    out_dir = sys.argv[3]
    md = markdown(records, meta)
    with open(f"{out_dir}/results.md", "w", encoding="utf-8") as f:
        f.write(md)
    with open(f"{out_dir}/ratios.svg", "w", encoding="utf-8") as f:
        f.write(svg(records))
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
