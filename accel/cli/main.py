"""The ``accel`` command: ``check-config``, ``demo``, ``cache`` and ``top``."""

from __future__ import annotations

import click

from accel.cli.cache import cache
from accel.cli.check import check_config
from accel.cli.top import top


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="accel")
def main() -> None:
    """accel: a caching HTTP accelerator. Run the server with `twistd -n accel`."""


@main.command()
@click.option("--delay", default=0.3, show_default=True, help="Seconds the demo origin takes per response.")
def demo(delay: float) -> None:
    """Start a deliberately slow origin with accel in front, and time a first and a second request."""
    from accel.cli.demo import run_demo

    raise SystemExit(run_demo(delay))


main.add_command(check_config)
main.add_command(cache)
main.add_command(top)
