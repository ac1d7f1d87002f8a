"""Phase package: use a trained model (load a model folder, predict)."""
