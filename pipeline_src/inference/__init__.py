"""Inference phase: the frozen predictor that evaluation (and prediction) load; see ``predictor.py``."""
