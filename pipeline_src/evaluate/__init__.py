"""Evaluation phase: metrics (both Dice conventions, HD95/ASSD/NSD), eval@<regime>, and the report.

metrics.py   per-image and global metrics, empty-mask rules
evaluate.py  ``medref eval <regime>``; ``evaluate_predictor`` scores a predictor on a dataset
report.py    ``medref report``
plots.py     figures (matplotlib Agg)
"""
