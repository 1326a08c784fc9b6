"""What every command shares: errors a user can fix become one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer

from travel.errors import ConfigError, TravelError
from travel.options import flag_for


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's errors (and disk errors) into one line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            fail(_with_flag(exc))
        except TravelError as exc:
            fail(str(exc))
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            fail(f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


def _with_flag(exc: ConfigError) -> str:
    """A config error naming its setting, told by the flag that sets it ("--batch-size: must be >= 2")."""
    flag = flag_for(exc.setting)
    return f"{flag}: {exc.message}" if flag else str(exc)
