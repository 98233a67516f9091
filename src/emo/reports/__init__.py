"""`emo report`: one self-contained HTML page summarising whatever a run folder holds."""

from __future__ import annotations

from emo.reports.build import build_report
from emo.reports.registry import Section, register_section

__all__ = ["build_report", "register_section", "Section"]
