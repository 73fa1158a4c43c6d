"""Typed settings: the annotations of whatever takes a config node are that node's schema.

A config node (`sampler`, `data`, `model.net`, `nll`, ...) is checked against a schema: a class (its
constructor's parameters), a function (its keyword parameters, e.g. a task's `run`) or a settings dataclass.
Every key must be a parameter and every value must fit the parameter's annotation; otherwise one
SettingsError names the full key path, what it must be and, where the code has one, an example. So the code
that uses a value is also the one place that says what the value may be.

Annotations understood: int, float, bool, str, Path, None, Literal[...], X | Y, list[X] / tuple[X, ...] /
Sequence[X], dict / Mapping / Any (anything goes), classes (isinstance), and Annotated[X, ...] with
Range(...) (numeric bounds), Nested(schema) (a mapping checked against another schema) and Checked(fn)
(a value checked by a function of its own). A schema may
add cross-field rules with a `check_settings(values)` callable that raises InvalidSetting(key, why).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from ddim.errors import DDIMError

_NO_DEFAULT = inspect.Parameter.empty


class SettingsError(DDIMError, ValueError):
    """A setting has the wrong type, is out of range or does not exist; the message names its full key."""


class InvalidSetting(Exception):
    """Raised by a schema's own cross-field rule (`check_settings`): key is relative to the node checked."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(why)
        self.key, self.why = key, why


@dataclass(frozen=True)
class Range:
    """Numeric bounds of a setting, e.g. Range(ge=1) for a count, Range(ge=0, lt=1) for a decay."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, v: float) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )

    def words(self) -> str:
        if self.ge is not None and self.ge == self.le:
            return f"equal to {self.ge:g}"
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return (">= " if lo[0] == "[" else "> ") + lo[1:]
        return ("<= " if hi[-1] == "]" else "< ") + hi[:-1] if hi else ""


@dataclass(frozen=True)
class Nested:
    """A mapping setting checked against another schema (e.g. model.net against the U-Net's constructor)."""

    schema: Callable[..., Any]


@dataclass(frozen=True)
class Checked:
    """A setting checked by a function of (value, full key) that raises SettingsError (e.g. a sampler node,
    whose schema depends on the class its _target_ names)."""

    check: Callable[[Any, str], Any]


# Short names for the most common kinds of setting.
Count = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
Positive = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]
Seed = Annotated[int, Range(ge=0)]


@dataclass(frozen=True)
class Parameter:
    name: str
    annotation: Any
    default: Any = _NO_DEFAULT


def parameters(schema: Callable[..., Any]) -> dict[str, Parameter] | None:
    """The settings a schema takes: keyword parameters of a function, constructor parameters of a class,
    fields of a dataclass. None when it takes any keyword (**kwargs it passes on to code we cannot see);
    the project's own classes are followed up their bases, where their **kwargs go."""
    if dataclasses.is_dataclass(schema):
        hints = _hints(schema)
        return {
            f.name: Parameter(f.name, hints.get(f.name, Any), _field_default(f))
            for f in dataclasses.fields(schema)
            if f.init
        }
    found: dict[str, Parameter] = {}
    classes = [c for c in schema.__mro__ if "__init__" in vars(c)] if inspect.isclass(schema) else [schema]
    for owner in classes:
        target = owner.__init__ if inspect.isclass(owner) else owner
        params = inspect.signature(target).parameters.values()
        hints = _hints(target)
        for p in params:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "ctx"):
                found.setdefault(p.name, Parameter(p.name, hints.get(p.name, Any), p.default))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return found
        if not getattr(owner, "__module__", "").startswith("ddim."):
            return None
    return None


def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - annotations naming optional packages (e.g. wandb's Run): take them as Any
        return {}


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _NO_DEFAULT


def check(
    schema: Callable[..., Any],
    values: Mapping[str, Any],
    path: str,
    what: str | None = None,
    extra: Mapping[str, Any] | None = None,
    required: bool = True,
) -> None:
    """Raise one SettingsError for the first unknown key, missing key, or value that does not fit.

    path: the node's key path (e.g. "sampler"); what: how the node was chosen, for the messages (e.g.
    "sampler=heun"); extra: annotations that tighten the schema's own (e.g. ranges Lightning does not state);
    required: also refuse a parameter without a default that the node lacks. Keys like _target_ are skipped.
    """
    params = parameters(schema)
    open_ended = params is None
    params = params or {}
    for key, value in values.items():
        if key.startswith("_") and key.endswith("_"):
            continue
        if key not in params:
            if open_ended:
                continue
            raise SettingsError(unknown_key_message(join(path, key), what or path, list(params)))
        annotation = (extra or {}).get(key, params[key].annotation)
        check_value(annotation, value, join(path, key), params[key].default)
    missing = [p.name for p in params.values() if p.default is _NO_DEFAULT and p.name not in values]
    if required and missing:
        key = join(path, missing[0])
        raise SettingsError(f"{key} is missing: {what or path} needs it; add {key}=...")
    rule = getattr(schema, "check_settings", None)
    if rule is not None:
        try:
            rule(dict(values))
        except InvalidSetting as err:
            raise SettingsError(
                f"{join(path, err.key)}={_show(values.get(err.key))} is invalid: {err.why}"
            ) from None


def join(path: str, key: str) -> str:
    """A key's full path: join("model.net", "ch") == "model.net.ch"; join("", "seed") == "seed"."""
    return f"{path}.{key}" if path else key


def unknown_key_message(key: str, owner: str, valid: Sequence[str]) -> str:
    owner = owner or "the config"
    return f"{key} is not a setting of {owner}; its settings are: {', '.join(valid)}."


def check_value(annotation: Any, value: Any, key: str, example: Any = _NO_DEFAULT) -> None:
    """Raise SettingsError unless value fits annotation (see the module docstring for what is understood)."""
    problem = _mismatch(annotation, value, key)
    if problem is None:
        return
    where, wanted = problem
    hint = f", e.g. {key}={_show(example)}" if example not in (_NO_DEFAULT, None) and where == key else ""
    raise SettingsError(
        f"{where}={_show(_value_at(value, key, where))} is invalid: it must be {wanted}{hint}."
    )


def _value_at(value: Any, key: str, where: str) -> Any:
    """The element of a list that failed, when the failure is inside one (where = key[i])."""
    if where != key and where.startswith(key + "[") and _is_list(value):
        return value[int(where[len(key) + 1 : where.index("]", len(key))])]
    return value


def _show(value: Any) -> str:
    """A value as one would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if _is_list(value):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _is_list(value: Any) -> bool:
    """A list of values as YAML or Hydra give it (list, tuple, OmegaConf's ListConfig), not a string."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _mismatch(annotation: Any, value: Any, key: str) -> tuple[str, str] | None:
    """None if value fits, else (the key of the part that fails, what that part must be)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        inner = _mismatch(args[0], value, key)
        if inner is not None:
            return (inner[0], describe(annotation)) if inner[0] == key else inner
        for meta in args[1:]:
            if isinstance(meta, Range) and value is not None and not meta.holds(value):
                return key, describe(annotation)
            if isinstance(meta, Nested) and value is not None:
                check(meta.schema, value, key)
            if isinstance(meta, Checked) and value is not None:
                meta.check(value, key)
        return None
    if origin in (Union, types.UnionType):
        for option in args:
            if _mismatch(option, value, key) is None:
                return None
        return key, describe(annotation)
    if not _fits_shape(annotation, origin, args, value):
        return key, describe(annotation)
    if origin in (list, tuple, Sequence) and args:
        items = args[:1] if origin is not tuple or (len(args) == 2 and args[1] is Ellipsis) else args
        if origin is tuple and items is args and len(args) != len(value):
            return key, describe(annotation)
        for i, item in enumerate(value):
            inner = _mismatch(items[min(i, len(items) - 1)], item, f"{key}[{i}]")
            if inner is not None:
                return inner
    return None


def _fits_shape(annotation: Any, origin: Any, args: tuple, value: Any) -> bool:
    """Whether value has the annotation's type, ignoring the element types of containers."""
    if annotation in (Any, object, inspect.Parameter.empty) or isinstance(annotation, (str, typing.TypeVar)):
        return True  # unannotated, or an annotation we cannot resolve: anything goes
    if annotation is None or annotation is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (list, tuple, Sequence):
        return _is_list(value)
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return isinstance(value, Mapping)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if annotation in (str, Path):
        return isinstance(value, (str, Path))
    if inspect.isclass(annotation):
        return isinstance(value, annotation)
    return True


def describe(annotation: Any) -> str:
    """What a value of this annotation must be, in words ("an integer >= 1", "one of 'eta', 'sigma_hat'")."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        bounds = [m.words() for m in args[1:] if isinstance(m, Range)]
        base = describe(args[0])
        if bounds and typing.get_origin(args[0]) in (Union, types.UnionType):
            options = [a for a in typing.get_args(args[0]) if a is not type(None)]
            tail = " or null" if len(options) < len(typing.get_args(args[0])) else ""
            return " or ".join(f"{describe(a)} {bounds[0]}" for a in options) + tail
        return f"{base} {bounds[0]}" if bounds else base
    if origin in (Union, types.UnionType):
        choices = [c for a in args if typing.get_origin(a) is Literal for c in typing.get_args(a)]
        options = [describe(a) for a in args if a is not type(None) and typing.get_origin(a) is not Literal]
        if choices:  # several Literals (e.g. Lightning's precision) read as one list of choices
            options.insert(0, "one of " + ", ".join(dict.fromkeys(_show(c) for c in choices)))
        text = " or ".join(dict.fromkeys(options))
        return text + " or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin in (list, tuple, Sequence):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    if annotation in names:
        return names[annotation]
    if annotation is None or annotation is type(None):
        return "null"
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return "a mapping of settings"
    return f"a {getattr(annotation, '__name__', annotation)}"


def _plural(words: str) -> str:
    for article in ("an ", "a "):
        if words.startswith(article):
            head, _, rest = words[len(article) :].partition(" ")
            return f"{head}s {rest}".strip()
    return words
