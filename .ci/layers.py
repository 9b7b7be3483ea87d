#!/usr/bin/env python3
# A copy of ../shared/tools/layers.py, for a CI checkout that has no ../shared beside it; .ci/run
# prefers the shared one when it is there.
"""Import circles between the top-level modules of a Rust crate (src/<module>.rs or src/<module>/).

Reads every path in src/**/*.rs that starts at `crate::`, `super::`, `self::` or a child module
(use statements, grouped uses and inline paths), resolves it to the module file it names, and
collapses each file to its top-level module. Arrows inside one top-level module (a mod.rs and its
children) and to or from the crate root are left out. Prints each group of top-level modules that
import each other in a circle, with one import for every arrow of it. Exit status: 0 when the
modules import in one direction, 1 otherwise.

    python3 ../shared/tools/layers.py [CRATE_DIR]      # default: the current directory
    python3 ../shared/tools/layers.py --json [CRATE_DIR]
"""
import json
import re
import sys
from pathlib import Path


def module_files(src):
    """Map module path tuples (('hub', 'queue')) to files."""
    mods = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts in (["lib"], ["main"]):
            parts = []
        mods.setdefault(tuple(parts), f)
    return mods


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand_use(body):
    """Expand `a::{b, c::{d, e}}` into ['a::b', 'a::c::d', 'a::c::e']."""
    body = body.strip()
    i = body.find("{")
    if i < 0:
        return [body.split(" as ")[0].strip()]
    prefix, inner = body[:i], body[i + 1:body.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += [prefix + q for q in expand_use(p)]
    return out


def paths_in(text):
    """Paths that start at the crate root, a parent, this module or a child module of this file."""
    text = strip_comments(text)
    children = re.findall(r"\bmod\s+(\w+)\s*;", text)
    starts = ("crate", "super", "self", *children)
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", text, flags=re.S):
        found += expand_use(re.sub(r"\s+", "", m.group(1)).replace("as", " as "))
    found += re.findall(r"(?<![\w:])(?:" + "|".join(starts) + r")(?:::\w+)+", text)
    return [p for p in found if p.split("::")[0] in starts]


def resolve(path, here, mods):
    """The module tuple a path points into, or None."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] not in ("super", "self"):
        base = list(here)
    else:
        base = list(here)
        while segs and segs[0] == "super":
            base = base[:-1]
            segs = segs[1:]
    segs = [s for s in segs if s and s != "self" and s != "*"]
    best = None
    for n in range(len(segs) + 1):
        cand = tuple(base + segs[:n])
        if cand in mods:
            best = cand
    return best


def cycles(graph):
    """Tarjan's strongly connected components of size > 1."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def room(mod):
    """The top-level module a module belongs to ('' for the crate root)."""
    return mod[0] if mod else ""


def main(argv):
    as_json = "--json" in argv
    args = [a for a in argv if a != "--json"]
    root = Path(args[0] if args else ".")
    mods = module_files(root / "src")
    graph, example = {}, {}
    for mod, f in mods.items():
        for p in paths_in(f.read_text(errors="replace")):
            target = resolve(p, mod, mods)
            if target is None:
                continue
            a, b = room(mod), room(target)
            if a == b or "" in (a, b):
                continue
            graph.setdefault(a, set()).add(b)
            example.setdefault((a, b), f"{f.relative_to(root)}: {p}")
    comps = cycles(graph)
    arrows = [[a, b, example[(a, b)]] for c in comps for a in c for b in sorted(graph.get(a, ())) if b in c]
    if as_json:
        print(json.dumps({"rooms": sorted({room(m) for m in mods} - {""}),
                          "rooms_in_cycles": sum(len(c) for c in comps),
                          "cycles": comps, "arrows": arrows}))
    else:
        rooms = sorted({room(m) for m in mods} - {""})
        if not comps:
            print(f"the {len(rooms)} top-level modules import in one direction: " + ", ".join(rooms))
        for c in comps:
            print(f"top-level modules that import each other in a circle: {', '.join(c)}")
            for a, b, ex in arrows:
                if a in c:
                    print(f"  {a} -> {b}   e.g. {ex}")
    return 1 if comps else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
