#!/usr/bin/env python3
"""Import cycles between the herald crate's modules, and its largest files.

A module is a file under crates/herald/src; a folder with a mod.rs counts
as one module with its files (hub/, log/, http/, server/, access/auth/).
The layer folders (values/, access/, requests/, delivery/) only group:
each file or folder in them is a module of its own. An edge
a -> b is any `crate::b` path written in a's files (tests included, doc
comments not). Prints each strongly connected component of more than one
module. Run: python3 tools/import_cycles.py
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "crates", "herald", "src")


GROUPS = {"values", "access", "requests", "delivery"}


def module_of(rel):
    parts = rel[:-3].split(os.sep)
    if parts[0] in GROUPS and len(parts) > 1:
        return parts[0] if parts[1] == "mod" else parts[1]
    return parts[0]


def main():
    files = {}
    for dirpath, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".rs"):
                full = os.path.join(dirpath, n)
                files[os.path.relpath(full, ROOT)] = open(full).read()
    mods = {module_of(r) for r in files} - {"lib", "main"} - GROUPS
    edges = {m: set() for m in mods}
    for rel, text in files.items():
        a = module_of(rel)
        if a not in edges:
            continue
        code = "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("//"))
        for first, second in re.findall(r"crate::(\w+)(?:::(\w+))?", code):
            b = second if first in GROUPS and second else first
            if b in mods and b != a:
                edges[a].add(b)
        # `use super::x` inside a folder stays inside the module.
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index:
            visit(v)
    cycles = [c for c in sccs if len(c) > 1]
    print(f"{len(mods)} modules; {len(cycles)} import cycle(s)")
    for c in sorted(cycles, key=len, reverse=True):
        print(f"  {len(c)}: " + " ".join(c))
        for a in c:
            inside = sorted(b for b in edges[a] if b in c)
            print(f"      {a} -> {', '.join(inside)}")
    print("largest files:")
    sizes = sorted(((t.count("\n"), r) for r, t in files.items()), reverse=True)
    for n, r in sizes[:8]:
        print(f"  {n:5} {r}")


if __name__ == "__main__":
    main()
