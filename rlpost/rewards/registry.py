"""Name -> reward module registry, so recipes and the CLI pick rewards by name (``rlpost list rewards``).

Modules that need heavy optional dependencies (LAMMPS, diffusers, judge models) register *lazily* with
:func:`register_lazy_reward`: they are listed without being imported and imported on first :func:`get_reward`.
User code needs no registration at all: ``get_reward("my_pkg.rewards:MyReward")`` imports it by path.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable
from typing import Any, Callable, TypeVar

from rlpost.rewards.base import RewardModule, from_trl

__all__ = [
    "UnknownRewardError", "build_rewards", "get_reward", "list_rewards", "register_lazy_reward", "register_reward",
]

_R = TypeVar("_R", bound=type[RewardModule])

_REGISTRY: dict[str, type[RewardModule]] = {}
_LAZY: dict[str, tuple[str, str]] = {}  # name -> ("module.path:Class", description)
_BUILTIN_MODULES = ("rlpost.rewards.text",)  # stdlib-only modules whose rewards are always listed


class UnknownRewardError(KeyError, ValueError):
    """No reward is registered under the requested name (a KeyError and a ValueError, for either habit)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def register_reward(name: str) -> Callable[[_R], _R]:
    """Class decorator: register a :class:`RewardModule` subclass under ``name`` (which becomes its ``name``)."""

    def decorator(cls: _R) -> _R:
        if not (isinstance(cls, type) and issubclass(cls, RewardModule)):
            raise TypeError(f"@register_reward({name!r}) decorates RewardModule subclasses, got {cls!r}.")
        if not cls.description or "\n" in cls.description:
            raise ValueError(
                f"reward '{name}' ({cls.__name__}) needs a one-line `description` for `rlpost list rewards`."
            )
        existing = _REGISTRY.get(name)
        # re-registering the same class (a module reload) is fine; two different classes under one name is not
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"reward name '{name}' is already registered by {existing.__module__}.{existing.__qualname__}; "
                f"choose another name for {cls.__module__}.{cls.__qualname__}."
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def register_lazy_reward(name: str, target: str, description: str) -> None:
    """List reward ``name`` without importing it; ``target`` (``"module.path:Class"``) is imported on first use.

    The target module must register the class under the same name with :func:`register_reward`.
    """
    if ":" not in target:
        raise ValueError(f"lazy reward '{name}': target must look like 'module.path:ClassName', got {target!r}.")
    _LAZY[name] = (target, description)


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _import_target(target: str) -> Any:
    module_path, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_path)
    except ImportError as error:
        raise ImportError(f"cannot import reward module '{module_path}' (from {target!r}): {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise AttributeError(
            f"module '{module_path}' has no attribute '{attribute}' (from {target!r}). Public names: {public}."
        ) from None


def _instantiate(cls: type[RewardModule], name: str, kwargs: dict[str, Any]) -> RewardModule:
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise TypeError(
            f"reward '{name}' rejected its options {sorted(kwargs)}: {error}. "
            f"Signature: {cls.__name__}{inspect.signature(cls)}."
        ) from error


def get_reward(name: str, /, **kwargs: Any) -> RewardModule:
    """Build a reward module by registered name, or by import path ``"module.path:ClassOrFunction"``.

    An import path may point to a :class:`RewardModule` subclass (instantiated with ``kwargs``), a module instance
    (returned as is; no kwargs), or a TRL-style function (wrapped with :func:`from_trl`, ``kwargs`` going to it).
    ``name`` is positional-only, so ``get_reward("exact_match", name="em_strict")`` names the *instance* (its
    metrics log as ``rewards/em_strict/...``) like every other constructor option.

    Raises:
        UnknownRewardError: unknown name; the message lists the valid names and the closest match.
    """
    if ":" in name:
        obj = _import_target(name)
        if isinstance(obj, type) and issubclass(obj, RewardModule):
            return _instantiate(obj, name, kwargs)
        if isinstance(obj, RewardModule):
            if kwargs:
                raise TypeError(f"{name!r} is a reward module instance; it takes no options, got {sorted(kwargs)}.")
            return obj
        if callable(obj):
            return from_trl(obj, **kwargs)
        raise TypeError(f"{name!r} is a {type(obj).__name__}, not a RewardModule class or a reward function.")

    _load_builtins()
    if name not in _REGISTRY and name in _LAZY:
        _import_target(_LAZY[name][0])  # importing the module runs its @register_reward
        if name not in _REGISTRY:
            raise RuntimeError(
                f"lazy reward '{name}': importing {_LAZY[name][0]!r} did not register it under that name."
            )
    if name not in _REGISTRY:
        valid = sorted(set(_REGISTRY) | set(_LAZY))
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownRewardError(
            f"unknown reward '{name}'.{hint} Registered rewards: {valid}. User code can be loaded by import path, "
            f"e.g. 'my_package.rewards:MyReward'."
        )
    return _instantiate(_REGISTRY[name], name, kwargs)


def build_rewards(specs: Iterable[Any]) -> list[RewardModule]:
    """The reward modules of a recipe stage's ``rewards:`` entries (objects with ``.name`` and ``.options``).

    ``options: {name: ...}`` renames an instance; the names must be distinct, since each module logs under
    ``rewards/<name>/...`` and two modules under one name would silently mix their metrics.
    """
    modules = [get_reward(spec.name, **spec.options) for spec in specs]
    names = [module.name for module in modules]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"rewards {repeated} appear more than once in one stage ({names}); give each repeated "
                         "reward its own `options: {name: ...}` so their metrics stay apart.")
    return modules


def list_rewards() -> dict[str, str]:
    """Registered reward names -> one-line descriptions, sorted by name (lazy rewards listed without importing)."""
    _load_builtins()
    entries = {name: description for name, (_, description) in _LAZY.items()}
    entries.update({name: cls.description for name, cls in _REGISTRY.items()})
    return dict(sorted(entries.items()))
