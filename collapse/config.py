"""Typed config schema: every key, its type and its default live here, once.

The YAML files under conf/ only choose an option and set what differs from these
defaults. Because the YAML is merged into these dataclasses (registered once in
Hydra's ConfigStore), an unknown key or a wrong type fails at compose time with the
key named. Ranges cannot be typed, so `validate` checks them after composition and
raises `ConfigError` with the key, the bad value and what is allowed.

Besides this module (`register_configs`), only the entry point (collapse.train), the
sweep machinery (collapse.sweep) and the `_target_` mechanism (collapse.targets) touch
Hydra/OmegaConf; the science and the run path receive these plain dataclasses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Dict, List, Optional, Sequence

from collapse.errors import ConfigError  # noqa: F401 - raised here, part of this module's API


class Choice(str, Enum):
    """An option name. OmegaConf rejects any other value at compose time, naming the key
    and the allowed values; being a str, a member compares equal to its name."""

    def __str__(self) -> str:       # f-strings show "gru", not "ModelName.gru"
        return self.value


def _choices(name: str, options: str) -> type[Choice]:
    # value == name, and a module so the members pickle (joblib, submitit ship configs)
    return Choice(name, [(o, o) for o in options.split()], module=__name__, qualname=name)


ModelName = _choices("ModelName", "mean_pool temporal_conv gru custom")
DataName = _choices("DataName", "synthetic npz custom")
Weighting = _choices("Weighting", "none inverse sqrt_inverse dense")
LossName = _choices("LossName", "mse huber l1 ccc bmc")
VarianceMode = _choices("VarianceMode", "squared hinge")
VarianceTarget = _choices("VarianceTarget", "batch train")
OptimizerName = _choices("OptimizerName", "adam adamw sgd")
Monitor = _choices("Monitor", "r2 val_loss")
LrSchedule = _choices("LrSchedule", "none plateau")
Device = _choices("Device", "auto cpu cuda")
LoggerName = _choices("LoggerName", "tensorboard mlflow wandb")


@dataclass
class ModelConfig:
    # mean_pool: per-frame MLP encoder + temporal mean pooling (the classic design that
    # over-averages); temporal_conv: same encoder + a Conv1d over time + last step;
    # gru: same encoder + a GRU whose last hidden state reads out (can weight frames).
    # gru is the default: on real series (scripts/real_data.py --series) it improves with
    # more frames as ridge does and ends within 0.05 test R² of it, where mean_pool, blind
    # to frame order, got worse; the study's presets pin mean_pool.
    name: ModelName = ModelName.gru  # architecture: gru | mean_pool | temporal_conv | custom (model=NAME)
    hidden_dim: int = 64  # width of the per-frame encoder and the aggregator
    n_layers: int = 2            # layers of the per-frame encoder
    dropout: float = 0.0  # dropout probability in the encoder
    kernel_size: int = 3         # temporal_conv only: width of its Conv1d over time
    init_std: float = 0.5        # std of the output layer's weight init (the study's knob)
    # model=custom only (collapse.models, collapse.targets): your nn.Module, built with hydra.utils.instantiate
    # as _target_(n_features=..., output_bias=..., **kwargs). Its own keyword arguments live
    # in `kwargs` (a free-form dict), so every framework key above keeps its type and a
    # misspelt one still fails at compose time. Refused with any other model option.
    _target_: Optional[str] = None  # model=custom: import path of your nn.Module class
    kwargs: Dict[str, Any] = field(default_factory=dict)  # model=custom: keyword arguments (+model.kwargs.NAME=VALUE)


@dataclass
class DataConfig:
    name: DataName = DataName.synthetic  # data source: synthetic | npz | custom (data=NAME)
    path: Optional[str] = None   # npz only: file with X (N, T, C), y (N,), optional split (N,)
    n_samples: int = 10000       # synthetic only: samples generated
    n_frames: int = 7            # synthetic only: frames per sample (T)
    n_features: int = 8          # synthetic only: features per frame (C)
    signal: float = 1.0          # synthetic only: 0 = targets independent of inputs (negative control)
    noise_std: float = 0.05      # synthetic only: observation noise on the features
    period_jitter: float = 0.05  # synthetic only: relative jitter of the latent period around n_frames
    temporal_frames: int = 3     # how many of the most recent frames the model sees (1..T)
    val_fraction: float = 0.15   # seeded split when the file has no `split`
    test_fraction: float = 0.15  # seeded test share when the file has no `split`
    # Sample weighting for rare targets. `overweight_factor` multiplies the weight of
    # train targets outside the central [rare_quantile, 1 - rare_quantile] band;
    # `weighting` generalises it (none | inverse | sqrt_inverse | dense) on a smoothed
    # label density (LDS, Yang et al. 2021); weights are normalised to mean 1.
    overweight_factor: float = 1.0  # weight multiplier for rare train targets (outside the central band)
    rare_quantile: float = 0.1  # targets below this quantile or above 1 - it count as rare
    weighting: Weighting = Weighting.none  # label-density weighting: none | inverse | sqrt_inverse | dense (LDS)
    weighting_bins: int = 50  # histogram bins of the label density
    weighting_sigma: float = 2.0  # LDS Gaussian kernel width, in bins
    dense_alpha: float = 1.0      # DenseWeight's alpha (weighting=dense)
    # Targets are standardised with the labelled train split's mean and std (float64)
    # before the loss and the model see them; metrics, predictions and recalibration
    # stay in the file's units. Off: raw units (MSE then scales with the target variance
    # while the variance term does not, so lambda means something else per data set).
    standardize_target: bool = True  # standardise targets on the labelled train split (metrics stay in file units)
    # Share of the train split that keeps its targets (a seeded choice); SSL still sees
    # every train frame, val and test are untouched. 1 = all labelled.
    label_fraction: float = 1.0  # share of the train split that keeps its labels (seeded)
    # data=custom only (collapse.models, collapse.targets): a callable returning (X, y) or (X, y, split),
    # called as _target_(**kwargs) (plus seed=..., when it takes a `seed`). Refused with
    # any other data option.
    _target_: Optional[str] = None  # data=custom: import path of a callable returning (X, y) or (X, y, split)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # data=custom: keyword arguments (+data.kwargs.NAME=VALUE)


@dataclass
class LossConfig:
    # base: mse | huber | l1 | ccc | bmc. Every option adds the variance term:
    #   lambda * (1 - var(pred) / var(target))**2    (see collapse.losses)
    name: LossName = LossName.mse  # base loss: mse | huber | l1 | ccc | bmc (loss=NAME)
    huber_delta: float = 1.0        # huber: its delta, in standardised target units (train std)
    bmc_sigma: float = 0.5          # bmc: Balanced MSE noise std, in standardised target units (train std)
    ccc_weight: float = 1.0         # ccc: total = (1 - w) * mse + w * (1 - CCC)
    variance_lambda: float = 0.0  # weight of the variance term lambda * (1 - var(pred)/var(target))**2
    variance_mode: VarianceMode = VarianceMode.squared   # squared, or hinge (does not punish over-dispersion)
    variance_target: VarianceTarget = VarianceTarget.batch  # batch's target variance, or train: the whole train split's
    eps: float = 1e-8  # added to variances before dividing


@dataclass
class SSLConfig:
    # Masked-feature reconstruction of single frames by the per-frame encoder, on the
    # unlabeled train frames, before supervised training.
    enabled: bool = False  # masked-feature pretraining of the encoder before training (ssl=on)
    epochs: int = 20  # pretraining epochs
    lr: float = 1e-3  # pretraining learning rate
    batch_size: int = 512  # pretraining batch size
    mask_ratio: float = 0.3  # share of features masked per frame
    corruption_std: float = 0.0  # > 0 adds Gaussian noise to the reconstruction targets (degraded SSL)


@dataclass
class TrainerConfig:
    # an upper bound: the plateau schedule and early stopping end runs (measured on four
    # real sets: within 0.02 test R² of 200 epochs at patience 30, scripts/real_data.py --budget)
    epochs: int = 200  # maximum training epochs (an upper bound: the lr schedule and early stopping end runs)
    batch_size: int = 256  # train batch size (capped by min_batches_per_epoch)
    # The budget for small data: the batch is capped so an epoch has at least this many
    # optimizer steps (collapse.trainer's budget); 0 = use batch_size as it is.
    min_batches_per_epoch: int = 8  # at least this many optimizer steps an epoch; 0 = batch_size as it is
    optimizer: OptimizerName = OptimizerName.adam   # adam | adamw | sgd (adam: coupled L2 decay; adamw: decoupled)
    lr: float = 1e-3  # learning rate
    weight_decay: float = 0.0  # L2 (adam, sgd) or decoupled (adamw) weight decay
    monitor: Monitor = Monitor.r2   # r2 (maximised) | val_loss (minimised)
    patience: int = 10              # epochs without improvement before early stopping
    min_delta: float = 1e-4  # smallest improvement of the monitored metric that counts
    # plateau: multiply the lr by `lr_factor` after `lr_patience` epochs without improvement
    # of the monitored score (torch's ReduceLROnPlateau, state in the checkpoint), down to
    # lr * `min_lr_ratio`; none: a constant lr.
    lr_schedule: LrSchedule = LrSchedule.plateau  # plateau (lr x lr_factor when the monitored score stalls) | none
    lr_factor: float = 0.5  # plateau schedule: the lr is multiplied by this
    lr_patience: int = 4  # plateau schedule: epochs without improvement before the lr drops
    min_lr_ratio: float = 0.01  # plateau schedule: the lr never drops below lr times this
    # the run's last `trend_window` epochs: a monitored score still rising over them (the
    # lower end of the slope's 95% interval > 0) flags the record's budget_exhausted
    trend_window: int = 10  # last epochs whose rising score flags budget_exhausted (still improving)
    # Collapse guard: stop when the val variance ratio stays below `guard_threshold`
    # for `guard_patience` epochs after `guard_warmup` epochs.
    guard: bool = True  # stop a run whose val variance ratio stays near zero (collapse guard)
    guard_threshold: float = 0.02  # collapse guard: val variance ratio below this counts as collapsed
    guard_warmup: int = 10  # collapse guard: epochs before it watches
    guard_patience: int = 5  # collapse guard: collapsed epochs in a row before it stops the run
    device: Device = Device.auto  # auto (cuda when available) | cpu | cuda
    threads: int = 0                # torch intra-op threads; 0 = cores / concurrent jobs
    deterministic: bool = True  # deterministic torch algorithms (bit-for-bit repeatable runs)


@dataclass
class DiagnosisConfig:
    # Diagnosis of the val and the test split (collapse.metrics.diagnose): |r| below
    # `min_r` is no_signal (honest shrinkage); a variance ratio below `collapse_ratio_of_r`
    # * |r| is collapsed (squeezed harder than calibrated shrinkage would: fixable).
    # Each label must hold across `confidence` intervals for r (Fisher z) and for the
    # calibration slope r / ratio (OLS t), else `inconclusive`; a ratio above
    # `inflate_ratio_of_r` * |r| is inflated (spread the signal cannot support: R² < 0); a
    # significant mean offset that alone makes R² < 0 while r >= min_r is biased; an R²
    # below the linear reference's (metrics.json `reference`) by more than
    # `underfit_r2_gap` over the gap's interval is underfit (the signal exists, the model missed it).
    # `correct_selection`: the val split chose the best of E epochs, so its intervals
    # are Bonferroni-widened by E (test's are not).
    min_r: float = 0.2  # |r| below this over its interval: no_signal
    collapse_ratio_of_r: float = 0.5  # variance ratio below this times r over its interval: collapsed
    inflate_ratio_of_r: float = 2.0  # variance ratio above this times |r| over its interval: inflated
    underfit_r2_gap: float = 0.05  # R² below the linear reference's by more than this over its interval: underfit
    confidence: float = 0.95  # confidence of the intervals behind each label
    correct_selection: bool = True  # widen val's intervals for the epochs it chose the best from (Bonferroni)


@dataclass
class LoggerConfig:
    # Experiment tracking (collapse.run.trackers), off by default: names lists the loggers on
    # (logger=tensorboard | mlflow | both, or logger.names=[tensorboard,mlflow]). Not part
    # of what a run computes: left out of the config hash (collapse.records).
    names: List[LoggerName] = field(default_factory=list)  # trackers on: tensorboard, mlflow, wandb (logger=NAME)
    # mlflow only: a local SQLite store (relative paths are resolved against the cwd) or a
    # tracking server (http://host:5000); the experiment the runs go into
    tracking_uri: str = "sqlite:///outputs/mlflow.db"  # mlflow: a SQLite store or a tracking server URL
    experiment: str = "collapse"  # mlflow and wandb: the experiment (project) the runs go into


@dataclass
class SweepInfo:
    # Declared by a named sweep (sweeps/*.yaml) for the summary: the config keys it
    # varies (seed is always the replicate axis) and its baseline cell as key=value.
    name: str = "adhoc"  # the sweep's name (a named sweep in sweeps/ sets it)
    factors: List[str] = field(default_factory=list)  # the config keys the sweep varies, for the summary
    baseline: List[str] = field(default_factory=list)  # the baseline cell as key=value, for the summary


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0  # seed of the data split, the init and the batch order (the replicate axis)
    study: str = "default"          # free label, copied into metrics.json
    resume: bool = False            # skip jobs whose metrics.json is complete for the same config
    save_weights: bool = True  # write the best epoch's weights (model.pt) into the run directory
    # Rewrite metrics.json (history so far) and checkpoint.pt (what resume continues
    # from) after an epoch when this many seconds passed since the last write; 0: every
    # epoch. A SIGKILL loses at most this much training; results never depend on it.
    checkpoint_every_s: float = 2.0  # seconds between rewrites of metrics.json and checkpoint.pt during training
    recalibrate: bool = True        # report metrics after an affine refit on val (see metrics)
    diagnosis: DiagnosisConfig = field(default_factory=lambda: DiagnosisConfig())
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig())
    sweep: SweepInfo = field(default_factory=lambda: SweepInfo())


# hydra/launcher=ensemble (collapse.sweep.ensemble groups jobs, collapse.run.ensemble trains a
# group as one stacked model): the keys members of one group may differ in; all others are shared
ENSEMBLE_MEMBER_KEYS = ("seed", "loss.variance_lambda", "model.init_std", "trainer.lr", "trainer.weight_decay")


def ensemble_refusal(model_name: str, logger_names: List[str], lr_schedule: str = "none") -> Optional[str]:
    """Why hydra/launcher=ensemble cannot train a config (one line), or None."""
    if str(lr_schedule) != "none":
        # the stacked loop (collapse.ensemble) keeps one constant lr per member; a per-member
        # plateau schedule would have to mirror Trainer's ReduceLROnPlateau step for step
        return (f"trainer.lr_schedule={lr_schedule} is refused: the ensemble engine trains with a constant lr "
                "per member; set trainer.lr_schedule=none (the study's presets do) or use hydra/launcher=parallel")
    if model_name == "custom":
        return ("model=custom is refused: the ensemble engine stacks the built-in models (mean_pool, "
                "temporal_conv, gru); train it with hydra/launcher=parallel")
    if logger_names:
        return (f"logger.names={list(logger_names)} is refused: runs trained together have no per-run "
                "tracker; use logger=none or hydra/launcher=parallel")
    return None


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: must be {allowed}")


def _check_custom(group: str, node: Any) -> None:
    """`_target_` imports and calls code: read only with the `custom` option (and needed there)."""
    if node.name == "custom":
        _check(bool(node._target_), f"{group}._target_", node._target_,
               f"a callable's import path (package.module.Name) when {group}=custom")
    else:
        for key in ("_target_", "kwargs"):
            _check(not getattr(node, key), f"{group}.{key}", getattr(node, key),
                   f"unset with {group}={node.name} (it is read with {group}=custom only)")


def validate(cfg: Config) -> Config:
    """Check ranges the types cannot express; raise ConfigError naming the key."""
    def positive(key: str, value: float) -> None:
        _check(math.isfinite(value) and value > 0, key, value, "> 0")

    def non_negative(key: str, value: float) -> None:
        _check(math.isfinite(value) and value >= 0, key, value, ">= 0")

    m, d, lo, s, t = cfg.model, cfg.data, cfg.loss, cfg.ssl, cfg.trainer
    _check_custom("model", m)
    _check_custom("data", d)
    _check(not (m.name == "custom" and s.enabled), "ssl.enabled", s.enabled,
           "false with model=custom (SSL pretrains the built-in per-frame encoder)")
    positive("model.hidden_dim", m.hidden_dim)
    positive("model.n_layers", m.n_layers)
    positive("model.kernel_size", m.kernel_size)
    non_negative("model.init_std", m.init_std)
    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "in [0, 1)")

    positive("data.n_samples", d.n_samples)
    positive("data.n_frames", d.n_frames)
    positive("data.n_features", d.n_features)
    _check(0 <= d.signal <= 1, "data.signal", d.signal, "in [0, 1]")
    non_negative("data.noise_std", d.noise_std)
    _check(0 <= d.period_jitter < 1, "data.period_jitter", d.period_jitter, "in [0, 1)")
    positive("data.temporal_frames", d.temporal_frames)
    if d.name == "synthetic":
        _check(d.temporal_frames <= d.n_frames, "data.temporal_frames", d.temporal_frames,
               f"in 1..{d.n_frames} (data.n_frames)")
    if d.name == "npz":
        _check(bool(d.path), "data.path", d.path, "a path to an .npz file when data=npz")
    _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "in (0, 1)")
    _check(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "in (0, 1)")
    _check(d.val_fraction + d.test_fraction < 1, "data.test_fraction", d.test_fraction,
           f"< 1 - data.val_fraction ({1 - d.val_fraction:g})")
    _check(math.isfinite(d.overweight_factor) and d.overweight_factor >= 1,
           "data.overweight_factor", d.overweight_factor, ">= 1 (1 = no overweighting)")
    _check(0 < d.rare_quantile < 0.5, "data.rare_quantile", d.rare_quantile, "in (0, 0.5)")
    _check(d.weighting_bins >= 2, "data.weighting_bins", d.weighting_bins, ">= 2")
    non_negative("data.weighting_sigma", d.weighting_sigma)
    non_negative("data.dense_alpha", d.dense_alpha)
    _check(0 < d.label_fraction <= 1, "data.label_fraction", d.label_fraction, "in (0, 1]")

    positive("loss.huber_delta", lo.huber_delta)
    positive("loss.bmc_sigma", lo.bmc_sigma)
    _check(0 <= lo.ccc_weight <= 1, "loss.ccc_weight", lo.ccc_weight, "in [0, 1]")
    non_negative("loss.variance_lambda", lo.variance_lambda)
    positive("loss.eps", lo.eps)

    positive("ssl.epochs", s.epochs)
    positive("ssl.lr", s.lr)
    positive("ssl.batch_size", s.batch_size)
    _check(0 < s.mask_ratio < 1, "ssl.mask_ratio", s.mask_ratio, "in (0, 1)")
    non_negative("ssl.corruption_std", s.corruption_std)

    positive("trainer.epochs", t.epochs)
    positive("trainer.batch_size", t.batch_size)
    non_negative("trainer.min_batches_per_epoch", t.min_batches_per_epoch)
    positive("trainer.lr", t.lr)
    non_negative("trainer.weight_decay", t.weight_decay)
    non_negative("trainer.patience", t.patience)
    non_negative("trainer.min_delta", t.min_delta)
    _check(0 < t.lr_factor < 1, "trainer.lr_factor", t.lr_factor, "in (0, 1)")
    non_negative("trainer.lr_patience", t.lr_patience)
    _check(0 < t.min_lr_ratio <= 1, "trainer.min_lr_ratio", t.min_lr_ratio, "in (0, 1]")
    _check(t.trend_window >= 3, "trainer.trend_window", t.trend_window, ">= 3")
    _check(0 <= t.guard_threshold < 1, "trainer.guard_threshold", t.guard_threshold, "in [0, 1)")
    non_negative("trainer.guard_warmup", t.guard_warmup)
    positive("trainer.guard_patience", t.guard_patience)
    non_negative("trainer.threads", t.threads)
    _check(0 <= cfg.seed < 2**63, "seed", cfg.seed, "in 0..2**63-1")
    non_negative("checkpoint_every_s", cfg.checkpoint_every_s)
    _check(0 < cfg.diagnosis.min_r < 1, "diagnosis.min_r", cfg.diagnosis.min_r, "in (0, 1)")
    _check(0 < cfg.diagnosis.collapse_ratio_of_r <= 1, "diagnosis.collapse_ratio_of_r",
           cfg.diagnosis.collapse_ratio_of_r, "in (0, 1]")
    _check(math.isfinite(cfg.diagnosis.inflate_ratio_of_r) and cfg.diagnosis.inflate_ratio_of_r > 1,
           "diagnosis.inflate_ratio_of_r", cfg.diagnosis.inflate_ratio_of_r, "> 1")
    _check(math.isfinite(cfg.diagnosis.underfit_r2_gap) and cfg.diagnosis.underfit_r2_gap >= 0,
           "diagnosis.underfit_r2_gap", cfg.diagnosis.underfit_r2_gap, ">= 0")
    _check(0.5 <= cfg.diagnosis.confidence < 1, "diagnosis.confidence", cfg.diagnosis.confidence, "in [0.5, 1)")
    return cfg


def ineffective_keys(cfg: Config, keys: set[str]) -> list[str]:
    """Warnings for config keys in `keys` (those set on the command line) that the
    chosen path never reads, e.g. `ssl.epochs` with SSL off. One line each."""
    d, lo, m = cfg.data, cfg.loss, cfg.model
    unused: list[tuple[str, str]] = []        # (key prefix or key, why)
    if d.name != "synthetic":
        unused += [(f"data.{k}", f"with data={d.name} (synthetic data only)")
                   for k in ("n_samples", "n_frames", "n_features", "signal", "noise_std", "period_jitter")]
    if d.name != "npz":
        unused.append(("data.path", f"with data={d.name}"))
    if d.overweight_factor == 1:
        unused.append(("data.rare_quantile", "with data.overweight_factor=1"))
    if d.weighting == "none":
        unused += [(f"data.{k}", "with data.weighting=none") for k in ("weighting_bins", "weighting_sigma")]
    if d.weighting != "dense":
        unused.append(("data.dense_alpha", f"with data.weighting={d.weighting}"))
    if lo.name == "ccc" and lo.ccc_weight == 1:
        unused += [(f"data.{k}", "with loss=ccc and loss.ccc_weight=1 (CCC ignores sample weights)")
                   for k in ("overweight_factor", "weighting")]
    for key, loss in (("huber_delta", "huber"), ("bmc_sigma", "bmc"), ("ccc_weight", "ccc")):
        if lo.name != loss:
            unused.append((f"loss.{key}", f"with loss={lo.name}"))
    if lo.variance_lambda == 0:
        unused += [(f"loss.{k}", "with loss.variance_lambda=0") for k in ("variance_mode", "variance_target")]
    if not cfg.ssl.enabled:
        unused += [(f"ssl.{f.name}", "with SSL off (ssl.enabled=false)")
                   for f in fields(SSLConfig) if f.name != "enabled"]
    if m.name != "temporal_conv":
        unused.append(("model.kernel_size", f"with model={m.name}"))
    if m.name == "custom":
        unused += [(f"model.{k}", "with model=custom (its own keys go in model.kwargs)")
                   for k in ("hidden_dim", "n_layers", "dropout")]
    if "mlflow" not in cfg.logger.names:
        unused += [(f"logger.{k}", "without the mlflow logger") for k in ("tracking_uri", "experiment")]
    return [f"{key} has no effect {why}" for key, why in unused if key in keys]


def check_known_keys(tree: dict, schema: Any = None, prefix: str = "") -> None:
    """Raise ConfigError for a key of the composed `tree` (a plain dict) that the schema
    lacks. Hydra's `+key=value` appends even to a typed config - its own "not in
    struct" message suggests it - and OmegaConf.to_object then drops the key silently,
    so a typo like `+trainer.epoch=5` would run with the default unnoticed."""
    schema = Config() if schema is None else schema
    known = [f.name for f in fields(schema)]
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{name} is not a config key{did_you_mean(name)}: "
                              f"{prefix.rstrip('.') or 'the top level'} has {', '.join(known)}")
        sub = getattr(schema, key)
        if is_dataclass(sub) and isinstance(value, dict):
            check_known_keys(value, sub, f"{name}.")


def register_configs() -> None:
    """Register the schema once. Its name differs from every YAML option's name
    (Hydra would otherwise merge the two silently)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="collapse_schema", node=Config)


# ----------------------------------------------------------------------------- help from the schema

def _comments(cls: type) -> dict[str, str]:
    """field name -> its description: the comment on its line, else the first sentence of
    the comment block right above it. The schema's comments are the one source of the
    help (`--help`), so a key documented here is documented there."""
    import inspect
    import io
    import re
    import tokenize

    source = inspect.getsource(cls)
    by_line: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            by_line[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for number, line in enumerate(lines, 1):
        match = re.match(r"\s+(\w+)\s*:", line)
        if not match or line.lstrip().startswith("#"):
            continue
        text = by_line.get(number)
        if text is None:                    # a block right above: its first sentence
            block, above = [], number - 1
            while above >= 1 and lines[above - 1].lstrip().startswith("#"):
                block.insert(0, by_line.get(above, ""))
                above -= 1
            text = " ".join(block)
            text = re.split(r"(?<=[.:;])\s", text, maxsplit=1)[0].rstrip(".:;") if text else ""
        found[match.group(1)] = text
    return found


def _type_name(value: Any, annotation: Any) -> str:
    if isinstance(value, Choice):
        return "choice"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, str)):
        return type(value).__name__
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "str" if "str" in str(annotation) else str(annotation)


def schema_help(schema: Any = None, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every key of the schema: (dotted key, type, default, one-line description), in
    schema order, sections (model, data, ...) after the top-level keys."""
    schema = Config() if schema is None else schema
    notes = _comments(type(schema))
    rows, sections = [], []
    for f in fields(schema):
        value = getattr(schema, f.name)
        if is_dataclass(value):
            sections.append(schema_help(value, f"{prefix}{f.name}."))
            continue
        default = value.value if isinstance(value, Choice) else value
        rows.append((f"{prefix}{f.name}", _type_name(value, f.type), default, notes.get(f.name, "")))
    return rows + [row for section in sections for row in section]


def schema_keys() -> list[str]:
    return [key for key, _, _, _ in schema_help()]


def did_you_mean(key: str, keys: Optional[List[str]] = None) -> str:
    """' (did you mean loss.variance_lambda?)' for a near miss of a schema key, else ''."""
    import difflib

    keys = schema_keys() if keys is None else keys
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    if not close:       # a misspelt last part: compare within the section
        section = key.rpartition(".")[0]
        same = [k for k in keys if k.rpartition(".")[0] == section]
        close = difflib.get_close_matches(key, same, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_override(override: str, groups: Sequence[str] = ()) -> Optional[str]:
    """A one-line error for a command-line override whose key the schema lacks (with a
    suggestion), else None. Hydra's own message spans lines and suggests nothing; keys that
    Hydra owns (hydra.*, groups like hydra/launcher), appended ones (+key) and keys inside
    free-form dicts (model.kwargs.*) are Hydra's to judge."""
    key, sep, _ = str(override).partition("=")
    if not sep or key.startswith(("-", "+", "~", "hydra")) or "/" in key or key in groups:
        return None
    node: Any = Config()
    for part in key.split("."):
        if not is_dataclass(node):
            return None                 # inside a dict (kwargs) or past a leaf: Hydra decides
        if part not in {f.name for f in fields(node)}:
            return f"{key} is not a config key{did_you_mean(key)}; python -m collapse.train --help lists them"
        node = getattr(node, part)
    return None
