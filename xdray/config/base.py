"""What every config section shares: strict keys, one-line errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from xdray.errors import XdrayError


class ConfigError(XdrayError):
    """A config that cannot run; the message is one line naming the key and the fix."""


class Section(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default); assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def unique_names(items: list, what: str) -> list:
    names = [item.name for item in items]
    if len(names) != len(set(names)):
        raise ValueError(f"{what} names must be unique, got {names}; fix: rename the repeated {what}")
    return items


def looks_local(name: str) -> bool:
    """Hub ids look like ``org/name``; anything that exists or starts like a path is local."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def one_line(e: ValidationError) -> str:
    """The first pydantic error as one line: where, what, and the fix."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return (f"{loc}: unknown key; fix: remove it or correct its spelling "
                "(see the config reference in docs/config.md)")
    if kind == "missing":
        return f"{loc}: required key is missing; fix: add it to the config (see jobs/quickstart.yaml)"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    return f"{loc}: {msg}{shown}; fix: give a valid value for {loc or 'the config'}"
