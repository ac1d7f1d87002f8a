"""Evaluation phase: metrics (both Dice conventions, HD95/ASSD/NSD), eval@<regime>, and the report.

metrics.py   per-image and global metrics, empty-mask rules
evaluate.py  ``medref eval <regime>``; ``evaluate_predictor`` is shared with training validation
report.py    ``medref report``
plots.py     figures (matplotlib Agg)
"""
