"""Imported last by the workers' fork server (engine.PRELOAD), and by nothing else: what the
server holds by then (torch, Hydra, the run path: ~180,000 objects) is put out of the
garbage collector's reach, as the gc module's documentation advises before fork().

Every worker forks from that heap. Without this, each full collection in a worker walks all
of it and writes to each object's header, so the worker copies pages it only reads; and the
server walks it again in CPython's shutdown when the sweep ends: a server took 1.85-1.99 s of
CPU in all, 1.48-1.62 s with its heap frozen (3 alternated pairs). What is frozen still dies
by refcount. No gc.collect() first: the sweep's first worker waits for this import.
"""
import gc

gc.freeze()
