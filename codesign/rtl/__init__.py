"""RTL generation: renders the docs/UARCH.md core and its AXI shell from rtl_templates/."""

from .render import TEMPLATE_DIR, render_uarch_rtl

__all__ = ["TEMPLATE_DIR", "render_uarch_rtl"]
