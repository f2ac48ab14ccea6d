"""The `_target_` mechanism behind `model=custom` and `data=custom`: import a callable by
its dotted path and call it with the user's keyword arguments, through Hydra's
`instantiate`, turning every import or call error into one ConfigError naming the key.

`_target_` imports and calls code: it is trusted input, like a Python script. Only this
module imports Hydra's instantiate, and only when a custom option is chosen; the model
and data halves (what is built, what it must return) live in collapse.models and
collapse.data.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from collapse.errors import ConfigError


def accepts(target: Callable, name: str) -> bool:
    """Whether `target`'s signature names a parameter `name`."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def locate(path: str) -> Any:
    """The object at `package.module.Name` (as Hydra locates a _target_, without its
    error log): the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
            break
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise           # the module exists but imports something missing
    else:
        raise ModuleNotFoundError(f"no module named {parts[0]!r} (is its directory on sys.path / PYTHONPATH?)")
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


def instantiate(group: str, target: str, kwargs: dict, framework: dict, optional: dict) -> Any:
    """hydra.utils.instantiate({_target_, **kwargs}, **framework, **the optional keys the
    callable names); an import or call error becomes one ConfigError naming `group._target_`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        obj = locate(target)
    except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error
        raise ConfigError(f"{group}._target_={target!r} cannot be imported "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    extra = {k: v for k, v in optional.items() if k not in kwargs and accepts(obj, k)}
    try:
        return hydra_instantiate({"_target_": target, **kwargs}, **framework, **extra, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__ or e
        message = (str(cause).splitlines() or [type(cause).__name__])[0]
        raise ConfigError(f"{group}._target_={target!r} failed: {type(cause).__name__}: {message}") from None
