"""collapse's Hydra plugins (Hydra only instantiates plugins defined under hydra_plugins):
- ParallelLauncher (hydra/launcher=parallel, the default): collapse.sweep.engine.Engine;
- EnsembleLauncher (hydra/launcher=ensemble): the same workers, jobs grouped and each group
  trained as one stacked model (collapse.sweep.ensemble.EnsembleEngine);
- GridSweeper (hydra/sweeper=grid, the default): Hydra's BasicSweeper - same grid, same
  job order, same `params` - that lets a launcher able to compose jobs in parallel do
  the validation, keeping the configs it composed for the run.
Hydra imports this module whenever it scans plugins: it imports nothing heavy."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.plugins.launcher import Launcher


class ParallelLauncher(Launcher):
    def __init__(self, n_jobs: int = 0) -> None:
        # 0: collapse.sweep.callback.SweepStatus sizes it before this is built (min(usable cores, jobs))
        self.n_jobs = n_jobs
        self.engine: Optional[Any] = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from collapse.sweep.cores import usable_cores, workers_for
        from collapse.sweep.engine import Engine

        # the workers start now (the first waits ~1.3 s for the fork server to import PRELOAD);
        # they compose the sweeper's cells (compose) before they run its jobs (launch)
        self.engine = Engine(workers_for(int(self.n_jobs), usable_cores()), hydra_context, task_function, config)

    def compose(self, batch: Sequence[Sequence[str]]) -> None:
        assert self.engine is not None
        self.engine.compose(batch)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        assert self.engine is not None
        return self.engine.launch(job_overrides, initial_job_idx)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


class EnsembleLauncher(ParallelLauncher):
    def __init__(self, n_jobs: int = 0, max_members: int = 0) -> None:
        super().__init__(n_jobs)
        self.max_members = max_members

    def setup(self, *, hydra_context, task_function, config) -> None:
        from collapse.sweep.cores import usable_cores, workers_for
        from collapse.sweep.ensemble import EnsembleEngine

        self.engine = EnsembleEngine(workers_for(int(self.n_jobs), usable_cores()), hydra_context, task_function,
                                     config, max_members=int(self.max_members))


class GridSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if isinstance(self.launcher, ParallelLauncher):
            self.launcher.compose(batch)        # every job composed before any runs, in parallel
        else:
            super().validate_batch_is_legal(batch)

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return super().sweep(arguments)
        finally:
            if isinstance(self.launcher, ParallelLauncher):
                self.launcher.close()
