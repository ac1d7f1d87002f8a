"""Phase package: results across runs. No model is loaded here and torch is never imported.

study.py     ``medref study <study>``: seeds pooled, paired deltas with bootstrap CIs, ablations, verdicts
report.py    ``medref report``: every run's metrics and every study in one markdown/CSV/HTML report
params.py    the ``report`` section (the ``studies`` section defines the grid, so pipeline_src/params.py holds it)

It reads what ``eval`` wrote (metrics/<run>.json, eval/<run>/per_sample.csv) and draws with
pipeline_src/evaluate/plots.py.
"""
