"""Static checks of the generated HLS C++: what every pipelined loop does on the m_axi bundles.

The kernel reaches its bundles only through the accessors of firmware/ops/axi.h
(`gmem_read`, `gmem_write`, `wgt<p>_read`), so the bus traffic of a loop can be read off its
source: `pipelined_loops` finds every loop whose body starts with `#pragma HLS PIPELINE` and counts
the accessor calls in it, including those of the functions it calls (transitively, once per call
site). docs/UARCH.md's rule for II=1 is at most one read and one write per bundle per iteration;
`bus_violations` lists the loops that break it.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_ACCESSOR = re.compile(r"\b(gmem|wgt\d+)_(read|write)\s*\(")
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*(?:<[^<>;{}()]*>)?\s*\(")
_FUNCTION = re.compile(r"^[ \t]*(?:template\s*<[^>]*>\s*)?(?:static\s+)?(?:inline\s+)?[\w:<>]+[\s\*&]+(\w+)\s*\(", re.M)
_LOOP = re.compile(r"\b(for|while)\s*\(")
_PIPELINE = re.compile(r"^\s*#pragma HLS PIPELINE\b")
_ENTRY = "CODESIGN_LOOP_ENTRY();"
_KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "static_assert"}


@dataclass
class Loop:
    file: str
    line: int
    function: str
    accesses: Counter = field(default_factory=Counter)  # (bundle, "read"|"write") -> call sites per iteration
    entry_marked: bool = False  # CODESIGN_LOOP_ENTRY(); right before the loop (the counting build)

    def __str__(self) -> str:
        bus = ", ".join(f"{b} {d} x{n}" for (b, d), n in sorted(self.accesses.items()))
        return f"{self.file}:{self.line} ({self.function}): {bus or 'no bus access'}"


def strip_comments(text: str) -> str:
    """Comments out, line structure kept (so line numbers stay right); string literals are rare
    in the kernel and contain no comment markers."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _close(text: str, open_at: int) -> int:
    """Index of the bracket that closes the one at open_at ('(' or '{')."""
    opening = text[open_at]
    closing = ")" if opening == "(" else "}"
    depth = 0
    for i in range(open_at, len(text)):
        depth += (text[i] == opening) - (text[i] == closing)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced {opening}")


def _block(text: str, open_at: int) -> str:
    """The text between the brace at open_at and its match."""
    return text[open_at + 1: _close(text, open_at)]


def _after_parens(text: str, open_paren: int) -> int:
    return _close(text, open_paren) + 1


def functions(sources: dict[str, str]) -> dict[str, tuple[str, int, str]]:
    """name -> (file, offset of its body, body) of every function defined in the sources."""
    found = {}
    for name, text in sources.items():
        for m in _FUNCTION.finditer(text):
            if m.group(1) in _KEYWORDS:
                continue
            end = _after_parens(text, m.end() - 1)
            brace = re.match(r"\s*(?:const\s*)?\{", text[end:])
            if brace:
                open_at = end + brace.end() - 1
                found[m.group(1)] = (name, open_at, _block(text, open_at))
    return found


def _accesses(body: str, funcs: dict, seen: tuple[str, ...] = ()) -> Counter:
    counts = Counter((m.group(1), m.group(2)) for m in _ACCESSOR.finditer(body))
    for m in _CALL.finditer(body):
        callee = m.group(1)
        if callee in funcs and callee not in seen and not _ACCESSOR.match(m.group(0)):
            counts.update(_accesses(funcs[callee][2], funcs, seen + (callee,)))
    return counts


def pipelined_loops(sources: dict[str, str]) -> list[Loop]:
    """Every loop whose body starts with `#pragma HLS PIPELINE`, with its bus accesses."""
    sources = {name: strip_comments(text) for name, text in sources.items()}
    funcs = functions(sources)
    loops = []
    for fname, (file, offset, body) in funcs.items():
        for m in _LOOP.finditer(body):
            end = _after_parens(body, m.end() - 1)
            brace = re.match(r"\s*\{", body[end:])
            if not brace:
                continue
            inner = _block(body, end + brace.end() - 1)
            if not any(_PIPELINE.match(line) for line in inner.strip().splitlines()[:1]):
                continue
            before = body[:m.start()].rstrip()
            line = sources[file][:offset + 1 + m.start()].count("\n") + 1
            loops.append(Loop(file, line, fname, _accesses(inner, funcs), before.endswith(_ENTRY)))
    return sorted(loops, key=lambda lp: (lp.file, lp.line))


def bus_violations(loops: list[Loop]) -> list[str]:
    """Loops that read or write one bundle more than once per iteration."""
    return [str(lp) for lp in loops if any(n > 1 for n in lp.accesses.values())]


def read_sources(firmware: Path) -> dict[str, str]:
    """The kernel's sources below firmware/ (relative path -> text)."""
    files = sorted(list(firmware.rglob("*.h")) + list(firmware.rglob("*.cpp")))
    return {str(p.relative_to(firmware)): p.read_text() for p in files}
