"""CLI command `export`: the cold-start SFT sets in TRL's standard prompt–completion form and in
LLaMA-Factory's format (docs/training.md, "Exporting the cold-start sets"). A thin wrapper over
`longshort.training.export`: every input record is validated before any tokenizer loads, every
output path is checked before anything is written."""

from __future__ import annotations

from pathlib import Path

import typer

from longshort.cli.app import app, config_option
from longshort.training.sft import SFTRunConfig

MODEL_HELP = "model spec (smollm2-135m, tiny-random, a local model dir, a hub id)"


@app.command("export")
def export(
    input: list[Path] = typer.Option(..., "--input", "-i", help="A `longshort coldstart` output directory "
                                     "(its sft_long.jsonl and sft_short.jsonl) or SFT JSONL files; repeatable."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: trl/, llamafactory/, export.json."),
    format: list[str] | None = typer.Option(None, "--format", "-f", help="trl (TRL's standard prompt-completion "
                                            "form) | llamafactory (alpaca + dataset_info.json); repeatable "
                                            "(default: both)."),
    model: str = typer.Option("smollm2-135m", help="The model you will train: its chat template and tokenizer "
                              "render and check the examples; " + MODEL_HELP),
    long_model: str | None = typer.Option(None, help="Model of the long role's set (default: --model)."),
    short_model: str | None = typer.Option(None, help="Model of the short role's set (default: --model)."),
    max_length: int | None = config_option(SFTRunConfig, "max_length", min=16, help="Examples with more tokens "
                                           "are left out, as `longshort sft` drops them."),
    name: str = typer.Option("longshort", help="LLaMA-Factory dataset names: NAME_long, NAME_short."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) bad records instead of stopping."),
) -> None:
    """Export the cold-start SFT sets for TRL's SFTTrainer and LLaMA-Factory.

    Rendered with the model's chat template and checked token for token against what
    `longshort sft` trains on (export.json)."""
    from longshort.errors import InputError
    from longshort.io import check_output_dir
    from longshort.models import spec_problem
    from longshort.training.export import (
        FORMATS,
        check_export_paths,
        check_options,
        export_sets,
        planned_files,
        read_sft_inputs,
        write_export,
    )

    formats = check_options(list(dict.fromkeys(format or FORMATS)), name)
    check_output_dir(out)
    records, files_read, skipped = read_sft_inputs(input, skip_bad=skip_bad)
    models = {"long": long_model or model, "short": short_model or model}
    # everything checkable without a tokenizer: the model specs and every path that will be written
    options = {"long": "--long-model" if long_model else "--model",
               "short": "--short-model" if short_model else "--model"}
    for role, spec in models.items():
        if records[role] and spec_problem(spec):
            raise InputError(spec_problem(spec), field=options[role])
    check_export_paths(out, planned_files([r for r in records if records[r]], formats, name), inputs=files_read)
    if skipped:
        typer.echo(f"skipped {skipped} bad record(s) (--skip-bad)", err=True)
    from longshort.models import load_tokenizer

    loaded = {spec: load_tokenizer(spec) for role, spec in models.items() if records[role]}
    tokenizers = {role: loaded[spec] for role, spec in models.items() if records[role]}
    length = max_length if max_length is not None else SFTRunConfig.model_fields["max_length"].default
    files, manifest = export_sets(records, tokenizers, models, formats=formats, max_length=length, name=name,
                                  inputs=files_read)
    written = write_export(out, files, inputs=files_read)
    parts = []
    for role, st in manifest["roles"].items():
        dropped = f", {st['dropped_over_max_length']} over max_length" if st["dropped_over_max_length"] else ""
        parts.append(f"{st['exported']} {role}{dropped}")
        for fmt, n in st["mismatches"].items():
            if n:
                typer.echo(f"warning: {n} {role} example(s) in the {fmt} form tokenise differently from "
                           f"`longshort sft` (first: {st['mismatched_ids'][fmt][0]}); see export.json", err=True)
    unchanged = sum(v == "unchanged" for v in written.values())
    note = f" ({unchanged} file(s) already up to date)" if unchanged else ""
    typer.echo(f"exported {' / '.join(parts)} example(s) as {', '.join(manifest['formats'])} -> {out}{note}")
