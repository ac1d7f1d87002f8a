"""Evaluation phase: metrics (both Dice conventions, HD95/ASSD/NSD) and eval@<regime>. study and report, which
read eval's outputs across runs, are pipeline_src/aggregate/.

metrics.py   per-image and global metrics, empty-mask rules
metric_specs.py  each metric's label, unit, direction and format, for study and report (imports nothing)
evaluate.py  ``medref eval <regime>``; ``evaluate_predictor`` scores a predictor on a dataset
plots.py     figures (matplotlib Agg), eval's and the report's
"""
