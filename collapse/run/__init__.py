"""The execution path: one typed config in, one finished record out.

    execute.py      collapse.run.execute.execute: lock, resume, prepare, train, record
    ensemble.py     a group of runs trained as one stacked model, each member recorded as a run
    interrupts.py   SIGINT/SIGTERM while training: recorded results, never crashes
    pruning.py      a search's trial: report the monitored metric each epoch, stop when pruned
    trackers.py     TensorBoard / MLflow / W&B (logger=...): optional, never cost a run
"""
