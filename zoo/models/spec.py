"""Backbones that remember how they were built.

A task (LightningModule) saves its backbone's *spec*, ``{"class_path": ..., "init_args": {...}}``, in
the checkpoint's hyper-parameters instead of pickling the module, so the checkpoint reloads with
``torch.load(..., weights_only=True)``. Subclassing `Configurable` is all a backbone needs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from torch import nn

_PRIMITIVES = (str, int, float, bool, type(None))


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PRIMITIVES):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _recorded(value: Any) -> Any:
    """An argument as a spec records it: a module with a spec (a `Configurable` one) becomes that spec,
    so it is rebuilt by `from_spec`; anything else is kept as it is."""
    nested = spec_of(value) if isinstance(value, nn.Module) else None
    return nested if nested is not None else value


class Configurable:
    """Mixin that records the constructor arguments of the most-derived class.

    After ``__init__`` returns, ``module.spec`` holds ``{"class_path", "init_args"}`` when every
    argument is a plain value (numbers, strings, lists, dicts) or a module with a spec of its own (a
    `Configurable` one, recorded as its nested spec), else ``None``.
    """

    spec: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__") or cls.__init__  # an inherited plain __init__ is wrapped too
        if getattr(init, "_zoo_records", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self).__init__ is not recording_init:
                return  # a subclass's constructor records instead
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            init_args = {k: _recorded(v) for k, v in bound.arguments.items() if k != "self"}
            plain = all(_is_plain(v) for v in init_args.values())
            spec = {
                "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                "init_args": init_args,
            }
            object.__setattr__(self, "spec", spec if plain else None)

        recording_init._zoo_records = True  # type: ignore[attr-defined]
        cls.__init__ = recording_init  # type: ignore[method-assign]


def spec_of(module: nn.Module) -> dict[str, Any] | None:
    """The module's spec if it is `Configurable` with plain arguments, else ``None``."""
    spec = getattr(module, "spec", None)
    return {"class_path": spec["class_path"], "init_args": dict(spec["init_args"])} if spec else None


def import_class(class_path: str) -> type:
    """Import ``package.module.Class``; a clear error names the path when it does not resolve."""
    module_name, _, name = class_path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ImportError(f"cannot import class_path {class_path!r}: {err}") from err
    return obj


_SPEC_KEYS = {"class_path", "init_args"}


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("class_path"), str) and set(value) <= _SPEC_KEYS


def from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build a module from ``{"class_path": ..., "init_args": {...}}`` (the form YAML and checkpoints use).

    An argument that is itself such a spec (a module given by ``class_path``, e.g. Llama's ``positions``)
    is built first, the same way, and passed as the module.
    """
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise TypeError(f"expected a {{'class_path': ..., 'init_args': ...}} dict, got {spec!r}")
    cls = import_class(spec["class_path"])
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"class_path {spec['class_path']!r} is not a torch.nn.Module subclass")
    init_args = spec.get("init_args") or {}
    return cls(**{name: from_spec(v) if _is_spec(v) else v for name, v in init_args.items()})
