"""The one base of every params section and config file model (an unknown key is an error, values are frozen), and
the one way a validation error is written: ``key.path: message; ...``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def validation_message(e: ValidationError) -> str:
    """Every error of ``e`` as ``dotted.key: what is wrong``, joined by "; " (the caller names the file)."""
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
