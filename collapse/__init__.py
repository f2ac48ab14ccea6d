"""collapse: ablation studies of variance collapse in deep regression.

Kept import-light on purpose: `import collapse` must not pull torch, Hydra or
scikit-learn. Use `collapse.train.run(overrides)` for the notebook API.
"""

__version__ = "0.1.0"
