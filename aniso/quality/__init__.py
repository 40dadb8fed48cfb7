"""Judging a run: the geometric diagnostics, what each metric means, the gate tables and their
great-expectations suites, and the run report (HTML with inline SVG plots, and JSON)."""
