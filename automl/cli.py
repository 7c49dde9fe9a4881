"""`automl`: the command line of the platform.

Every action takes `-e/--experiment-spec SPEC.yaml` followed by dotted overrides
(`train.optim.lr=1e-4 model.mode=instance`); errors a user can cause are printed without a
traceback and exit with status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from automl.spec import load_spec
from automl.spec.schema import DEFAULT_SCHEMA_DIR, write_schemas
from model.errors import UserError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, help=__doc__.split("\n")[0])
spec_app = typer.Typer(no_args_is_help=True, help="Inspect specs.")
app.add_typer(spec_app, name="spec")
console = Console()

SpecOption = typer.Option(..., "-e", "--experiment-spec", help="The experiment spec (YAML).", exists=False)
OverridesArgument = typer.Argument(None, help="Dotted overrides, e.g. train.optim.lr=1e-4", show_default=False)


def load(spec: Path | None, overrides: Optional[List[str]], action: str | None = None) -> DictConfig:
    """The one place the CLI turns `-e SPEC k=v ...` into a validated spec."""
    return load_spec(spec, overrides or [], action=action)


@spec_app.command("show")
def spec_show(spec: Path = SpecOption, overrides: Optional[List[str]] = OverridesArgument) -> None:
    """Print the resolved spec (defaults + file + overrides), validated."""
    console.print(OmegaConf.to_yaml(load(spec, overrides)), highlight=False, markup=False, end="")


@app.command()
def schema(out: Path = typer.Option(DEFAULT_SCHEMA_DIR, "--out", help="Output folder.")) -> None:
    """Write <action>.schema.json, spec templates and manifest.json from the spec dataclasses."""
    for path in write_schemas(out):
        console.print(f"wrote {path}", highlight=False)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except UserError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
