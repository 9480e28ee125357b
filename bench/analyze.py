#!/usr/bin/env python3
"""Turns the raw output of bench/run.sh into bench/results/latest.{json,md}.

Stdlib only. Input (the --raw directory):
  meta.txt          key=value lines written by run.sh (rounds, orders, RSS, versions, skips)
  A/r<R>_<cand>.txt wrk --latency output, scenario A (and E's candidates), round R
  B/r<R>_<cand>.json oha JSON output, scenario B, round R
  C/r<R>_<cand>.txt h2load output, scenario C (h2c), round R
  D/r<R>_<cand>.txt wrk --latency output, scenario D (1 MiB responses), round R
  F/wrk.txt, F/swaps.txt, F/plugins-{before,after}.json  scenario F (plugin hot-swap under load)

Per scenario and candidate: the median across rounds and the min-max spread of each metric.
Ratios (weft/direct, weft/envoy, weft/nginx, weft/haproxy; the Wasm ones weft-wasm/envoy-wasm,
weft-wasm/weft, envoy-wasm/envoy and, for three plugins, weft-wasm3/envoy-wasm3, weft-wasm3/weft,
envoy-wasm3/envoy; each/direct) are computed within each round, where both sides ran in the same
round under the same machine conditions, then medianed.
With WEFT_BASE_BIN (an older Weft build side by side): the new/old ratios weft/weft-base,
weft-wasm/weft-base-wasm and weft-wasm3/weft-base-wasm3, gathered per scenario (A, B, C, D and
E, E being weft-wasm3 in A's runs) into `new_vs_old` and a table at the top of the Markdown,
which is also printed (unless --quiet).
Also: RSS per process (idle, after load, peak), the RSS cost of the plugin(s) (weft-wasm minus
weft, envoy-wasm minus envoy, and the same for the three-plugin candidates), each process's
start-up time (spawn -> first 200 through it), and scenario F's swap times and failures.
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

CANDIDATES = [
    "direct", "weft", "weft-base", "weft-wasm", "weft-base-wasm", "weft-wasm3", "weft-base-wasm3",
    "envoy", "envoy-wasm", "envoy-wasm3", "nginx", "haproxy",
]
PROXIES = [c for c in CANDIDATES if c != "direct"]
# The Wasm plugin candidates: (with plugin(s), without).
PLUGIN_PAIRS = [
    ("weft-wasm", "weft"), ("envoy-wasm", "envoy"), ("weft-wasm3", "weft"), ("envoy-wasm3", "envoy"),
    ("weft-base-wasm", "weft-base"), ("weft-base-wasm3", "weft-base"),
]
# New build / older build (WEFT_BASE_BIN): the same config on each.
NEW_OLD_PAIRS = [("weft", "weft-base"), ("weft-wasm", "weft-base-wasm"), ("weft-wasm3", "weft-base-wasm3")]
# The new/old summary: (label, scenario whose runs hold it, pair, throughput metric, latency metric).
# Scenario E's candidates run in A; h2load (C) reports no percentiles, so C has the mean.
NEW_OLD_ROWS = [
    ("A", "A", ("weft", "weft-base"), "rps", "p99_ms"),
    ("A, one plugin", "A", ("weft-wasm", "weft-base-wasm"), "rps", "p99_ms"),
    ("B", "B", ("weft", "weft-base"), "rps", "p99_ms"),
    ("B, one plugin", "B", ("weft-wasm", "weft-base-wasm"), "rps", "p99_ms"),
    ("C", "C", ("weft", "weft-base"), "rps", "mean_ms"),
    ("D", "D", ("weft", "weft-base"), "rps", "p99_ms"),
    ("E (three plugins, in A)", "A", ("weft-wasm3", "weft-base-wasm3"), "rps", "p99_ms"),
]
# RSS deltas: the pairs above, plus the warm-cache restart of weft-wasm (idle only).
RSS_DELTAS = PLUGIN_PAIRS + [("weft-wasm-warm", "weft")]

SCENARIOS = {
    "A": {
        "title": "Scenario A: HTTP/1.1 small responses, max throughput (wrk)",
        "metrics": [
            ("rps", "req/s", True),
            ("p50_ms", "p50 ms", False),
            ("p99_ms", "p99 ms", False),
            ("cpu_us", "proxy CPU µs/req", False),
        ],
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
    "C": {
        "title": "Scenario C: HTTP/2 (h2c, prior knowledge) small responses, max throughput (h2load)",
        "metrics": [("rps", "req/s", True), ("mean_ms", "mean ms", False)],
    },
    "D": {
        "title": "Scenario D: 1 MiB responses, HTTP/1.1 (wrk)",
        "metrics": [
            ("rps", "req/s (≈ MiB/s)", True),
            ("mib_s", "MiB/s transferred", True),
            ("p50_ms", "p50 ms", False),
            ("p99_ms", "p99 ms", False),
        ],
    },
}
# Raw file extension and parser per scenario (set below, after the parsers).
PARSERS = {}

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


_UNITS_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk_big(text):
    """parse_wrk plus mib_s, from wrk's Transfer/sec line (wrk's KB/MB/GB are powers of 1024)."""
    out = parse_wrk(text)
    m = re.search(r"^Transfer/sec:\s+([0-9.]+)([KMGT]?B)", text, re.M)
    out["mib_s"] = float(m.group(1)) * _UNITS_BYTES[m.group(2)] / 1024**2 if m else None
    return out


def parse_h2load(text):
    """Returns {rps, mean_ms, requests, errors} from h2load's summary, or raises ValueError."""
    m = re.search(r"^finished in [0-9.]+\w*, ([0-9.]+) req/s", text, re.M)
    if not m:
        raise ValueError("no 'finished in' line")
    out = {"rps": float(m.group(1))}
    m = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
        re.M,
    )
    if not m:
        raise ValueError("no 'requests:' line")
    out["requests"] = int(m.group(3))
    errors = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if m:
        errors += int(m.group(3)) + int(m.group(4))
    out["errors"] = errors
    m = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    out["mean_ms"] = wrk_time_ms(m.group(3)) if m else None
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


PARSERS.update(
    {"A": (".txt", parse_wrk), "B": (".json", parse_oha), "C": (".txt", parse_h2load), "D": (".txt", parse_wrk_big)}
)


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


def cpu_per_request(path, requests):
    """The proxy's CPU µs per request of one run: `TICKS CLK_TCK` in `path` (utime + stime over
    the measured run, written by run.sh) over the requests wrk completed; None when missing."""
    if not requests or not path.exists():
        return None
    try:
        ticks, hz = (int(x) for x in path.read_text().split())
    except ValueError:
        return None
    return ticks / hz * 1e6 / requests if hz > 0 else None


def collect(raw, scenario, rounds):
    """{cand: {round: metrics}} plus a list of problems."""
    runs, problems = {}, []
    ext, parser = PARSERS[scenario]
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
            if scenario == "A":
                m["cpu_us"] = cpu_per_request(f.with_suffix(".cpu"), m.get("requests"))
            if m["errors"]:
                problems.append(f"{scenario} round {r} {c}: {m['errors']} errors / non-2xx responses")
            runs.setdefault(c, {})[r] = m
    return runs, problems


def ratio_pairs(present):
    pairs = list(NEW_OLD_PAIRS)
    pairs += [("weft", other) for other in ["direct", "envoy", "nginx", "haproxy"]]
    pairs += [("weft-wasm", "envoy-wasm"), ("weft-wasm3", "envoy-wasm3")] + PLUGIN_PAIRS
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
    skipped_c = {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("skip_c.")}
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
                    if runs[a][r].get(m) is not None and runs[b][r].get(m):
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
        if skipped_c and s == "C":
            out["scenarios"][s]["skipped_candidates"] = skipped_c
        expected = {c for k, v in meta.items() if k.startswith(f"order.{s}.") for c in v.split(",")}
        for c in CANDIDATES:
            if c in expected and c not in runs:
                out["problems"].append(f"{s}: no results for {c}")
    if "skip_scenario.F" in meta:
        out["swap"] = {"skipped": meta["skip_scenario.F"]}
    elif (raw / "F" / "swaps.txt").exists():
        out["swap"] = analyze_swaps(raw / "F", meta)
        out["problems"] += out["swap"].pop("problems")
    for c in PROXIES + ["weft-wasm-warm", "upstream"]:
        row = {}
        for kind in ("idle", "after", "peak", "end", "end_peak"):
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
    if "weft_base_bin" in meta:
        out["new_vs_old"] = new_vs_old(out, meta)
    return out


def new_vs_old(res, meta):
    """The new/old (WEFT_BASE_BIN) ratios per scenario, from the per-round ratios above."""
    rows = []
    selected = set(meta.get("scenarios", "ABCDEF").split(","))
    for label, s, (a, b), tput, lat in NEW_OLD_ROWS:
        sc = res["scenarios"].get(s, {})
        r = sc.get("ratios", {}).get(f"{a}/{b}")
        if r is None:
            # Listed as missing only if its scenario was selected (E's rows: if E was).
            if label[0] in selected:
                why = sc.get("skipped") or "no results for both in any round"
                rows.append({"scenario": label, "pair": f"{a}/{b}", "missing": why})
            continue
        rows.append({
            "scenario": label,
            "pair": f"{a}/{b}",
            "rps": r.get(tput),
            "latency_metric": lat,
            "latency": r.get(lat),
        })
    return {
        "new": meta.get("weft_bin"),
        "new_version": meta.get("version.weft"),
        "new_git_rev": meta.get("git_rev"),
        "base": meta.get("weft_base_bin"),
        "base_version": meta.get("version.weft-base"),
        "rows": rows,
    }


def new_vs_old_markdown(nvo):
    lines = [
        "## New vs old build (WEFT_BASE_BIN)",
        "",
        f"new: `{nvo.get('new')}` ({nvo.get('new_version') or '?'}) · "
        f"old: `{nvo.get('base')}` ({nvo.get('base_version') or '?'}) · "
        f"bench checkout: git {nvo.get('new_git_rev') or '?'}",
        "",
        "new/old, each computed within a round (same conditions), then medianed (min–max across "
        "rounds): req/s above 1 means the new build is faster; latency below 1 means it is quicker. "
        "Latency is p99, except C (h2load reports no percentiles: its mean time per request).",
        "",
        "| scenario | ratio | req/s new/old | latency new/old |",
        "|---|---|---|---|",
    ]
    for row in nvo["rows"]:
        if row.get("missing"):
            lines.append(f"| {row['scenario']} | {row['pair']} | – (not run: {row['missing']}) | – |")
            continue
        lat = "p99" if row["latency_metric"] == "p99_ms" else "mean"
        lines.append(f"| {row['scenario']} | {row['pair']} | {rcell(row['rps'])} | {lat} {rcell(row['latency'])} |")
    lines.append("")
    return lines


def plugin_swaps(path):
    """The `adder` plugin's swap counter from a GET /plugins answer, if it has one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    found = []

    def walk(v):
        if isinstance(v, dict):
            if v.get("name") == "adder" and isinstance(v.get("swaps"), int):
                found.append(v["swaps"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(data)
    return max(found) if found else None


def analyze_swaps(fdir, meta):
    """Scenario F: swap times (POST wall time) and what wrk saw meanwhile."""
    res = {"problems": []}
    swaps = []
    for line in (fdir / "swaps.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        swaps.append({"i": int(parts[0]), "at_ms": int(parts[1]), "code": parts[2], "ms": float(parts[3])})
    ok = [s["ms"] for s in swaps if s["code"].startswith("2")]
    res["swaps"] = swaps
    res["requested"] = int(meta.get("f_swaps", len(swaps)))
    res["ok"] = len(ok)
    res["failed"] = len(swaps) - len(ok)
    if ok:
        res["swap_ms"] = {"median": statistics.median(ok), "min": min(ok), "max": max(ok), "n": len(ok)}
    if res["failed"]:
        res["problems"].append(f"F: {res['failed']} of {len(swaps)} reload POSTs did not return 2xx")
    last = max((s["at_ms"] + s["ms"] for s in swaps), default=0)
    res["last_swap_end_ms"] = round(last)
    dur_ms = int(meta.get("f_duration_s", "10")) * 1000
    if last > dur_ms:
        res["problems"].append(f"F: the swaps ran past the end of the load ({last:.0f} ms > {dur_ms} ms)")
    before, after = plugin_swaps(fdir / "plugins-before.json"), plugin_swaps(fdir / "plugins-after.json")
    if before is not None and after is not None:
        res["swap_counter_delta"] = after - before
    for key, name in (("wrk", "wrk.txt"), ("wrk_baseline", "wrk-baseline.txt")):
        try:
            text = (fdir / name).read_text(errors="replace")
            w = parse_wrk(text)
        except (OSError, ValueError) as e:
            if key == "wrk" or (fdir / name).exists():
                res["problems"].append(f"F: unparsable {name} ({e})")
            continue
        m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        w["non_2xx"] = int(m.group(1)) if m else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        w["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
        res[key] = w
    res["rss_after_swaps_kb"] = int(meta["rss_after_swaps_kb.weft-wasm"]) if "rss_after_swaps_kb.weft-wasm" in meta else None
    res["restore_check"] = meta.get("f_restore_check")
    if res["restore_check"] and res["restore_check"] != "ok":
        res["problems"].append(f"F: {res['restore_check']}")
    return res


def fmt(v, metric):
    if v is None:
        return "–"
    if metric in ("rps", "mib_s"):
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
        f"(+{meta.get('warmup_s', '?')} s warm-up) · workers per proxy: {meta.get('workers', '1')} · "
        f"pinning: {meta.get('pinning', '?')} · "
        f"load average {meta.get('loadavg_start', '?')} → {meta.get('loadavg_end', '?')}",
        "",
        "Cells are `median (min–max)` across rounds. Ratios are computed within each round, then "
        "medianed: for req/s above 1 means the first is faster; for latency below 1 means the first "
        "is quicker.",
        "",
    ]
    if res.get("new_vs_old"):
        lines += new_vs_old_markdown(res["new_vs_old"])
    for s, sc in res["scenarios"].items():
        if meta.get("quick") == "1" and sc.get("skipped") == "not in SCENARIOS":
            continue  # --quick: only what ran
        lines += [f"## {sc['title']}", ""]
        if "skipped" in sc:
            lines += [f"Skipped: {sc['skipped']}.", ""]
            continue
        if s == "A":
            lines += [f"`wrk -t1 -c{meta.get('wrk_connections', '?')} -d{meta.get('duration_s', '?')}s --latency`", ""]
            if meta.get("scenario_a_only_e"):
                lines += ["(Only scenario E's candidates: A itself was not selected.)", ""]
        elif s == "C":
            lines += [
                f"`h2load -t1 -c{meta.get('h2_connections', '?')} -m{meta.get('h2_streams', '?')} "
                f"-D {meta.get('duration_s', '?')} --warm-up-time {meta.get('warmup_s', '?')} http://…/` "
                "(h2c prior knowledge; upstream connections stay HTTP/1.1). nginx and haproxy serve h2c on "
                "a second listener of the same process (`listen … http2`, `bind … proto h2`); `direct` "
                "is the upstream nginx's own h2c server. h2load reports no percentiles: `mean ms` is "
                "its mean time per request.",
                "",
            ]
            for c, why in sc.get("skipped_candidates", {}).items():
                lines += [f"Not in C: {c} ({why}).", ""]
        elif s == "D":
            lines += [
                f"`wrk -t1 -c{meta.get('big_connections', '?')} -d{meta.get('duration_s', '?')}s --latency "
                "http://…/1m` (a 1 MiB file from the upstream; req/s ≈ MiB/s of bodies). nginx streams "
                "it (`proxy_max_temp_file_size 0` on that location) rather than spooling it to disk.",
                "",
            ]
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
    sw = res.get("swap")
    if sw and not (meta.get("quick") == "1" and sw.get("skipped") == "not in SCENARIOS"):
        lines += ["## Scenario F: plugin hot-swap under load (Weft only)", ""]
        if "skipped" in sw:
            lines += [f"Skipped: {sw['skipped']}.", ""]
        else:
            w = sw.get("wrk", {})
            lines += [
                f"`wrk -t1 -c{meta.get('f_connections', '?')} -d{meta.get('f_duration_s', '?')}s --latency` on "
                f"weft-wasm while {sw['requested']} times a variant of the plugin (a custom section "
                "appended, new sha256) is renamed over its file and `POST /plugins/adder/reload` is "
                "timed (compile + canary + publish; the compile cache misses every time).",
                "",
                "| swaps ok | swap ms median | min | max |",
                "|---|---|---|---|",
            ]
            sm = sw.get("swap_ms") or {}
            lines += [
                f"| {sw['ok']}/{len(sw['swaps'])} | {fmt(sm.get('median'), 'ms')} | {fmt(sm.get('min'), 'ms')} | "
                f"{fmt(sm.get('max'), 'ms')} |",
                "",
                "| wrk run | requests | non-2xx | socket errors | req/s | p50 ms | p99 ms |",
                "|---|---|---|---|---|---|---|",
            ]
            for key, label in (("wrk_baseline", "no swaps (baseline, just before)"), ("wrk", f"{len(sw['swaps'])} swaps")):
                w = sw.get(key)
                if not w:
                    continue
                errs_s = ", ".join(f"{k} {v}" for k, v in w.get("socket_errors", {}).items() if v) or "0"
                lines.append(
                    f"| {label} | {w.get('requests') if w.get('requests') is not None else '–'} | "
                    f"{w.get('non_2xx', '–')} | {errs_s} | {fmt(w.get('rps'), 'rps')} | "
                    f"{fmt(w.get('p50_ms'), 'ms')} | {fmt(w.get('p99_ms'), 'ms')} |"
                )
            lines.append("")
            notes = []
            if "swap_counter_delta" in sw:
                notes.append(
                    f"`adder` swap counter (GET /plugins) went up by {sw['swap_counter_delta']} for "
                    f"{sw['ok']} successful POSTs (any excess: the file watcher's own reloads)"
                )
            notes.append(f"last swap ended {sw['last_swap_end_ms']} ms after the load started")
            if sw.get("rss_after_swaps_kb"):
                notes.append(f"weft-wasm RSS after the swaps {sw['rss_after_swaps_kb'] / 1024:.1f} MiB")
            if sw.get("restore_check"):
                notes.append(f"original plugin restored: {sw['restore_check']}")
            text = "; ".join(notes)
            lines += [text[:1].upper() + text[1:] + ".", ""]
    if res["rss_kb"] or res["startup_ms"]:
        lines += [
            "## Memory (RSS, MiB; process plus its children) and start-up time",
            "",
            "Start-up: ms from spawn until the first 200 through it (polled every 10 ms with curl, "
            "so about ±10 ms); one sample per run. weft-wasm starts with an empty compile cache "
            "(Envoy's V8 compiles at every start too); `weft-wasm (warm cache)` is a restart that "
            "reuses the compiled module, measured after the load runs.",
            "",
            "`after A, B` and its peak are measured after scenarios A and B (and E), before C and "
            "D; `after C, D` and `peak at end` after C and D, which only direct, weft (and "
            "weft-base), envoy, nginx and haproxy run (1 MiB bodies and HTTP/2 grow some buffers).",
            "",
            "| process | idle after start | after A, B | peak after A, B | after C, D | peak at end | start-up ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in PROXIES + ["weft-wasm-warm", "upstream"]:
            row = res["rss_kb"].get(c)
            st = res["startup_ms"].get(c)
            if row is None and st is None:
                continue
            row = row or {}
            cells = [f"{row[k] / 1024:.1f}" if k in row else "–" for k in ("idle", "after", "peak", "end", "end_peak")]
            cells.append(str(st) if st is not None else "–")
            label = "weft-wasm (warm cache)" if c == "weft-wasm-warm" else c
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if res["rss_plugin_delta_kb"]:
        lines += [
            "RSS cost of the plugin (MiB, with minus without):",
            "",
            "| delta | idle after start | after A, B | peak after A, B |",
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
            "Envoy V8 runtime. weft-wasm3 and envoy-wasm3 load three copies of it (an identical "
            "file of their own), configured v1, v2, v3: three Weft plugin entries (one instance "
            "each), three Envoy Wasm filters (each its own name and vm_id).",
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
    ap.add_argument("--quiet", action="store_true", help="do not print the new/old (WEFT_BASE_BIN) table")
    args = ap.parse_args()
    if not (args.raw / "meta.txt").exists():
        print(f"analyze: {args.raw}/meta.txt not found; run bench/run.sh first", file=sys.stderr)
        return 1
    res = analyze(args.raw)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    args.md.write_text(markdown(res))
    if res.get("new_vs_old") and not args.quiet:
        print("\n".join(new_vs_old_markdown(res["new_vs_old"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
