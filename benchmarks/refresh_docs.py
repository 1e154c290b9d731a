"""Regenerate the tables of REPRODUCTION.md (or any Markdown file) from the committed rows.

A generated block names the command that writes it, and nothing else writes it (each marker on a
line of its own; one quoted inside a line of prose is prose):

    <!-- generated: python benchmarks/reproduction_table.py --track cifar10-vgg16q-e25 -->
    | method | c | seeds | ...
    <!-- /generated -->

The command is a script of ``benchmarks/`` with its arguments (a backslash-newline continues it, as in
a shell); it runs from the repository root with this Python, and its standard output replaces the
block's body. Only ``python benchmarks/<name>.py ...`` is accepted, so a document cannot run anything
else.

    python benchmarks/refresh_docs.py                 # rewrite REPRODUCTION.md's blocks in place
    python benchmarks/refresh_docs.py --check         # exit 1 and show the difference where a block is stale
    python benchmarks/refresh_docs.py README.md docs/results.md

Every block is checked (the form of its marker, its command) before any command runs, and the file is
written only when every command succeeded, atomically: a failing command leaves the document as it was.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: a marker is a line of its own (a backslash-newline continues the command), so prose may quote one
OPEN = re.compile(r"^<!-- generated: ((?:[^\n]|\\\n)*?)-->[ \t]*\n", re.M)
CLOSE = "<!-- /generated -->"
CLOSE_LINE = re.compile(r"^<!-- /generated -->[ \t]*$", re.M)


class DocError(ValueError):
    """A malformed generated block, or a command that is not a script of benchmarks/, or one that failed."""


@dataclass(frozen=True)
class Block:
    command: tuple[str, ...]  # the script's path relative to the repository root, then its arguments
    start: int  # offset of the body (just after the opening marker's line)
    end: int  # offset of the closing marker
    line: int  # 1-based line of the opening marker, for messages

    @property
    def text(self) -> str:
        return "python " + " ".join(shlex.quote(c) for c in self.command)


def parse_command(text: str, where: str) -> tuple[str, ...]:
    """``'python benchmarks/x.py --a b'`` -> ``('benchmarks/x.py', '--a', 'b')``; anything else is a DocError."""
    try:
        words = shlex.split(text.replace("\\\n", " "))
    except ValueError as exc:
        raise DocError(f"{where}: the command does not parse ({exc}): {text.strip()!r}") from None
    if len(words) < 2 or words[0] != "python" or not re.fullmatch(r"benchmarks/[A-Za-z0-9_]+\.py", words[1]):
        raise DocError(f"{where}: a generated block's command is `python benchmarks/<name>.py [args]`, "
                       f"got {text.strip()!r}")
    if not (REPO / words[1]).is_file():
        raise DocError(f"{where}: no script {words[1]} in {REPO}")
    return tuple(words[1:])


def blocks(doc: str, name: str = "document") -> list[Block]:
    """The generated blocks of ``doc``, in order; a marker without its partner is a DocError."""
    out, pos = [], 0
    while True:
        m = OPEN.search(doc, pos)
        stray = CLOSE_LINE.search(doc, pos)
        if stray is not None and (m is None or stray.start() < m.start()):
            raise DocError(f"{name}:{doc.count(chr(10), 0, stray.start()) + 1}: {CLOSE} without an opening marker")
        if m is None:
            return out
        line = doc.count("\n", 0, m.start()) + 1
        close = CLOSE_LINE.search(doc, m.end())
        nxt = OPEN.search(doc, m.end())
        if close is None or (nxt is not None and nxt.start() < close.start()):
            raise DocError(f"{name}:{line}: the generated block opened here has no {CLOSE}")
        out.append(Block(parse_command(m.group(1), f"{name}:{line}"), m.end(), close.start(), line))
        pos = close.end()


def run(block: Block, name: str = "document") -> str:
    """The block's new body: its command's standard output, ending in one newline."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))
    proc = subprocess.run([sys.executable, *block.command], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DocError(f"{name}:{block.line}: `{block.text}` failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip()[-2000:]}")
    return proc.stdout.rstrip("\n") + "\n"


def refresh(doc: str, name: str = "document", found: list[Block] | None = None) -> tuple[str, list[tuple[Block, str, str]]]:
    """``doc`` with every generated block rewritten, and the blocks that changed as (block, old, new).
    ``found``: ``blocks(doc)`` when the caller has them already."""
    found = blocks(doc, name) if found is None else found
    bodies = [run(b, name) for b in found]  # every command runs before anything is replaced
    parts, pos, changed = [], 0, []
    for b, body in zip(found, bodies):
        old = doc[b.start:b.end]
        parts += [doc[pos:b.start], body]
        pos = b.end
        if old != body:
            changed.append((b, old, body))
    parts.append(doc[pos:])
    return "".join(parts), changed


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.refresh-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", default=["REPRODUCTION.md"],
                    help="Markdown files (default: REPRODUCTION.md, relative to the repository root)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is not what its command prints")
    args = ap.parse_args(argv)
    paths = [Path(f) if Path(f).is_absolute() or Path(f).exists() else REPO / f for f in args.files]
    for p in paths:
        if not p.is_file():
            ap.error(f"no such file: {p}")
    try:
        docs = {p: p.read_text(encoding="utf-8") for p in paths}
        found = {p: blocks(doc, p.name) for p, doc in docs.items()}  # every marker and command checked first
        stale = 0
        for p, doc in docs.items():
            new, changed = refresh(doc, p.name, found[p])
            n = len(found[p])
            for b, old, body in changed:
                print(f"{p.name}:{b.line}: {'stale' if args.check else 'rewritten'}: {b.text}")
                if args.check:
                    sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), body.splitlines(True),
                                                               "in the document", "from the command", n=0))
            stale += len(changed)
            if changed and not args.check:
                _write_atomically(p, new)
            print(f"{p.name}: {n} generated blocks, {len(changed)} {'stale' if args.check else 'rewritten'}")
    except DocError as exc:
        print(f"refresh_docs: {exc}", file=sys.stderr)
        return 2
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
