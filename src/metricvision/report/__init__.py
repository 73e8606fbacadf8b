"""HTML reports with plots."""
from metricvision.report.html import query_grid, write_report

__all__ = ["query_grid", "write_report"]
