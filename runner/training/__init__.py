"""Fine-tune one model on MRPC and score it: data, model, metrics, the Trainer run, re-evaluation.

Knows nothing of Optuna or MLflow: one training run, given its hyperparameters.
"""
