#!/usr/bin/env python3
"""Checks that the module graph of each of dify-shaper's library crates has no cycles.

A module (one file: `src/a/b.rs` or `src/a/b/mod.rs` is `a::b`) depends on another when its
code names a path into it: `use crate::…`, `use super::…`, or a `crate::…`/`super::…` path
in the code. A path that names an item a module re-exports (`pub use child::Item`) is followed
to the module that defines it, so a facade's re-exports do not count as the facade's own
dependencies, but the re-export itself is an edge from the facade to its child. Test modules
(`tests.rs` files and `#[cfg(test)]` blocks) are left out: tests may reach anywhere.

    python3 scripts/module-cycles.py [--graph] [SRC_DIR...]
    python3 scripts/module-cycles.py --self-test

Prints each cycle (a strongly connected component of more than one module, with one cycle
through it), and each import out of `config` (the bottom layer, where a crate has one), and
exits 1 when there is any; `--graph` also prints every edge. `--self-test`
checks the checker on small trees written to a temporary directory.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_files(src):
    """Maps module path (tuple of segments; () is the crate root) to its file."""
    modules = {}
    for root, _dirs, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                if rel == ["main"]:
                    continue  # the binary is not part of the library's graph
                rel = []
            if rel and rel[0] == "bin":
                continue
            if rel and rel[-1] == "tests":
                continue
            modules[tuple(rel)] = path
    return modules


def strip_code(text):
    """Drops comments, string literals and `#[cfg(test)]` items from `text`."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        # Skip the item that follows: up to its `;` or its balanced `{ … }`.
        j = m.end()
        while j < len(text) and text[j] not in "{;":
            j += 1
        if j < len(text) and text[j] == "{":
            depth = 0
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
        i = j + 1
    out.append(text[i:])
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e as f}}` → [(['a','b'], 'b'), (['a','c','d'], 'd'), (['a','c','e'], 'f')]."""
    tree = re.sub(r"\s+", " ", tree)
    tree = re.sub(r"\s*(::|\{|\}|,)\s*", r"\1", tree).strip()

    def parse(s, prefix):
        result = []
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        for part in parts:
            if not part:
                continue
            brace = part.find("{")
            if brace >= 0:
                head = [x for x in part[:brace].split("::") if x]
                result += parse(part[brace + 1 : part.rfind("}")], prefix + head)
            else:
                alias = None
                if " as " in part:
                    part, alias = part.split(" as ", 1)
                segs = prefix + [x for x in part.split("::") if x]
                if segs and segs[-1] == "self":
                    segs = segs[:-1]
                result.append((segs, alias or (segs[-1] if segs else "")))
        return result

    return parse(tree, [])


def absolute(segs, here, modules=()):
    """Makes a path starting with crate/super/self, or with a child module of `here` (a
    relative path, as `use child::Item`), absolute; None for external paths."""
    if not segs:
        return None
    if tuple(here) + (segs[0],) in modules:
        return list(here) + list(segs)
    if segs[0] == "crate":
        return list(segs[1:])
    if segs[0] in ("super", "self"):
        base = list(here)
        k = 0
        while k < len(segs) and segs[k] in ("super", "self"):
            if segs[k] == "super":
                base = base[:-1]
            k += 1
        return base + list(segs[k:])
    return None


def main():
    if "--self-test" in sys.argv:
        return self_test()
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_graph = "--graph" in sys.argv
    # Default: the proxy library and the tools crate (the binary's two modules cannot circle).
    root = os.path.join(os.path.dirname(__file__), "..")
    srcs = args or [os.path.join(root, "crates", c, "src") for c in ("proxy", "tools")]
    failed = False
    for src in srcs:
        print(f"{os.path.normpath(os.path.relpath(src, root))}:")
        failed |= bool(check(src, show_graph))
        # The proxy's config (schema, validation, the values it yields) is its bottom layer:
        # the runtime reads it, it knows nothing of the runtime.
        if os.path.isdir(os.path.join(src, "config")):
            failed |= bool(leaks(src, "config"))
    return 1 if failed else 0


def check(src, show_graph=False):
    """Prints the summary (and the graph when asked); returns the cycles found."""
    modules = module_files(src)
    code = {m: strip_code(open(p, encoding="utf-8").read()) for m, p in modules.items()}

    uses = {}  # module -> list of (absolute path, alias)
    reexports = {}  # module -> {name: absolute path}
    for m, text in code.items():
        found = []
        for um in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
            for segs, alias in expand_use(um.group(2)):
                full = absolute(segs, m, modules)
                if full is None:
                    continue
                found.append(full)
                if um.group(1) and alias and alias != "*":
                    reexports.setdefault(m, {})[alias] = full
        without_uses = re.sub(r"\buse\s+[^;]+;", "", text)
        for pm in re.finditer(r"\b((?:crate|super|self)(?:::(?:super|" + IDENT + r"))+)", without_uses):
            full = absolute(pm.group(1).split("::"), m)
            if full is not None:
                found.append(full)
        uses[m] = found

    def resolve(path, seen=()):
        """The module that defines what `path` names."""
        current = ()
        for k, seg in enumerate(path):
            if current + (seg,) in modules:
                current = current + (seg,)
                continue
            target = reexports.get(current, {}).get(seg)
            if target is not None and (tuple(target), seg) not in seen:
                return resolve(target + list(path[k + 1 :]), seen + ((tuple(target), seg),))
            return current
        return current

    edges = {m: set() for m in modules}
    for m, paths in uses.items():
        for p in paths:
            t = resolve(p)
            if t != m and t in modules:
                edges[m].add(t)
    for m, names in reexports.items():
        for target in names.values():
            t = resolve(target)
            if t != m and t in modules:
                edges[m].add(t)

    name = lambda m: "::".join(m) or "crate"

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
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)

    if show_graph:
        for m in sorted(edges):
            for t in sorted(edges[m]):
                print(f"{name(m)} -> {name(t)}")

    def one_cycle(comp):
        """A shortest cycle through the component's first module (BFS)."""
        members = set(comp)
        start = min(comp)
        prev, frontier = {start: None}, [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v]):
                    if w == start:
                        path = [v]
                        while prev[path[-1]] is not None:
                            path.append(prev[path[-1]])
                        return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        return comp

    cycles = sorted((sorted(c) for c in sccs if len(c) > 1), key=lambda c: (-len(c), c))
    edge_count = sum(len(v) for v in edges.values())
    print(f"{len(modules)} modules, {edge_count} dependencies between them, {len(cycles)} cycle(s)")
    for comp in cycles:
        print(f"- {len(comp)} modules in one cycle: {', '.join(name(m) for m in comp)}")
        print(f"  e.g. {' -> '.join(name(m) for m in one_cycle(comp))}")
    return [[name(m) for m in comp] for comp in cycles]


def leaks(src, layer):
    """The edges out of `layer` (a top-level module that must depend on nothing else of the
    crate: the bottom layer), as `(from, to)` names; prints each."""
    found = []
    for line in graph_edges(src):
        frm, to = line
        if frm.split("::")[0] == layer and to.split("::")[0] != layer:
            found.append(line)
            print(f"- {frm} -> {to}: {layer} is the bottom layer and depends on nothing else")
    print(f"{layer} imports nothing outside itself" if not found else f"{len(found)} import(s) out of {layer}")
    return found


def graph_edges(src):
    """Every edge of the graph of `src`, as `(from, to)` names (quietly)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        check(src, show_graph=True)
    lines = out.getvalue().splitlines()
    return [tuple(l.split(" -> ")) for l in lines if l.count(" -> ") == 1 and not l.startswith((" ", "-"))]


def self_test():
    """Trees with and without cycles, in the shapes the crate uses."""
    import tempfile

    cases = [
        # A facade re-exporting from a child is no cycle; the child using the facade's own
        # item is.
        ("facade", {"lib.rs": "pub mod a;", "a/mod.rs": "mod b;\npub use b::Thing;",
                    "a/b.rs": "pub struct Thing;"}, []),
        ("child uses parent", {"lib.rs": "pub mod a;", "a/mod.rs": "mod b;\npub use b::f;\npub struct P;",
                               "a/b.rs": "use super::P;\npub fn f(_: P) {}"}, [["a", "a::b"]]),
        # A path through a re-export goes to the module that defines the item: y uses
        # x::inner, not x, and x using y closes no circle...
        ("through a re-export", {"lib.rs": "pub mod x;\npub mod y;",
                                 "x/mod.rs": "mod inner;\npub use inner::T;\nuse crate::y::U;",
                                 "x/inner.rs": "pub struct T;", "y.rs": "use crate::x::T;\npub struct U;"},
         []),
        # ...but the module that defines it using y does.
        ("to the defining module", {"lib.rs": "pub mod x;\npub mod y;",
                                          "x/mod.rs": "mod inner;\npub use inner::T;",
                                          "x/inner.rs": "use crate::y::U;\npub struct T;",
                                          "y.rs": "use crate::x::T;\npub struct U;"},
         [["x::inner", "y"]]),
        # Brace groups, aliases, inline paths; comments, strings and test modules do not count.
        ("inline and nested", {"lib.rs": "pub mod p;\npub mod q;",
                               "p.rs": "use crate::{q::{self as qq}};\nfn f() { qq::g(); }",
                               "q.rs": "pub fn g() { let _ = crate::p::h; }"}, [["p", "q"]]),
        ("comments, strings, tests", {"lib.rs": "pub mod p;\npub mod q;",
                                      "p.rs": "use crate::q::g;\npub fn h() { g() }",
                                      "q.rs": "// crate::p::h\npub fn g() { let _ = \"crate::p::h\"; }\n"
                                              "#[cfg(test)]\nmod tests { use crate::p::h; }"}, []),
    ]
    failed = 0
    for title, files, want in cases:
        with tempfile.TemporaryDirectory() as root:
            for path, text in files.items():
                full = os.path.join(root, path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "w", encoding="utf-8") as f:
                    f.write(text + "\n")
            import contextlib, io
            with contextlib.redirect_stdout(io.StringIO()):
                got = [sorted(c) for c in check(root)]
        ok = sorted(got) == sorted(sorted(c) for c in want)
        failed += not ok
        print(f"self-test {'ok' if ok else 'FAILED'}: {title}" + ("" if ok else f": got {got}, want {want}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
