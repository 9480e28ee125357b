#!/usr/bin/env python3
"""Memory and CPU under slow and half-open clients: Weft beside Envoy, same machine, same run.

    python3 bench/hardening.py --weft target/release/weft [--envoy PATH] [--out FILE]

Scenarios (each bounded in connections and seconds; 127.0.0.1 only):
  idle        10,000 connections that send nothing          RSS per connection
  preface     5,000 connections that send 16 of the 24 HTTP/2 preface bytes, then stop
                                                             proxy CPU over 10 s, RSS
  slow-read   1,000 connections each asking for a 1 MiB response and reading nothing
  slow-write  1,000 uploads announcing 1 MiB that send 64 KiB and stall
  h2-stalled  100 HTTP/2 connections x 10 streams of 1 MiB responses with a zero window
For each, on a fresh proxy process: its RSS before, while the clients hold on (after `hold`
s), and 30 s after the clients closed (memory given back?), and its CPU while they hold on. The upstream is a small asyncio server in this
script answering every request with a 1 MiB body. Needs `ulimit -n` >= 12000.
"""

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

MIB = 1024 * 1024
BODY = b"x" * MIB
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def upstream(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % MIB + BODY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
            asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def open_many(port, n, first=b""):
    conns = []
    for i in range(n):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port, limit=4096)
        except OSError as e:
            print(f"  connect {i}: {e}", file=sys.stderr)
            break
        if first:
            w.write(first)
        conns.append((r, w))
        if i % 200 == 199:
            await asyncio.sleep(0)
    return conns


def h2_stalled_request(host):
    # SETTINGS: INITIAL_WINDOW_SIZE (0x4) = 0; then 10 GETs (HPACK: :method GET 0x82,
    # :scheme http 0x86, :path / 0x84, :authority literal 0x41).
    settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x04\x00\x00\x00\x00"
    out = PREFACE + settings
    auth = host.encode()
    block = b"\x82\x86\x84\x41" + bytes([len(auth)]) + auth
    for sid in range(1, 21, 2):
        out += len(block).to_bytes(3, "big") + b"\x01\x05" + sid.to_bytes(4, "big") + block
    return out


async def scenario(name, proxy_pid, port, hold, run):
    before = rss(proxy_pid)
    cpu0 = cpu_seconds(proxy_pid)
    t0 = time.monotonic()
    conns = await run(port)
    await asyncio.sleep(hold)
    during = rss(proxy_pid)
    cpu = cpu_seconds(proxy_pid) - cpu0
    elapsed = time.monotonic() - t0
    for _, w in conns:
        w.close()
    await asyncio.sleep(30)
    after = rss(proxy_pid)
    n = max(len(conns), 1)
    return {
        "scenario": name,
        "connections": len(conns),
        "rss_before_mb": round(before / MIB, 1),
        "rss_during_mb": round(during / MIB, 1),
        "rss_after_30s_mb": round(after / MIB, 1),
        "kib_per_connection": round((during - before) / 1024 / n, 1),
        "cpu_percent": round(100 * cpu / elapsed, 1),
    }


SCENARIOS = {
    "idle": lambda port: open_many(port, 10_000),
    "preface": lambda port: open_many(port, 5_000, PREFACE[:16]),
    "slow-read": lambda port: open_many(
        port, 1_000, b"GET /big HTTP/1.1\r\nHost: bench\r\n\r\n"
    ),
    "slow-write": lambda port: open_many(
        port,
        1_000,
        b"POST /up HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % MIB
        + b"y" * 65536,
    ),
    "h2-stalled": lambda port: open_many(port, 100, h2_stalled_request("bench")),
}


def weft_config(port, admin, up):
    return f"""
access_log: {{ path: "off" }}
admin: {{ address: 127.0.0.1:{admin} }}
workers: 2
listeners:
  - name: bench
    address: 127.0.0.1:{port}
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up, timeout: 0s }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "127.0.0.1:{up}" }}] }}
"""


def envoy_config(port, admin, up):
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "codec_type": "AUTO",
                        "route_config": {"virtual_hosts": [{
                            "name": "any", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "up", "timeout": "0s"}}]}]},
                        "http_filters": [{"name": "envoy.filters.http.router",
                                          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [{
                "name": "up", "type": "STATIC", "connect_timeout": "5s",
                "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": up}}}}]}]},
            }],
        },
    })


async def wait_port(port):
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


async def bench_proxy(kind, binary, up_port, names, hold):
    """Each scenario on a fresh proxy process, so one scenario's freed memory does not hide the
    next one's cost."""
    port, admin = (18300, 18301) if kind != "envoy" else (18310, 18311)
    out = []
    for name in names:
        tmp = tempfile.mkdtemp()
        if kind != "envoy":
            cfg = os.path.join(tmp, "weft.yaml")
            with open(cfg, "w") as f:
                f.write(weft_config(port, admin, up_port))
            cmd = [binary, "run", "-c", cfg, "--log-level", "error"]
        else:
            cfg = os.path.join(tmp, "envoy.json")
            with open(cfg, "w") as f:
                f.write(envoy_config(port, admin, up_port))
            cmd = [binary, "-c", cfg, "--concurrency", "2", "-l", "error"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_port(port)
            await asyncio.sleep(1)
            r = await scenario(name, proc.pid, port, hold, SCENARIOS[name])
            r["proxy"] = kind
            print(json.dumps(r), flush=True)
            out.append(r)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    return out


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weft", required=True)
    ap.add_argument("--envoy")
    ap.add_argument("--label", default="weft", help="name of the Weft build in the results")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--hold", type=float, default=10.0)
    ap.add_argument("--out", default="bench/results/hardening.json")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.start_server(upstream, "127.0.0.1", 0, limit=65536)
    up_port = server.sockets[0].getsockname()[1]
    names = a.scenarios.split(",")
    results = await bench_proxy(a.label, a.weft, up_port, names, a.hold)
    if a.envoy:
        results += await bench_proxy("envoy", a.envoy, up_port, names, a.hold)
    server.close()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    asyncio.run(main())
