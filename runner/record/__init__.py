"""What a sweep leaves behind: MLflow runs and the registry, artifacts, plots, the model card, the best model.

The only package that imports mlflow.
"""
