"""How every ``accel`` command reports a failure: ``accel: <what went wrong>`` on standard error, as
``twistd accel`` does, never click's ``Error:``."""

from __future__ import annotations

import click


class CommandError(click.ClickException):
    """A failure worded for the operator; exit status 1 unless a subclass says otherwise."""

    def show(self, file=None) -> None:
        if file is None:
            click.echo(f"accel: {self.format_message()}", err=True)
        else:
            click.echo(f"accel: {self.format_message()}", file=file)
