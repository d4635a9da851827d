"""What every ``autoglm`` subcommand prints to the terminal: one-line errors on stderr."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape


def err_console() -> Console:
    return Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the returned ``typer.Exit``."""
    err_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                        soft_wrap=True)  # escaped: a message's [brackets] are not markup
    return typer.Exit(code)
