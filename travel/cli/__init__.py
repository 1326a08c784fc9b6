"""The `travel` command line: fit, translate and friends. Errors a user can fix print one line and exit 2.

Each command group lives in its own module (fit.py, translate.py, lab.py) and imports what it needs inside the
command, so `travel --help` is fast.
"""

from __future__ import annotations

from travel.cli import fit, lab, translate  # noqa: F401  (registers the commands)
from travel.cli.app import app
from travel.cli.common import fail, user_errors

__all__ = ["app", "fail", "main", "user_errors"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
