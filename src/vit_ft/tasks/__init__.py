"""The only code that reads a Hydra config: each task turns the composed config into objects, runs
them and writes the run's outputs. Everything below this package takes plain arguments."""
