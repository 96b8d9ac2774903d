"""Run config classes whose defaults come from a model's spec, so the Launchpad shows each model's own values."""

from collections.abc import Mapping
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field

C = TypeVar("C", bound=dg.Config)


def with_model_defaults(base: type[C], model: str, defaults: Mapping[str, Any]) -> type[C]:
    """A subclass of ``base`` whose fields default to ``defaults`` (the model's spec), named after the model.

    Raises ValueError naming the field when the spec sets one that ``base`` does not have.
    """
    fields = base.model_fields
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise ValueError(f"model {model}: {base.__name__} has no field(s) {unknown}; known: {sorted(fields)}")
    changed = {name: value for name, value in defaults.items() if value != fields[name].default}
    if not changed:
        return base
    namespace: dict[str, Any] = {"__annotations__": {name: fields[name].annotation for name in changed}}
    for name, value in changed.items():
        namespace[name] = Field(default=value, description=f"{fields[name].description} ({model}'s default)")
    namespace["__doc__"] = f"{base.__doc__ or base.__name__} Defaults of {model}."
    prefix = "".join(part.title() for part in model.split("_"))
    return type(f"{prefix}{base.__name__}", (base,), namespace)
