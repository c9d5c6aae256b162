"""Where the driver persists trial results: MLflow runs and a Parquet dataset."""
