"""collapse's Optuna sweeper (hydra/sweeper=optuna): Hydra's class over collapse.sweep.study.Search,
on Optuna >= 4's ask-and-tell API. Hydra instantiates plugins only under hydra_plugins;
this module imports nothing heavy (Hydra imports it whenever it scans plugins)."""
from __future__ import annotations

from typing import Any, Optional

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    def __init__(self, direction: str = "maximize", storage: Optional[str] = None, study_name: Optional[str] = None,
                 n_trials: int = 20, n_jobs: int = 1, sampler: Any = None, pruner: Any = None,
                 params: Any = None) -> None:
        self.options = dict(direction=direction, storage=storage, study_name=study_name, n_trials=n_trials,
                            n_jobs=n_jobs, sampler=sampler, pruner=pruner, params=params)
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> Any:
        from collapse.run.pruning import make_pruner
        from collapse.sweep.study import Search, SearchError

        try:
            search = Search(**self.options, config=self.config, launch=self.launcher.launch,
                            make_pruner=make_pruner)
            return search.run(arguments)
        except SearchError as e:
            from collapse.sweep.callback import refuse

            refuse(str(e))
        finally:
            close = getattr(self.launcher, "close", None)
            if close is not None:
                close()
