"""A griffe extension for the API reference: ropeflow's docstrings are written for ``help()`` (reST-flavoured
plain text); this turns them into the Markdown that mkdocstrings renders, without changing the source.

* ``:func:`name``` and the other Sphinx roles become inline code;
* ``a**b`` outside code becomes ``a\\*\\*b`` (else Markdown reads bold);
* ``name: description`` lines under a ``Parameters`` heading become numpy-style entries.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")
_POWER = re.compile(r"(?<=[\w)])\*\*(?=[-\w(])")
_CODE = re.compile(r"(``.+?``|`[^`]+`)")
_PARAM = re.compile(r"^(\w+): (.*)$")


def _outside_code(text: str, fn: Any) -> str:
    parts = _CODE.split(text)
    return "".join(p if i % 2 else fn(p) for i, p in enumerate(parts))


def convert(doc: str) -> str:
    """The Markdown form of one docstring."""
    doc = _ROLE.sub(lambda m: f"`{m.group(1)}`", doc)
    lines = doc.splitlines()
    out: list[str] = []
    in_params = False
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith("    ") and not in_params:
            in_code = True  # an indented block: rendered as code, left alone
        elif line.strip():
            in_code = False
        if line.strip() in ("Parameters", "Returns", "Raises") and i + 1 < len(lines) and \
                set(lines[i + 1].strip()) == {"-"}:
            in_params = line.strip() == "Parameters"
            out.append(line)
            continue
        if in_params:
            if not line.strip():
                in_params = bool(i + 1 < len(lines) and _PARAM.match(lines[i + 1]))
            m = _PARAM.match(line)
            if m:
                out.extend([m.group(1), "    " + _outside_code(m.group(2), lambda s: _POWER.sub(r"\\*\\*", s))])
                continue
        out.append(line if in_code else _outside_code(line, lambda s: _POWER.sub(r"\\*\\*", s)))
    return "\n".join(out)


class ReSTDocstrings(griffe.Extension):
    """Rewrite every docstring with :func:`convert` as griffe loads it."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
