"""``METASTREAM_<FIELD>`` environment variables read and validated by pydantic-settings.

:class:`connectors.settings.Settings` stays a frozen dataclass (callers use
``dataclasses.replace``/``asdict`` on it); this module mirrors its fields in a
pydantic-settings model, one variable per field, with the same types and
defaults, and returns only the values the environment sets.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import Field, ValidationError, create_model
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

ENV_PREFIX = "METASTREAM_"


def variable(name: str) -> str:
    """The environment variable of setting ``name``.

    Examples
    --------
    >>> variable("micro_batch")
    'METASTREAM_MICRO_BATCH'
    """
    return ENV_PREFIX + name.upper()


class _EnvironmentModel(BaseSettings):
    # Each field's variable is its validation alias, matched exactly (upper case), as before.
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._environ


@cache
def _model_of(settings_cls: type) -> type[BaseSettings]:
    """A pydantic-settings model with ``settings_cls``'s dataclass fields, types and defaults."""
    hints = typing.get_type_hints(settings_cls)
    spec: dict[str, Any] = {}
    for f in dataclasses.fields(settings_cls):
        default: Any = (
            Field(default_factory=f.default_factory, validation_alias=variable(f.name))
            if f.default_factory is not dataclasses.MISSING
            else Field(default=f.default, validation_alias=variable(f.name))
        )
        spec[f.name] = (hints[f.name], default)
    model: type[BaseSettings] = create_model(
        f"{settings_cls.__name__}FromEnvironment", __base__=_EnvironmentModel, **spec
    )
    return model


def _type_name(annotation: Any) -> str:
    return str(getattr(typing.get_origin(annotation) or annotation, "__name__", annotation))


def read_environment(settings_cls: type, environ: Mapping[str, str]) -> dict[str, Any]:
    """The fields of dataclass ``settings_cls`` that ``environ`` sets, parsed and validated.

    Raises
    ------
    ValueError
        Naming the variable and its bad value, e.g.
        ``METASTREAM_PARTITIONS: expected int, got 'many'``.

    Examples
    --------
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     partitions: int = 4
    ...     name: str = "x"
    ...     extra: dict[str, int] = field(default_factory=dict)
    >>> read_environment(Demo, {"METASTREAM_PARTITIONS": "12", "METASTREAM_EXTRA": '{"a": 1}', "HOME": "/"})
    {'partitions': 12, 'extra': {'a': 1}}
    >>> read_environment(Demo, {"METASTREAM_PARTITIONS": "12.5"})
    Traceback (most recent call last):
    ...
    ValueError: METASTREAM_PARTITIONS: expected int, got '12.5'
    """
    model = _model_of(settings_cls)
    fields = model.model_fields
    try:
        raw = _MappingSource(model, environ)()
    except SettingsError as exc:
        # A structured value (JSON) that does not parse: name the first such variable.
        bad = next(
            (n for n, f in fields.items() if variable(n) in environ and _type_name(f.annotation) == "dict"),
            None,
        )
        if bad is None:
            raise ValueError(str(exc)) from exc
        raise ValueError(f"{variable(bad)}: expected a JSON object, got {environ[variable(bad)]!r}") from exc
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]).removeprefix(ENV_PREFIX).lower()
            kind = _type_name(fields[name].annotation) if name in fields else "a valid value"
            problems.append(f"{variable(name)}: expected {kind}, got {environ.get(variable(name))!r}")
        raise ValueError("; ".join(problems)) from exc
    return {name: getattr(parsed, name) for name in fields if name in parsed.model_fields_set}
