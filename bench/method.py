"""The contract between the trainer and a compression method.

The trainer owns the loop, the data order, augmentation, batch size, the
learning-rate schedule and the budget. A method only customises:

* ``build(model, ctx)``: convert the freshly initialised dense model (e.g.
  factorise layers) and return the model to train;
* ``make_optimizer(model, hp)``: the optimizer over its parameters (default:
  SGD with the trainer's lr/momentum/weight decay over ``param_groups``). The trainer
  owns the learning-rate schedule: before every step it sets each parameter group's
  ``lr`` to the scheduled lr times the group's ``lr_scale`` (1 when the group has none),
  so a group may train at a fixed multiple of the track's lr;
* ``attach_optimizer(optimizer)``: called once with the optimizer the trainer built,
  before the first step and before a checkpoint is restored; the default keeps it as
  ``self.optimizer`` for a method that must reach it later (e.g. to swap parameters);
* ``post_step(model, progress)``: called after every optimizer step with the
  fraction of the budget spent, in [0, 1] (pruning schedules, projections);
* ``finalize(model)``: once after training (e.g. make pruning masks permanent);
* ``describe(model)``: extra facts for the result row (ranks, sparsities);
* ``checkpoint_state()`` / ``restore_checkpoint_state(state, model)``: what a
  checkpoint keeps of the method beyond the model's and optimizer's state;
* ``skip(track)`` (class method): a reason why the method cannot run ``track``, or
  None; `bench run` then stops before training and `bench sweep` leaves the
  configuration out, saying why.

State a method keeps is created in ``__init__`` or ``build``. The name a method is
registered under is the one used everywhere (CLI, rows, docs); its class is that
name in CamelCase (``robust_lowrank``: ``RobustLowRank``) and its parameters class the
class name + ``Params``.

Parameters are a frozen dataclass ``Params`` with defaults; the CLI validates
``--param key=value`` against it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class NoParams:
    """A method without parameters."""


@dataclass(frozen=True)
class OptimHP:
    """Optimizer hyper-parameters owned by the trainer (identical for every method)."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool = False


@dataclass(frozen=True)
class BuildContext:
    """What a method may know when it converts the dense model."""

    compression: float  # target fraction of inference-form parameters removed, 0 = dense
    example_input: Any  # a torch.Tensor batch of shape (1, C, H, W) on the training device
    total_steps: int | None  # optimizer steps in the budget when it is epoch-based, else None
    seed: int


class Method:
    """Base class of every compression method. Subclass, set ``Params``, register."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: True when the method changes the parameter count (so ``--compression`` applies).
    compresses: ClassVar[bool] = True

    def __init__(self, params: Any | None = None):
        self.params = params if params is not None else self.Params()
        self.optimizer = None  # set by attach_optimizer

    @classmethod
    def skip(cls, track) -> str | None:
        """Why this method cannot run ``track`` (a :class:`bench.config.Track`), or None when it can."""
        return None

    # -- hooks ----------------------------------------------------------------
    def build(self, model, ctx: BuildContext):
        return model

    def param_groups(self, model) -> list[dict]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def make_optimizer(self, model, hp: OptimHP):
        import torch

        return torch.optim.SGD(
            self.param_groups(model), lr=hp.lr, momentum=hp.momentum,
            weight_decay=hp.weight_decay, nesterov=hp.nesterov and hp.momentum > 0,
        )

    def attach_optimizer(self, optimizer) -> None:
        """The optimizer the trainer built from :meth:`make_optimizer`, before the first step."""
        self.optimizer = optimizer

    def post_step(self, model, progress: float) -> None:
        return None

    def finalize(self, model) -> None:
        return None

    def checkpoint_state(self) -> dict:
        """What a checkpoint must keep of this method beyond the model's and optimizer's state dicts
        (torch tensors, numbers, strings, lists and dicts of them). Default: nothing."""
        return {}

    def restore_checkpoint_state(self, state: dict, model) -> None:
        """Bring the method (and, for a method that changes the model's structure during training,
        the model and the optimizer's parameters) back to ``state`` before the state dicts are loaded."""

    def describe(self, model) -> dict:
        """Extra JSON-able facts for the result row (e.g. ``{"ranks": {...}}``)."""
        return {}

    @classmethod
    def summary(cls) -> str:
        """The docstring's first line, plus its ``Weight decay:`` line when it has one."""
        doc = [line.strip() for line in (cls.__doc__ or "").strip().splitlines()]
        if not doc:
            return ""
        wd = next((line for line in doc[1:] if line.startswith("Weight decay:")), None)
        return doc[0] + (f" {wd}" if wd else "")


def build_optimizer(method: Method, model, hp: OptimHP):
    """What every trainer does with a method's optimizer: build it, give every group an ``lr_scale``
    (default 1; the schedule sets ``lr = scheduled lr × lr_scale``), hand it back to the method."""
    optimizer = method.make_optimizer(model, hp)
    for g in optimizer.param_groups:
        g.setdefault("lr_scale", 1.0)
    method.attach_optimizer(optimizer)
    return optimizer


class MethodSkipped(ValueError):
    """A method declined a track (:meth:`Method.skip`); the message says why."""


# -- parameters --------------------------------------------------------------
class Interrupted(RuntimeError):
    """Training stopped on SIGTERM after writing a checkpoint; rerunning the same command resumes."""


class ParamError(ValueError):
    """A bad ``--param`` for a method; the message is meant for users."""


def parse_assignments(items, what: str = "--param") -> dict[str, str]:
    """``["key=value", ...]`` -> ``{"key": "value"}`` (stripped); ``what`` names the source in errors."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ParamError(f"{what} expects KEY=VALUE, got {item.strip()!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def parse_specs(text: str, what: str) -> list[tuple[str, dict]]:
    """``NAME[KEY=VALUE,...]`` items separated by commas outside brackets (methods, objectives);
    ``what`` names the flag in errors."""
    specs, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{what}: unbalanced ']' in {text!r}")
        elif ch == "," and depth == 0:
            item = text[start:i].strip()
            start = i + 1
            if item:
                specs.append(_parse_one(item, what))
    if depth:
        raise ValueError(f"{what}: unclosed '[' in {text!r}")
    if not specs:
        raise ValueError(f"{what}: nothing given")
    return specs


def _parse_one(item: str, what: str) -> tuple[str, dict]:
    if "[" not in item:
        return item, {}
    name, rest = item.split("[", 1)
    if not rest.endswith("]") or "[" in rest:
        raise ValueError(f"{what}: expected NAME[KEY=VALUE,...], got {item!r}")
    params = parse_assignments([kv for kv in rest[:-1].split(",") if kv.strip()], what=f"{what} {item!r}")
    return name.strip(), params


def parse_params(params_cls: type, items: list[str] | dict[str, Any] | None):
    """Build ``params_cls`` from ``["key=value", ...]`` (CLI) or a dict, validating names and types."""
    if items is None:
        items = {}
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = typing.get_type_hints(params_cls)
    raw: dict[str, Any] = dict(items) if isinstance(items, dict) else parse_assignments(items)
    values = {}
    for k, v in raw.items():
        if k not in fields:
            known = ", ".join(sorted(fields)) or "(none)"
            raise ParamError(f"unknown parameter {k!r} for {params_cls.__qualname__}; known parameters: {known}")
        values[k] = _coerce(k, v, hints[k])
    try:
        obj = params_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ParamError(str(exc)) from exc
    return obj


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Literal:
        for a in args:
            if str(a) == str(value):
                return a
        raise ParamError(f"parameter {key!r} must be one of {', '.join(map(str, args))}, got {value!r}")
    if origin is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        return _coerce(key, value, non_none[0])
    if not isinstance(value, str):
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if typ is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ in (int, float, str):
            return typ(value)
        return json.loads(value)
    except (ValueError, json.JSONDecodeError):
        raise ParamError(f"parameter {key!r} expects {getattr(typ, '__name__', typ)}, got {value!r}") from None


def params_to_dict(params: Any) -> dict:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}


def params_id(method: str, params: Any) -> str:
    """Stable id like ``robust_lowrank[kappa=1.5,mode=approx_orth]`` (benchopt style)."""
    d = params if isinstance(params, dict) else params_to_dict(params)
    if not d:
        return method
    return method + "[" + ",".join(f"{k}={d[k]}" for k in sorted(d)) + "]"


def short_id(method: str, params: Any = None) -> str:
    """A configuration's name as people type it: ``robust_lowrank[step_scale=reference]``, i.e. only the
    parameters whose value differs from the method's default (``params``: a dict, a dataclass or the
    rows' ``method_params`` JSON). It is a valid ``--method`` / ``bench compare`` spec and names the same
    configuration as the full :func:`params_id`. A method that is not registered here (a plugin not
    installed) keeps every parameter, since its defaults are unknown."""
    if isinstance(params, str):
        params = json.loads(params) if params.strip() else {}
    d = dict(params) if isinstance(params, dict) else params_to_dict(params) if params is not None else {}
    if not d:
        return method
    return _short_id(method, json.dumps(d, sort_keys=True, default=str))


def _defaults(method: str) -> dict | None:
    """The registered method's parameter defaults; None when it is not registered here."""
    from bench.registry import METHODS

    try:
        fields = dataclasses.fields(METHODS.get(method).Params)
    except Exception:  # noqa: BLE001 - unknown method or no Params
        return None
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in fields
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


@functools.lru_cache(maxsize=512)
def _short_id(method: str, params_json: str) -> str:
    d = json.loads(params_json)
    defaults = _defaults(method)
    if defaults is None:
        return params_id(method, d)
    return params_id(method, {k: v for k, v in d.items() if k not in defaults or not _same(v, defaults[k])})


def _same(a: Any, b: Any) -> bool:
    """Equal as stored values: 1.5 == 1.5, True is not 1, a list equals its tuple."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
