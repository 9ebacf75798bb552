"""README.md as data: its fenced code blocks, sections and tables, for the tests that follow it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language tag, text and the ``##`` section it is in."""

    lang: str
    text: str
    section: str


def blocks(text: str | None = None) -> list[Block]:
    """Every top-level fenced block of the README, in order.

    Examples
    --------
    >>> [(b.lang, b.text, b.section) for b in blocks("## A\\n```bash\\nmake demo\\n```\\n")]
    [('bash', 'make demo\\n', 'A')]
    """
    text = README.read_text() if text is None else text
    out = []
    for m in _FENCE.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: m.start()], re.MULTILINE)
        out.append(Block(m.group(1), m.group(2), headings[-1] if headings else ""))
    return out


def commands(block: Block) -> list[str]:
    """The shell commands of a block: ``\\`` continuations joined, comments and blank lines dropped.

    Examples
    --------
    >>> commands(Block("bash", "make demo   # runs it\\nls \\\\\\n  -l\\n\\n", ""))
    ['make demo', 'ls -l']
    """
    joined = re.sub(r"\\\n\s*", "", block.text)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def table(section: str, text: str | None = None) -> list[list[str]]:
    """The rows of the first Markdown table under ``## section`` (header and rule left out)."""
    text = README.read_text() if text is None else text
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else None]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]
