"""Data phase: download (or synthesise) raw datasets, preprocess them into Parquet shards, label splits."""
