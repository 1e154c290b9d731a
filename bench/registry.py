"""Strict name -> object registries for methods, models, tracks, metric families and training objectives.

One dict per registry; a decorator registers; a duplicate name raises; an
unknown name raises an error listing every available name and the closest
matches. Built-in entries are imported lazily from a list of modules and
third-party entries come from an entry-point group, both on first lookup, so
``import bench`` stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import threading
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class RegistryError(LookupError):
    """An unknown or duplicate registry name; the message is meant for users."""


class Registry(Generic[T]):
    def __init__(self, kind: str, *, builtin_modules: Iterable[str] = (), builtin_packages: Iterable[str] = (),
                 entry_point_group: str | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtin_modules = tuple(builtin_modules)
        self._builtin_packages = tuple(builtin_packages)
        self._entry_point_group = entry_point_group
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()
        self.load_errors: dict[str, str] = {}

    # -- registration -------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")``; the name defaults to ``obj.name`` or ``obj.__name__``."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            self.add(key, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} names must be non-empty strings, got {name!r}")
        with self._lock:
            if name in self._entries and self._entries[name] is not obj:
                raise RegistryError(f"duplicate {self.kind} name {name!r}: already registered by {_where(self._entries[name])}")
            self._entries[name] = obj
            if hasattr(obj, "name") and isinstance(obj, type):
                try:
                    setattr(obj, "name", name)
                except (AttributeError, TypeError):
                    pass

    # -- lookup ---------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                for mod in self._builtin_modules + self._package_modules():
                    try:
                        importlib.import_module(mod)
                    except RegistryError:
                        raise  # a duplicate name among built-ins is a bug to fix, not to hide
                    except Exception as exc:  # noqa: BLE001 - one broken file must not hide the others
                        self.load_errors[mod] = f"{type(exc).__name__}: {exc}"
                if self._entry_point_group:
                    for ep in entry_points(group=self._entry_point_group):
                        if ep.name in self._entries:
                            # A plugin that collides with a built-in is an error, reported on lookup.
                            obj = self._entries[ep.name]
                            try:
                                loaded = ep.load()
                            except Exception as exc:  # noqa: BLE001 - reported, not fatal for the rest
                                self.load_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                                continue
                            if loaded is not obj:
                                self.load_errors[ep.name] = (
                                    f"duplicate {self.kind} name {ep.name!r}: entry point {ep.value} "
                                    f"collides with {_where(obj)}"
                                )
                            continue
                        try:
                            obj = ep.load()
                        except Exception as exc:  # noqa: BLE001
                            self.load_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                            continue
                        if ep.name not in self._entries:
                            self.add(ep.name, obj)
                self._loaded = True
            finally:
                self._loading = False

    def _package_modules(self) -> tuple[str, ...]:
        """Every module of the built-in packages: dropping a file into ``methods/`` registers it."""
        mods = []
        for pkg in self._builtin_packages:
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                continue
            for info in pkgutil.iter_modules(spec.submodule_search_locations):
                if not info.name.startswith("_"):
                    mods.append(f"{pkg}.{info.name}")
        return tuple(sorted(mods))

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._ensure_loaded()
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def get(self, name: str) -> T:
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        if name in self.load_errors:
            raise RegistryError(f"{self.kind} {name!r} failed to load: {self.load_errors[name]}")
        broken = [f"{m} ({e})" for m, e in sorted(self.load_errors.items()) if "." in m]
        available = sorted(self._entries)
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {name!r}."
        if close:
            msg += f" Did you mean: {', '.join(close)}?"
        msg += f" Available {self.kind}s: {', '.join(available) or '(none)'}."
        if broken:
            msg += f" Modules that failed to import: {'; '.join(broken)}."
        raise RegistryError(msg)


def _where(obj: Any) -> str:
    mod = getattr(obj, "__module__", "?")
    qual = getattr(obj, "__qualname__", type(obj).__name__)
    return f"{mod}.{qual}"


#: Built-in methods: every module of the ``methods`` package (one file = one method), then the entry points.
METHODS: Registry[Any] = Registry("method", builtin_packages=("methods",),
                                  entry_point_group="bench.methods")
MODELS: Registry[Any] = Registry("model", builtin_modules=("bench.models",))
#: Metric families (:class:`bench.columns.MetricFamily`): every module of ``bench/metrics/families/`` and
#: the entry-point group ``bench.metrics``. Their modules must not import torch at import time.
METRIC_FAMILIES: Registry[Any] = Registry("metric family", builtin_packages=("bench.metrics.families",),
                                          entry_point_group="bench.metrics")
TRACKS: Registry[Any] = Registry("track", builtin_modules=("bench.tracks",))
#: Training objectives (:class:`bench.objective.Objective`): every module of ``bench/objectives/`` and the
#: entry-point group ``bench.objectives``. Their modules must not import torch at import time.
OBJECTIVES: Registry[Any] = Registry("objective", builtin_packages=("bench.objectives",),
                                    entry_point_group="bench.objectives")


def register_method(name: str | None = None):
    """Register a :class:`bench.method.Method` subclass under ``name``."""
    return METHODS.register(name)


def register_metric(family):
    """Register a :class:`bench.columns.MetricFamily` under its ``name``; returns it."""
    METRIC_FAMILIES.add(family.name, family)
    return family


def register_model(name: str | None = None):
    return MODELS.register(name)
