"""Render rtl_templates/*.v.j2 into plain Verilog files.

All RTL goes through Jinja2 (even files without template variables) so that
the generator treats every hardware source uniformly; StrictUndefined makes a
missing parameter a hard error instead of silently emitting empty Verilog.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "rtl_templates"
TEMPLATE_SUFFIX = ".v.j2"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def template_names() -> list[str]:
    """Names of all RTL templates, sorted for a deterministic file order."""
    return sorted(p.name for p in TEMPLATE_DIR.glob("*" + TEMPLATE_SUFFIX))


def render_rtl(out_dir: Path, params: dict) -> list[Path]:
    """Render every rtl_templates/*.v.j2 to out_dir/*.v; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _environment()
    written = []
    for name in template_names():
        text = env.get_template(name).render(**params)
        path = out_dir / name[: -len(".j2")]
        path.write_text(text)
        written.append(path)
    return written
