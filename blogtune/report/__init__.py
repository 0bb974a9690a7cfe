"""Report stage (rule report_assets): plots, HTML pages and metrics.json for `snakemake --report`.

Public API: the modules themselves, `plots` (PNG figures) and `pages` (HTML tables, run metrics).
"""
