"""A custom model and data set for `model=custom` / `data=custom` (see README, "Bring
your own model and data"). Run from the repository root, where `examples` imports."""
