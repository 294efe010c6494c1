"""Moved to :mod:`hf_lpwd.compare.report` (and :mod:`hf_lpwd.compare.plots`); this module keeps the old
path."""

from .compare.plots import DRIVER_KEY, write_plots
from .compare.report import DIGITS, REPORT_NAME, SUMMARY_NAME, cell_summaries, markdown_table, write_report

__all__ = [
    "DIGITS",
    "DRIVER_KEY",
    "REPORT_NAME",
    "SUMMARY_NAME",
    "cell_summaries",
    "markdown_table",
    "write_plots",
    "write_report",
]
