"""RTL generation: renders the Verilog shell (and core) from rtl_templates/."""

from .render import TEMPLATE_DIR, render_rtl

__all__ = ["TEMPLATE_DIR", "render_rtl"]
