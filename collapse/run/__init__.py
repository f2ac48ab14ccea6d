"""The execution path: one typed config in, one finished record out.

    execute.py      collapse.run.execute.execute: lock, resume, prepare, train, record
    interrupts.py   SIGINT/SIGTERM while training: recorded results, never crashes
    trackers.py     TensorBoard / MLflow (logger=...): optional, never cost a run
"""
