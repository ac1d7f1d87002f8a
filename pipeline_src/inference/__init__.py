"""Phase package: use a trained model.

    medref predict qata_10pct --images scans/ --texts reports.csv --out pred   # predict.py
    medref export qata_10pct --format onnx --out qata_10pct.onnx             # export.py

predictor.py loads a model folder (sha256-checked) for eval and predict; postprocess.py is the one
probability -> mask rule both apply; card.py completes the model card with eval's metrics.
"""
