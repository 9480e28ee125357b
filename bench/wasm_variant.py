#!/usr/bin/env python3
"""Writes variants of a Wasm module for scenario F (plugin hot-swap): each is the module with one
custom section appended (id 0x00, LEB128 size, LEB128 name length, name, payload), so it behaves
the same but its bytes, and sha256, differ.

    python3 bench/wasm_variant.py IN.wasm OUT_DIR COUNT   # writes OUT_DIR/v1.wasm .. vCOUNT.wasm
"""
import os
import sys
from pathlib import Path


def leb128(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def custom_section(name, payload):
    name = name.encode()
    content = leb128(len(name)) + name + payload
    return b"\x00" + leb128(len(content)) + content


def main():
    src, out_dir, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    module = src.read_bytes()
    if module[:4] != b"\x00asm":
        print(f"{src}: not a Wasm module", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    salt = os.urandom(8).hex()
    for i in range(1, count + 1):
        payload = f"weft-bench swap {i} {salt}".encode()
        (out_dir / f"v{i}.wasm").write_bytes(module + custom_section("weft-bench-swap", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
