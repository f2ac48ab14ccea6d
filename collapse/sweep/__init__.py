"""Sweeps under Hydra: the machinery around many runs. Imports collapse's contracts
only (config, records, errors), never torch or the science.

    callback.py   SweepStatus (hydra.callbacks): the sweep dir's lock, manifest, resume guard, exit status
    cores.py      usable cores and torch threads per job; sizing the launcher
    engine.py     the default launcher's worker pool (hydra_plugins/collapse_launcher.py adapts it)
    ensemble.py   hydra/launcher=ensemble: jobs grouped, each group trained as one stacked model
    job.py        a job's side: exit with a killed sweep; what a failed trial returns
    preloaded.py  the workers' fork server freezes its preloaded heap (imported by the server only)
    progress.py   the sweep's console: a line per finished job, a running count with an ETA
    study.py      hydra/sweeper=optuna: a stored, resumable Optuna study on ask-and-tell
"""
