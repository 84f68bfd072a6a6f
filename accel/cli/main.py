"""The ``accel`` command: ``check-config``, ``demo`` (and ``cache`` once the cache lands)."""

from __future__ import annotations

import click

from accel.cli.cache import cache
from accel.app import check_files
from accel.config import ConfigError, load_config
from accel.tap import check_endpoint


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="accel")
def main() -> None:
    """accel: a caching HTTP accelerator. Run the server with `twistd -n accel`."""


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a configuration file and print the effective listeners and routes."""
    try:
        config = load_config(path)
        if not config.routes:
            raise ConfigError(path, "route", "at least one [[route]]")
        for description in config.listen:
            check_endpoint(path, description)
        check_files(config)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{path}: OK")
    click.echo("listeners:")
    for description in config.listen:
        click.echo(f"  {description}")
    click.echo("routes (longest prefix first):")
    for route in sorted(config.routes, key=lambda r: len(r.prefix), reverse=True):
        if route.exclude:
            click.echo(f"  {route.prefix:<24} (excluded: 404)")
        else:
            extra = ", preserve_host" if route.preserve_host else ""
            click.echo(
                f"  {route.prefix:<24} -> {route.origin.url}  (connect {route.connect_timeout:g}s,"
                f" response {route.response_timeout:g}s, idle {route.idle_timeout:g}s,"
                f" max {route.max_connections} connections{extra})"
            )
    for code, doc in sorted(config.error_documents.items()):
        click.echo(f"error document {code}: {doc}")


@main.command()
@click.option("--delay", default=0.3, show_default=True, help="Seconds the demo origin takes per response.")
def demo(delay: float) -> None:
    """Start a deliberately slow origin with accel in front, and time a first and a second request."""
    from accel.cli.demo import run_demo

    raise SystemExit(run_demo(delay))


main.add_command(cache)
