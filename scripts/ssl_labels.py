"""Where SSL pretraining helps on the benchmark: ssl off vs on at a few label fractions.

    python scripts/ssl_labels.py                                 # ~3 min on one core
    python scripts/ssl_labels.py --fractions 0.001,0.01 --seeds 0,1,2,3,4

For each `data.label_fraction` the supervised step sees that share of the 7000 train
samples (SSL: all of them); val and test keep their 1500 samples each. The batch size
and epochs follow collapse.budget's rule for the labelled count (a 7-label run with
batch 256 would take one step an epoch). Prints val/test R² per seed and the paired
val difference on - off.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.001,0.002,0.005,0.01,0.05,1.0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides appended to every run")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    from collapse.budget import effective_batch_size
    from collapse.config import DataConfig, TrainerConfig
    from collapse.train import run

    torch.set_num_threads(1)
    logging.getLogger("collapse").setLevel(logging.WARNING)
    d, t = DataConfig(), TrainerConfig()
    n_train = d.n_samples - round(d.n_samples * d.val_fraction) - round(d.n_samples * d.test_fraction)
    print("| label fraction | labels | batch, epochs | val R² ssl off | val R² ssl on | on - off (paired) | test R² off / on |")
    print("|---|---|---|---|---|---|---|")
    for fraction in (float(f) for f in args.fractions.split(",")):
        n_labels = n_train if fraction == 1 else max(2, round(fraction * n_train))
        p = {"batch_size": effective_batch_size(n_labels, t.batch_size, t.min_batches_per_epoch),
             "epochs": t.epochs}
        budget: list[str] = []           # the defaults' own budget rule (collapse.budget)
        got = {}
        for ssl in ("off", "on"):
            t0 = time.time()
            got[ssl] = [run([f"data.label_fraction={fraction}", f"ssl={ssl}", f"seed={s}", *budget, *args.extra]).to_dict()
                        for s in seeds]
            print(f"  {fraction:g} ssl={ssl}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        val = {k: [r["best"]["val"]["r2"] for r in v] for k, v in got.items()}
        test = {k: statistics.fmean(r["best"]["test"]["r2"] for r in v) for k, v in got.items()}
        diff = [b - a for a, b in zip(val["off"], val["on"])]
        sd = statistics.stdev(diff) if len(diff) > 1 else 0.0
        print(f"| {fraction:g} | {n_labels} | {p['batch_size']}, {p['epochs']} | "
              f"{' / '.join(f'{v:.2f}' for v in val['off'])} | {' / '.join(f'{v:.2f}' for v in val['on'])} | "
              f"{statistics.fmean(diff):+.3f} ± {sd:.3f} ({sum(x > 0 for x in diff)}/{len(diff)} up) | "
              f"{test['off']:.3f} / {test['on']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
