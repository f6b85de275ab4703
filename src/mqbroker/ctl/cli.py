"""The ``mqbrokerctl`` entry point: the root group with every command
module registered on it (importing a module adds its commands)."""

from __future__ import annotations

from mqbroker.ctl import admin, cluster, messages, moves, streams, topology  # noqa: F401  (registration)
from mqbroker.ctl.app import cli


def main() -> None:
    cli(prog_name="mqbrokerctl")


if __name__ == "__main__":
    main()
