"""What a sweep needs beyond one run: each job's failure record (job), the checks before it starts
(checks), Optuna with resume (optuna), the report (report) and the Hydra callbacks (callbacks)."""
