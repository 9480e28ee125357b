#!/usr/bin/env python3
"""Draws the ratios of the latest benchmark run as an SVG bar chart (stdlib only).

    python3 bench/chart.py [bench/results/latest.json] [docs/performance-ratios.svg]

Bars: scenario A requests/s of each candidate relative to no proxy (median of the per-round
ratios), and the headline Weft ratios against each peer (one and three Wasm plugins included).
"""
import json
import statistics
import sys


def per_round_ratio(runs, a, b, key="rps"):
    out = []
    for rnd, ra in runs.get(a, {}).items():
        rb = runs.get(b, {}).get(rnd)
        if rb and rb.get(key):
            out.append(ra[key] / rb[key])
    return statistics.median(out) if out else None


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json"
    dst = sys.argv[2] if len(sys.argv) > 2 else "docs/performance-ratios.svg"
    data = json.load(open(src))
    runs = data["scenarios"]["A"]["runs"]
    cands = [
        c
        for c in ["weft", "weft-wasm", "weft-wasm3", "nginx", "haproxy", "envoy", "envoy-wasm", "envoy-wasm3"]
        if c in runs
    ]
    bars = [(f"{c} / no proxy", per_round_ratio(runs, c, "direct")) for c in cands]
    bars += [
        ("weft / nginx", per_round_ratio(runs, "weft", "nginx")),
        ("weft / haproxy", per_round_ratio(runs, "weft", "haproxy")),
        ("weft / envoy", per_round_ratio(runs, "weft", "envoy")),
        ("weft-wasm / envoy-wasm", per_round_ratio(runs, "weft-wasm", "envoy-wasm")),
        ("weft-wasm / weft", per_round_ratio(runs, "weft-wasm", "weft")),
        ("weft-wasm3 / envoy-wasm3", per_round_ratio(runs, "weft-wasm3", "envoy-wasm3")),
        ("weft-wasm3 / weft", per_round_ratio(runs, "weft-wasm3", "weft")),
    ]
    bars = [(label, v) for label, v in bars if v is not None]
    width, row, left = 760, 28, 200
    top = 50
    height = top + row * len(bars) + 40
    scale = (width - left - 80) / max(2.0, max(v for _, v in bars))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">Requests/s ratios, HTTP/1.1 small responses, one worker each</text>',
        f'<text x="{left}" y="40" fill="#555">{data["meta"].get("date", "")}, median of per-round ratios; 1.0 marked</text>',
    ]
    one = left + scale
    for i, (label, v) in enumerate(bars):
        y = top + i * row
        colour = "#2b6cb0" if label.startswith("weft") else "#888"
        out.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{label}</text>')
        out.append(f'<rect x="{left}" y="{y + 4}" width="{v * scale:.1f}" height="{row - 10}" fill="{colour}"/>')
        out.append(f'<text x="{left + v * scale + 6:.1f}" y="{y + 17}">{v:.2f}×</text>')
    out.append(f'<line x1="{one:.1f}" y1="{top}" x2="{one:.1f}" y2="{top + row * len(bars)}" stroke="#c53030" stroke-dasharray="4 3"/>')
    out.append("</svg>")
    open(dst, "w").write("\n".join(out) + "\n")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
