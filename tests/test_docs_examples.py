"""Docs that run: every ```python block of README.md and docs/**/*.md, as written, in order, per file.

The convention (also stated in docs/index.md):

* The blocks of one file run in order in one namespace, like cells of a notebook; each file starts fresh,
  in an empty temporary folder (so examples may write files).
* Printed output is shown in the block itself, on comment lines starting with ``#>`` after the code that
  prints it. A block's ``#>`` lines, in order, must equal what the block prints; ``...`` matches anything
  (doctest's ELLIPSIS), runs of whitespace compare equal. A block that prints without ``#>`` lines fails, so
  shown values cannot go stale.
* A block that needs something this machine may lack is preceded by ``<!-- requires: NAME -->``: ``gpu``
  (CuPy with a usable GPU) or an importable module name. It is skipped, with the reason, when that is
  missing; later blocks must not depend on it.
* Commands in ```console blocks (lines starting with ``$ ropeflow``) must parse with the current command
  line, and those whose output does not depend on the machine must print exactly the lines shown under
  them.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_REQUIRES = re.compile(r"<!--\s*requires:\s*([\w.-]+)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block: its language, source, first line number and requirement."""

    lang: str
    code: str
    line: int
    requires: str | None


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order."""
    found = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        req = _REQUIRES.search(before)
        indent = len(m.group("indent"))
        code = "\n".join(line[indent:] for line in m.group("body").splitlines())
        found.append(Block(m.group("info").strip().split(" ")[0], code, text.count("\n", 0, m.start()) + 1,
                           req.group(1) if req else None))
    return found


def expected_output(code: str) -> str:
    """The ``#>`` lines of a block, without the marker."""
    return "".join(line.strip()[3:] + "\n" if line.strip().startswith("#> ") else "\n"
                   for line in code.splitlines() if line.strip().startswith("#>"))


def missing(requirement: str | None) -> str | None:
    """Why ``requirement`` is not met here, or None when it is."""
    if requirement is None:
        return None
    if requirement == "gpu":
        import ropeflow

        return None if "cupy" in ropeflow.available_backends() else "needs CuPy and a usable GPU"
    return None if importlib.util.find_spec(requirement) else f"needs {requirement}"


def run_markdown(text: str, name: str) -> list[str]:
    """Run the python blocks of one Markdown text; return the skip reasons. Raises AssertionError on a
    mismatch of printed output and an exception of the example itself (with the block's line)."""
    namespace: dict[str, object] = {"__name__": "__docs__"}
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    skipped = []
    for block in blocks(text):
        if block.lang not in ("python", "py"):
            continue
        reason = missing(block.requires)
        if reason:
            skipped.append(f"{name}:{block.line}: {reason}")
            continue
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, f"{name}:{block.line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{name}, block at line {block.line} raised {type(exc).__name__}: {exc}") from exc
        want, got = expected_output(block.code), out.getvalue()
        if got and not want:
            raise AssertionError(f"{name}, block at line {block.line} prints output not shown with '#>':\n{got}")
        if not checker.check_output(want, got, flags):
            raise AssertionError(f"{name}, block at line {block.line}: shown output\n{want}differs from printed\n{got}")
    return skipped


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_markdown_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    skipped = run_markdown(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    if skipped:
        pytest.skip("; ".join(skipped))


def test_there_are_examples_to_run() -> None:
    """The collector finds the README's and the guide's examples (a broken fence regex cannot pass)."""
    for name in ("README.md", "docs/index.md"):
        assert sum(b.lang == "python" for b in blocks((ROOT / name).read_text())) >= 3, name


#: Commands whose shown output depends on the machine or the run (timings, versions, files written).
_MACHINE_DEPENDENT = ("demo", "bench", "plot", "backends", "--version", "--help")


def console_sessions(text: str) -> list[tuple[str, str]]:
    """``(command, shown output)`` of every ``$ ropeflow ...`` line in the ```console blocks of a page."""
    sessions: list[tuple[str, str]] = []
    for b in blocks(text):
        if b.lang != "console":
            continue
        for line in b.code.splitlines():
            if line.startswith("$ "):
                sessions.append((line[2:].strip(), ""))
            elif sessions:
                sessions[-1] = (sessions[-1][0], sessions[-1][1] + line + "\n")
    return sessions


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_console_commands(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ``$ ropeflow`` command in a ```console block parses; those with machine-independent output
    shown print exactly it (stdout and stderr together; an error line must come with exit status 2)."""
    from ropeflow.cli import build_parser, main

    sessions = [(shlex.split(c)[1:], shown) for c, shown in console_sessions(path.read_text())
                if c.startswith("ropeflow")]
    if path.name == "cli.md":
        assert len(sessions) >= 10
    compared = 0
    for argv, shown in sessions:
        if shown and not any(a in _MACHINE_DEPENDENT for a in argv):
            rc = main(argv) if ": error:" not in shown else _exit_status(main, argv)
            out, err = capsys.readouterr()
            assert out + err == shown, argv
            assert rc == (2 if ": error:" in shown else 0), argv
            compared += 1
        elif "--help" not in argv and "--version" not in argv:
            build_parser().parse_args(argv)  # a usage error exits with status 2 and fails the test
    if path.name == "cli.md":
        assert compared >= 4


def _exit_status(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


# ------------------------------------------------------------------------------ the collector's own checks
GOOD = """
text
```python
x = 2 + 2
print(x)
#> 4
```
more text
```python
print(f"{x / 3:.6f} and more")
#> 1.333...
```
"""


@pytest.mark.parametrize("text,message", [
    (GOOD.replace("#> 4", "#> 5"), "differs from printed"),
    (GOOD.replace("#> 4\n", ""), "prints output not shown"),
    (GOOD.replace("x = 2 + 2", "x = y"), "raised NameError"),
    (GOOD.replace("#> 1.333...", "#> 1.4..."), "differs from printed"),
])
def test_collector_catches_stale_docs(text: str, message: str) -> None:
    run_markdown(GOOD, "good.md")
    with pytest.raises(AssertionError, match=message):
        run_markdown(text, "bad.md")


def test_collector_requirements() -> None:
    text = "<!-- requires: no_such_module_here -->\n```python\nimport no_such_module_here\n```\n"
    assert run_markdown(text, "r.md") == ["r.md:2: needs no_such_module_here"]
    assert blocks("  ```python\n  a = 1\n  ```\n")[0].code == "a = 1"  # indented fences (in lists)
