#!/usr/bin/env python3
"""Turns the raw output of bench/run.sh into bench/results/latest.{json,md}.

Stdlib only. Input (the --raw directory):
  meta.txt          key=value lines written by run.sh (rounds, orders, RSS, versions, skips)
  A/r<R>_<cand>.txt wrk --latency output, scenario A, round R
  B/r<R>_<cand>.json oha JSON output, scenario B, round R

Per scenario and candidate: the median across rounds and the min-max spread of each metric.
Ratios (weft/direct, weft/envoy, weft/nginx, weft/haproxy; the one-Wasm-plugin ones
weft-wasm/envoy-wasm, weft-wasm/weft and envoy-wasm/envoy; each/direct) are computed within each
round, where both sides ran in the same round under the same machine conditions, then medianed.
Also: RSS per process (idle, after load, peak), the RSS cost of the plugin (weft-wasm minus weft,
envoy-wasm minus envoy) and each process's start-up time (spawn -> first 200 through it).
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

CANDIDATES = ["direct", "weft", "weft-wasm", "envoy", "envoy-wasm", "nginx", "haproxy"]
PROXIES = [c for c in CANDIDATES if c != "direct"]
# The one-Wasm-plugin scenario: (with plugin, without plugin).
PLUGIN_PAIRS = [("weft-wasm", "weft"), ("envoy-wasm", "envoy")]
# RSS deltas: the pairs above, plus the warm-cache restart of weft-wasm (idle only).
RSS_DELTAS = PLUGIN_PAIRS + [("weft-wasm-warm", "weft")]

SCENARIOS = {
    "A": {
        "title": "Scenario A: HTTP/1.1 small responses, max throughput (wrk)",
        "metrics": [("rps", "req/s", True), ("p50_ms", "p50 ms", False), ("p99_ms", "p99 ms", False)],
    },
    "B": {
        "title": "Scenario B: latency at a fixed rate (oha)",
        "metrics": [
            ("p50_ms", "p50 ms", False),
            ("p99_ms", "p99 ms", False),
            ("p999_ms", "p99.9 ms", False),
            ("rps", "req/s", True),
        ],
    },
}

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk_time_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unrecognised wrk time {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(text):
    """Returns {rps, p50_ms, p99_ms, requests, errors} or raises ValueError."""
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if not m:
        raise ValueError("no Requests/sec line")
    out = {"rps": float(m.group(1))}
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if not m:
            raise ValueError(f"no {pct}% latency line (was --latency given?)")
        out[key] = wrk_time_ms(m.group(1))
    m = re.search(r"^\s*(\d+) requests in", text, re.M)
    out["requests"] = int(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(g) for g in m.groups())
    out["errors"] = errors
    return out


def parse_oha(text):
    """Returns {rps, p50_ms, p99_ms, p999_ms, requests, errors} or raises ValueError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    pct = data.get("latencyPercentiles") or {}
    summary = data.get("summary") or {}

    def secs(key):
        v = pct.get(key)
        if v is None:
            raise ValueError(f"no latencyPercentiles.{key}")
        return float(v) * 1e3

    codes = data.get("statusCodeDistribution") or {}
    ok = sum(n for code, n in codes.items() if str(code).startswith(("2", "3")))
    bad = sum(n for code, n in codes.items() if not str(code).startswith(("2", "3")))
    # oha cancels the requests still in flight when -z runs out; those are not failures.
    dist = data.get("errorDistribution") or {}
    aborted = sum(n for k, n in dist.items() if "deadline" in k)
    errs = sum(dist.values()) - aborted
    return {
        "rps": float(summary.get("requestsPerSec") or 0.0),
        "p50_ms": secs("p50"),
        "p99_ms": secs("p99"),
        "p999_ms": secs("p99.9"),
        "requests": ok + bad,
        "errors": bad + errs,
        "aborted_at_deadline": aborted,
    }


def read_meta(path):
    meta = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                meta[k.strip()] = v.strip()
    return meta


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def collect(raw, scenario, rounds):
    """{cand: {round: metrics}} plus a list of problems."""
    runs, problems = {}, []
    ext, parser = (".txt", parse_wrk) if scenario == "A" else (".json", parse_oha)
    for r in range(1, rounds + 1):
        for c in CANDIDATES:
            f = raw / scenario / f"r{r}_{c}{ext}"
            if not f.exists():
                continue
            try:
                m = parser(f.read_text(errors="replace"))
            except ValueError as e:
                problems.append(f"{scenario} round {r} {c}: unparsable output ({e})")
                continue
            if m["errors"]:
                problems.append(f"{scenario} round {r} {c}: {m['errors']} errors / non-2xx responses")
            runs.setdefault(c, {})[r] = m
    return runs, problems


def ratio_pairs(present):
    pairs = [("weft", other) for other in ["direct", "envoy", "nginx", "haproxy"]]
    pairs += [("weft-wasm", "envoy-wasm")] + PLUGIN_PAIRS
    pairs += [(c, "direct") for c in ["envoy", "nginx", "haproxy"]]
    return [(a, b) for a, b in pairs if a in present and b in present]


def analyze(raw):
    meta = read_meta(raw / "meta.txt")
    rounds = int(meta.get("rounds", "1"))
    out = {
        "meta": {
            k: v
            for k, v in meta.items()
            if not k.startswith(("rss_", "skip", "exited", "order.", "startup_ms."))
        },
        "skipped": {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("skip.")},
        "exited": {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("exited.")},
        "scenarios": {},
        "rss_kb": {},
        "rss_plugin_delta_kb": {},
        "startup_ms": {},
        "problems": [],
    }
    for s, spec in SCENARIOS.items():
        if f"skip_scenario.{s}" in meta:
            out["scenarios"][s] = {"title": spec["title"], "skipped": meta[f"skip_scenario.{s}"]}
            continue
        runs, problems = collect(raw, s, rounds)
        out["problems"] += problems
        metrics = [m for m, _, _ in spec["metrics"]]
        summary = {
            c: {m: spread([runs[c][r][m] for r in runs[c]]) for m in metrics}
            for c in CANDIDATES
            if c in runs
        }
        ratios = {}
        for a, b in ratio_pairs(runs):
            per_round = {m: [] for m in metrics}
            for r in sorted(set(runs[a]) & set(runs[b])):
                for m in metrics:
                    if runs[b][r][m]:
                        per_round[m].append(runs[a][r][m] / runs[b][r][m])
            ratios[f"{a}/{b}"] = {m: spread(per_round[m]) for m in metrics}
        out["scenarios"][s] = {
            "title": spec["title"],
            "orders": {
                k.split(".")[2]: v.split(",") for k, v in meta.items() if k.startswith(f"order.{s}.")
            },
            "runs": {c: {str(r): m for r, m in sorted(rr.items())} for c, rr in runs.items()},
            "summary": summary,
            "ratios": ratios,
        }
        for c in CANDIDATES:
            if c not in runs and c not in out["skipped"]:
                out["problems"].append(f"{s}: no results for {c}")
    for c in PROXIES + ["weft-wasm-warm", "upstream"]:
        row = {}
        for kind in ("idle", "after", "peak"):
            v = meta.get(f"rss_{kind}_kb.{c}")
            if v:
                row[kind] = int(v)
        if row:
            out["rss_kb"][c] = row
    for with_plugin, without in RSS_DELTAS:
        a, b = out["rss_kb"].get(with_plugin, {}), out["rss_kb"].get(without, {})
        delta = {k: a[k] - b[k] for k in ("idle", "after", "peak") if k in a and k in b}
        if delta:
            out["rss_plugin_delta_kb"][f"{with_plugin} - {without}"] = delta
    for c in PROXIES + ["weft-wasm-warm", "upstream"]:
        v = meta.get(f"startup_ms.{c}")
        if v:
            out["startup_ms"][c] = int(v)
    return out


def fmt(v, metric):
    if v is None:
        return "–"
    if metric == "rps":
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def cell(sp, metric):
    if not sp:
        return "–"
    if sp["n"] == 1:
        return fmt(sp["median"], metric)
    return f"{fmt(sp['median'], metric)} ({fmt(sp['min'], metric)}–{fmt(sp['max'], metric)})"


def rcell(sp):
    if not sp:
        return "–"
    if sp["n"] == 1:
        return f"{sp['median']:.2f}"
    return f"{sp['median']:.2f} ({sp['min']:.2f}–{sp['max']:.2f})"


def markdown(res):
    meta = res["meta"]
    lines = [
        "# Weft load benchmark",
        "",
        f"{meta.get('date', '?')} · git {meta.get('git_rev', '?')} · {meta.get('host_cpus', '?')} CPUs "
        f"({meta.get('cpu_model', '?')}) · {meta.get('rounds', '?')} round(s) × {meta.get('duration_s', '?')} s "
        f"(+{meta.get('warmup_s', '?')} s warm-up) · pinning: {meta.get('pinning', '?')} · "
        f"load average {meta.get('loadavg_start', '?')} → {meta.get('loadavg_end', '?')}",
        "",
        "Cells are `median (min–max)` across rounds. Ratios are computed within each round, then "
        "medianed: for req/s above 1 means the first is faster; for latency below 1 means the first "
        "is quicker.",
        "",
    ]
    for s, sc in res["scenarios"].items():
        lines += [f"## {sc['title']}", ""]
        if "skipped" in sc:
            lines += [f"Skipped: {sc['skipped']}.", ""]
            continue
        if s == "A":
            lines += [f"`wrk -t1 -c{meta.get('wrk_connections', '?')} -d{meta.get('duration_s', '?')}s --latency`", ""]
        else:
            corr = " --latency-correction" if meta.get("oha_latency_correction") else ""
            lines += [
                f"`oha -z {meta.get('duration_s', '?')}s -q {meta.get('oha_rate', '?')} "
                f"-c {meta.get('oha_connections', '?')} --no-tui --output-format json{corr}`",
                "",
            ]
        metrics = SCENARIOS[s]["metrics"]
        head = ["candidate"] + [label for _, label, _ in metrics]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in CANDIDATES:
            if c in sc["summary"]:
                row = [c] + [cell(sc["summary"][c][m], m) for m, _, _ in metrics]
                lines.append("| " + " | ".join(row) + " |")
        lines += ["", "| ratio | " + " | ".join(label for _, label, _ in metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
        for name, rs in sc["ratios"].items():
            lines.append(f"| {name} | " + " | ".join(rcell(rs[m]) for m, _, _ in metrics) + " |")
        lines.append("")
    if res["rss_kb"] or res["startup_ms"]:
        lines += [
            "## Memory (RSS, MiB; process plus its children) and start-up time",
            "",
            "Start-up: ms from spawn until the first 200 through it (polled every 10 ms with curl, "
            "so about ±10 ms); one sample per run. weft-wasm starts with an empty compile cache "
            "(Envoy's V8 compiles at every start too); `weft-wasm (warm cache)` is a restart that "
            "reuses the compiled module, measured after the load runs.",
            "",
            "| process | idle after start | after load | peak (VmHWM) | start-up ms |",
            "|---|---|---|---|---|",
        ]
        for c in PROXIES + ["weft-wasm-warm", "upstream"]:
            row = res["rss_kb"].get(c)
            st = res["startup_ms"].get(c)
            if row is None and st is None:
                continue
            row = row or {}
            cells = [f"{row[k] / 1024:.1f}" if k in row else "–" for k in ("idle", "after", "peak")]
            cells.append(str(st) if st is not None else "–")
            label = "weft-wasm (warm cache)" if c == "weft-wasm-warm" else c
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if res["rss_plugin_delta_kb"]:
        lines += [
            "RSS cost of the plugin (MiB, with minus without):",
            "",
            "| delta | idle after start | after load | peak (VmHWM) |",
            "|---|---|---|---|",
        ]
        for name, d in res["rss_plugin_delta_kb"].items():
            cells = [f"{d[k] / 1024:+.1f}" if k in d else "–" for k in ("idle", "after", "peak")]
            name = name.replace("weft-wasm-warm", "weft-wasm (warm cache)")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if meta.get("plugin"):
        lines += [
            f"Plugin (weft-wasm and envoy-wasm, same file): {meta['plugin']}; Weft `instances: 1`, "
            "Envoy V8 runtime.",
            "",
        ]
    versions = [f"{k.split('.', 1)[1]}: {v}" for k, v in meta.items() if k.startswith("version.")]
    if versions:
        lines += ["Versions: " + " · ".join(versions), ""]
    if res["skipped"]:
        lines += ["Skipped candidates: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items()), ""]
    if res["exited"]:
        lines += ["Exited during the run: " + ", ".join(res["exited"]), ""]
    if res["problems"]:
        lines += ["Problems:", ""] + [f"- {p}" for p in res["problems"]] + [""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=Path(__file__).parent / "results" / "raw")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "latest.json")
    ap.add_argument("--md", type=Path, default=Path(__file__).parent / "results" / "latest.md")
    args = ap.parse_args()
    if not (args.raw / "meta.txt").exists():
        print(f"analyze: {args.raw}/meta.txt not found; run bench/run.sh first", file=sys.stderr)
        return 1
    res = analyze(args.raw)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    args.md.write_text(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
