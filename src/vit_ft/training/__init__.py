"""What a training run needs beyond the model and the data: optimizer and schedule, callbacks,
checkpoint IO, precision and loggers. Plain arguments only; no Hydra."""
