#!/usr/bin/env python3
"""Which parts of a running Weft executable are resident: reads /proc/PID/pagemap (root) for
the mappings of the process's executable, maps each resident page back to its ELF section and,
in .text, to the symbols on it (`nm -C`), and sums them per crate. A diagnostic, not a test.

    bench/idle_pages.py PID                 # per-section and per-crate resident KiB
    bench/idle_pages.py PID --symbols 40    # also the 40 largest resident symbols
    bench/idle_pages.py PID --json out.json # per-page detail for later comparison

A crate is the first non-std path in the demangled symbol (`core::ptr::drop_in_place<weft_config::
Config>` counts for weft_config); a resident page's bytes are shared among the symbols on it, in
proportion to the bytes each covers, and bytes no symbol covers count as `(padding)`.
"""
import argparse
import bisect
import collections
import json
import os
import re
import struct
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")
STD = {"core", "alloc", "std", "compiler_builtins", "panic_unwind", "std_detect", "rustc_demangle",
       "addr2line", "gimli", "miniz_oxide", "object", "adler2", "memchr_std"}


def elf_layout(path):
    """(PT_LOAD segments as (offset, vaddr, filesz), sections as (addr, size, name))."""
    with open(path, "rb") as f:
        data = f.read(64)
        assert data[:4] == b"\x7fELF" and data[4] == 2, "64-bit ELF only"
        (e_phoff, e_shoff) = struct.unpack_from("<QQ", data, 0x20)
        (e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from("<HHHHH", data, 0x36)
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
        loads = []
        for i in range(e_phnum):
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
                "<IIQQQQQQ", ph, i * e_phentsize)
            if p_type == 1:
                loads.append((p_offset, p_vaddr, p_filesz))
        f.seek(e_shoff)
        sh = f.read(e_shentsize * e_shnum)
        raw = []
        for i in range(e_shnum):
            name, _t, _fl, addr, off, size = struct.unpack_from("<IIQQQQ", sh, i * e_shentsize)
            raw.append((name, addr, off, size))
        strtab = raw[e_shstrndx]
        f.seek(strtab[2])
        names = f.read(strtab[3])
        sections = []
        for name, addr, _off, size in raw:
            if addr and size:
                n = names[name:names.index(b"\0", name)].decode()
                sections.append((addr, size, n))
    sections.sort()
    return loads, sections


def file_off_to_vaddr(loads, off):
    for p_off, p_vaddr, p_filesz in loads:
        if p_off <= off < p_off + p_filesz:
            return p_vaddr + (off - p_off)
    return None


def resident_file_pages(pid, exe):
    """File offsets (page-aligned) of the executable's resident pages."""
    offs = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pm:
        for line in maps:
            parts = line.split()
            if len(parts) < 6 or parts[5] != exe:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            base = int(parts[2], 16)
            n = (hi - lo) // PAGE
            pm.seek(lo // PAGE * 8)
            entries = struct.unpack(f"<{n}Q", pm.read(n * 8))
            for i, e in enumerate(entries):
                if e >> 63 & 1:  # present
                    offs.add(base + i * PAGE)
    return sorted(offs)


# The first segment of each path (not a module after `core::`).
CRATE_RE = re.compile(r"(?<![A-Za-z0-9_:])([A-Za-z_][A-Za-z0-9_]*)::")


def crate_of(name):
    first = None
    for m in CRATE_RE.finditer(name):
        c = m.group(1)
        if c in ("impl", "dyn", "mut", "const"):
            continue
        if first is None:
            first = c
        if c not in STD:
            return c
    return first or ("(c/asm)" if name else "(unnamed)")


def symbols(path):
    out = subprocess.run(["nm", "-C", "-S", "-n", "--defined-only", path], capture_output=True,
                         text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "tTwW":
            syms.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    syms.sort()
    return syms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pid", type=int)
    ap.add_argument("--symbols", type=int, default=0, help="print the N largest resident symbols")
    ap.add_argument("--crates", type=int, default=25)
    ap.add_argument("--json")
    a = ap.parse_args()
    exe = os.readlink(f"/proc/{a.pid}/exe")
    loads, sections = elf_layout(exe)
    pages = resident_file_pages(a.pid, exe)
    sec_starts = [s[0] for s in sections]
    per_section = collections.Counter()
    text_pages = []
    for off in pages:
        va = file_off_to_vaddr(loads, off)
        if va is None:
            per_section["(headers/other)"] += PAGE
            continue
        i = bisect.bisect_right(sec_starts, va) - 1
        # A page can hold the end of one section and the start of the next: by the page start.
        name = sections[i][2] if i >= 0 and va < sections[i][0] + sections[i][1] else "(between sections)"
        per_section[name] += PAGE
        if name == ".text":
            text_pages.append(va)
    syms = symbols(exe)
    starts = [s[0] for s in syms]
    per_crate = collections.Counter()
    per_sym = collections.Counter()
    for va in text_pages:
        lo, hi = va, va + PAGE
        covered = 0
        j = max(bisect.bisect_right(starts, lo) - 1, 0)
        while j < len(syms) and syms[j][0] < hi:
            s, size, name = syms[j]
            ov = min(hi, s + size) - max(lo, s)
            if ov > 0:
                covered += ov
                per_crate[crate_of(name)] += ov
                per_sym[name] += ov
            j += 1
        per_crate["(padding)"] += PAGE - covered
    total = sum(per_section.values())
    print(f"executable {exe}: {len(pages)} resident pages, {total / 1024:.0f} KiB")
    print("\n| section | resident KiB |\n|---|---:|")
    for n, b in per_section.most_common():
        print(f"| {n} | {b / 1024:.0f} |")
    print(f"\n| crate (.text) | resident KiB | share of resident .text |\n|---|---:|---:|")
    tt = sum(per_crate.values()) or 1
    for n, b in per_crate.most_common(a.crates):
        print(f"| {n} | {b / 1024:.0f} | {100 * b / tt:.1f} % |")
    rest = sum(b for _, b in per_crate.most_common()[a.crates:])
    if rest:
        print(f"| (others) | {rest / 1024:.0f} | {100 * rest / tt:.1f} % |")
    if a.symbols:
        print("\n| symbol | resident bytes |\n|---|---:|")
        for n, b in per_sym.most_common(a.symbols):
            print(f"| `{n[:140]}` | {b} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"exe": exe, "pages": pages, "sections": per_section, "crates": per_crate}, f)


if __name__ == "__main__":
    sys.exit(main())
