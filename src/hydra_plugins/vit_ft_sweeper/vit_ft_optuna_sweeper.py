"""``hparams_search=optuna``: the Hydra Optuna sweeper with vit-ft's resume and failure handling.

Hydra only instantiates sweepers that live in the ``hydra_plugins`` namespace; the logic is in
:func:`vit_ft.sweeps.optuna.optuna_sweep`.
"""

from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # hydra-optuna-sweeper is not installed: nothing to extend
    OptunaSweeper = None

if OptunaSweeper is not None:

    class VitFtOptunaSweeper(OptunaSweeper):
        """Resumes a stored study (``n_trials`` counts the whole study) and reports failed jobs as
        failed trials with their error; the sweep goes on."""

        def sweep(self, arguments: list[str]) -> Any:
            from vit_ft.sweeps.optuna import optuna_sweep

            return optuna_sweep(self.sweeper, arguments)
