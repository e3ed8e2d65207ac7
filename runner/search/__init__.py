"""The Optuna side: the search space, the study, the objective that turns a trial into a training run."""
