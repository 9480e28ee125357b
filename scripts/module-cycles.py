#!/usr/bin/env python3
"""Reports import cycles between the modules of each crate of the workspace.

A module is a source file (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). An edge A -> B is any
`crate::b...` path (in `use` or inline) in A's file that names module B, resolved to the
longest module prefix. `super::x` is resolved too. Test modules (`#[cfg(test)] mod tests`) are
ignored: they may use anything. Exits 1 and prints each cycle when there is one.
"""
import os, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def crates():
    for base in ["host", "sdk", "plugins", "examples", "tests"]:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, base)):
            dirnames[:] = [d for d in dirnames if d not in ("target", "fixtures", "node_modules")]
            if "Cargo.toml" in filenames and os.path.isdir(os.path.join(dirpath, "src")):
                yield dirpath

def modules(src):
    mods = {}
    for dirpath, _, filenames in os.walk(src):
        for f in filenames:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]) :
                rel = []
            if rel[:1] == ["bin"]:
                continue
            mods["::".join(rel)] = os.path.join(dirpath, f)
    return mods

def strip_tests(text):
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    return text[: m.start()] if m else text

def resolve(path, mods):
    parts = path.split("::")
    for n in range(len(parts), 0, -1):
        cand = "::".join(parts[:n])
        if cand in mods:
            return cand
    return None

def edges(mods):
    g = {m: set() for m in mods}
    for m, f in mods.items():
        text = strip_tests(open(f, encoding="utf-8").read())
        text = re.sub(r"//[^\n]*", "", text)
        paths = []
        for use in re.finditer(r"\buse\s+crate::\{?([^;]*);", text):
            body = use.group(1)
            # crate::{a::X, b} and crate::a::{X, Y}
            head, _, rest = body.partition("{")
            if rest:
                for item in re.split(r"[,{}\s]+", rest):
                    if item and item != "self":
                        paths.append((head + item).strip(":"))
                paths.append(head.strip(":"))
            else:
                paths.append(body.strip())
        paths += re.findall(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text)
        base = m.split("::") if m else []
        for sup in re.findall(r"\bsuper::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text):
            paths.append("::".join(base[:-1] + [sup]) if base else sup)
        for p in paths:
            t = resolve(p.replace(" ", ""), mods)
            if t is not None and t != m and t != "" and not m.startswith(t + "::"):
                g[m].add(t)
    return g

def cycles(g):
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in g:
        if v not in index:
            visit(v)
    return out

bad = 0
for c in sorted(crates()):
    mods = modules(os.path.join(c, "src"))
    for comp in cycles(edges(mods)):
        bad += 1
        print(f"{os.path.relpath(c, ROOT)}: import cycle between modules {', '.join(comp)}")
if bad:
    sys.exit(1)
print("no import cycles between the modules of any crate")
