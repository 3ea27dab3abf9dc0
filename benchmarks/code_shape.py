"""The shape of the code: the longest functions of ``hpo/`` and ``workers/``, at a git revision and now.

Issue 19 asks for the 10 longest functions before and after the reorganisation. Lengths are the
lines of each function's source (decorators and docstring included), read with ``ast`` from the
working tree and from ``git show REV:path`` for the revision.

    python benchmarks/code_shape.py [--before 05ceb2c] [--top 10]

Writes ``benchmarks/results/code_shape.json`` and prints both lists.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import print_goals  # noqa: E402  (benchmarks/machine.py)
PACKAGES = ("hpo", "workers")


def functions(source: str, path: str) -> list[tuple[int, str]]:
    """(lines, "path:qualified name") of every function and method in ``source``."""
    out = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append((child.end_lineno - start + 1, f"{path}:{prefix}{child.name}"))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return out


def at_revision(rev: str) -> list[tuple[int, str]]:
    """Every function of the packages at git revision ``rev``."""
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, *PACKAGES], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    out = []
    for path in (f for f in files if f.endswith(".py")):
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True).stdout
        out += functions(source, path)
    return out


def in_tree() -> list[tuple[int, str]]:
    """Every function of the packages in the working tree."""
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            out += functions(path.read_text(), str(path.relative_to(REPO)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="05ceb2c", help="the revision to compare with (default: main when issue 19 was filed)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "code_shape.json"))
    args = parser.parse_args()
    before, after = sorted(at_revision(args.before), reverse=True), sorted(in_tree(), reverse=True)
    result = {
        "before": {"revision": args.before, "functions": len(before), "longest": [{"lines": n, "name": f} for n, f in before[: args.top]]},
        "after": {"revision": "working tree", "functions": len(after), "longest": [{"lines": n, "name": f} for n, f in after[: args.top]]},
    }
    result["goals"] = {"the longest function is shorter than before": after[0][0] < before[0][0],
                       f"the {args.top} longest functions sum to fewer lines than before":
                           sum(n for n, _ in after[: args.top]) < sum(n for n, _ in before[: args.top])}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'before (' + args.before + ')':<62}{'lines':>6}   {'after (working tree)':<62}{'lines':>6}")
    for (n0, f0), (n1, f1) in zip(before[: args.top], after[: args.top]):
        print(f"{f0[:62]:<62}{n0:>6}   {f1[:62]:<62}{n1:>6}")
    print(f"sum of the {args.top} longest: {sum(n for n, _ in before[: args.top])} -> {sum(n for n, _ in after[: args.top])} lines; "
          f"functions: {len(before)} -> {len(after)}")
    print_goals(result["goals"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
