"""Training commands: `train` (and resume), `evaluate` and `update` (clcrec/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from commands.apps import app, console
from common.errors import UserError


@app.command()
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file of TrainConfig fields by name "
                                          "(a run's config.toml, say); options given here override it."),
    dataset: Optional[Path] = typer.Option(None, help="Dataset directory; omit to run on the built-in synthetic data."),
    cache: Optional[Path] = typer.Option(None, help="Negative cache; built (generation 0) if missing."),
    run_dir: Optional[Path] = typer.Option(None, help="Run directory (default runs/<dataset>-<time>)."),
    resume: Optional[Path] = typer.Option(None, help="Continue a killed or finished run from its last checkpoint."),
    scale: str = typer.Option("default", help="Synthetic scale when no --dataset: tiny, default, paper, large."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (default 60, synthetic demo 15; with --resume: the run's own)."),
    patience: int = typer.Option(10, help="Epochs without validation improvement before stopping."),
    batch_size: int = typer.Option(256),
    l_r: Optional[float] = typer.Option(None, "--l-r", help="Learning rate (default 0.005; the reference's 0.001 in reproduction mode)."),
    reg_weight: float = typer.Option(0.1),
    reg_content: float = typer.Option(0.0, help="Weight of the encoder outputs' norms in the regulariser, next to the "
                                      "ID embeddings' (0, the default: the reference, which holds ID embeddings only)."),
    num_neg: Optional[int] = typer.Option(None, help="Negatives per pair [the --cache's, else 128]."),
    lr_lambda: float = typer.Option(0.5, help="Weight of the R-E loss (U-I gets 1 - lr_lambda)."),
    temp_value: float = typer.Option(2.0),
    num_sample: float = typer.Option(0.5, help="Fraction of U-I item slots that use the content encoder."),
    hybrid_draw: str = typer.Option("bernoulli", help="How those slots are drawn: bernoulli (each slot) or "
                                    "with-replacement (the reference: int(slots*num_sample) indices)."),
    cold_vectors: str = typer.Option("raw", help="How cold items rank: raw (the encoder output as is, the reference; "
                                     "centred instead where that wins on both validation halves), centred (without "
                                     "the component all users share: no list common to everyone), normalised (its "
                                     "direction at the warm ID embeddings' mean norm) or scaled (times one factor that "
                                     "brings the warm items' outputs to that norm)."),
    content_prior: str = typer.Option("auto", help="Cold items rank by 1 - W of the model's score plus W of the "
                                      "content-only cosine: auto (W chosen on validation when training ends), "
                                      "off (W = 0, the reference), or W in [0, 1]."),
    exclude: str = typer.Option("train", help="Negatives exclude the user's 'train' items, or 'all-known' "
                                "(also validation/test: reproduces the reference, leaks held-out data)."),
    dim_e: int = typer.Option(64, "--dim-e", "--dim-E"),
    has_v: bool = typer.Option(True, "--has-v/--no-v"),
    has_a: bool = typer.Option(True, "--has-a/--no-a"),
    has_t: bool = typer.Option(True, "--has-t/--no-t"),
    modality: list[str] = typer.Option([], help="Use only these feature modalities (repeatable)."),
    select_mode: str = typer.Option("cold", help="Validation Recall@K that picks the best epoch: cold, warm, all, mean."),
    select_k: int = typer.Option(10, help="K of the validation Recall@K that selects the epoch."),
    select_rank: str = typer.Option("centred", help="How cold items rank while epochs are selected: centred (without "
                                    "the list all users share, so its luck cannot pick the epoch) or served."),
    val_confirm: float = typer.Option(0.5, help="Share of the validation-cold items held back from every choice "
                                      "(epoch, prior weight) to confirm it; 0: choose on all of validation."),
    eval_ema: float = typer.Option(0.9, "--eval-ema", help="Evaluate and keep an EMA of epoch-end weights with this decay (0: raw weights)."),
    select_window: int = typer.Option(3, help="Select on the mean validation score of the last N epochs "
                                      "(1: each epoch's own; 3 damps one-epoch spikes)."),
    refresh_every: int = typer.Option(0, help="Move to the next negative generation every N epochs (0: never)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    amp: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32."),
    encode: str = typer.Option("auto", help="auto, unique (encode distinct batch items once), slots (every slot), all (the catalogue once per step)."),
    scoring: str = typer.Option("auto", help="auto, gather (score sampled slots), dense (score the whole item table; GPU default for small catalogues)."),
    cuda_graph: str = typer.Option("auto", "--cuda-graph", help="Replay the training step as one CUDA graph: auto, on, off."),
    compile: str = typer.Option("off", "--compile", help="on: fuse the losses with torch.compile (needs triton on CUDA, a C++ compiler on CPU)."),
    assemble: str = typer.Option("auto", help="Where batches are cut: auto (device on CUDA), host, device."),
    readers: int = typer.Option(0, help="Threads reading and preparing cache chunks (0: 1 on CPU, up to 4 on CUDA)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch default)."),
    log_every: int = typer.Option(50, help="Steps between host syncs for loss checks."),
    eval_block: int = typer.Option(1024, "--eval-block", help="Users per block of the validation/test ranking "
                                   "(memory: block x items scores; any size gives the same metrics)."),
    tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard",
                                     help="Write TensorBoard event files into the run directory."),
):
    """Train CLCRec. With no --dataset: generate synthetic data, build negatives, train, report."""
    from clcrec.config import TrainConfig
    from clcrec.train.flow import run_training

    # Only the options typed on the command line count (click's ParameterSource): they override the
    # --config file, which overrides the defaults (or, without a dataset, the demo preset).
    from_file = TrainConfig.read_toml(config) if config is not None else {}
    given = given_fields(ctx, skip=("config", "resume", "scale"))
    if resume is not None:
        if run_dir is not None and run_dir.resolve() != resume.resolve():
            raise UserError(f"--resume {resume} continues that run in place; --run-dir {run_dir} cannot move it. "
                            "Drop --run-dir (or copy the run directory first)")
        from clcrec.rundir import RunDir
        from clcrec.train.trainer import train as train_run

        record = RunDir(resume).read_config()
        RunDir(resume).train_config(record)  # a hand-edited field is config.json's, before the options merge
        if record.get("lineage"):  # made by `cli.py update`: its negatives were not kept
            raise UserError(f"{resume} was made by `cli.py update` and cannot be resumed (it keeps no negatives); "
                            f"update its parent again with more --epochs, or fold further pairs into it with "
                            f"`cli.py update {resume} --interactions FILE --out NEW_RUN`")
        # The trainer refuses overrides that would change what the model learns
        # (config.RESUMABLE_CHANGES lists the others).
        cfg = TrainConfig.from_dict({**record["config"], **from_file, **given, "run_dir": str(resume)})
        results = train_run(cfg, resume=True, console=console)
        if results:
            from clcrec.train.flow import report

            report(cfg.run_dir, results, console)
        return
    from clcrec.train.flow import DEMO_PRESET

    values = {**from_file, **given}
    preset = DEMO_PRESET if not values.get("dataset") else {}
    if "num_neg" not in values and values.get("cache"):  # an existing --cache decides, as build-negatives does
        from cache.manifest import MANIFEST, read_manifest

        if (Path(values["cache"]) / MANIFEST).is_file():
            values["num_neg"] = read_manifest(Path(values["cache"]))["config"]["num_neg"]
    run_training(TrainConfig(**{**preset, **values}), scale=scale, console=console)


def given_fields(ctx: typer.Context, skip: tuple[str, ...]) -> dict:
    """{TrainConfig field: value} of the options typed on the command line (not their defaults)."""
    names = {"dim_e": "dim_E", "modality": "modalities"}
    out = {}
    for k, v in ctx.params.items():
        if k in skip or ctx.get_parameter_source(k).name != "COMMANDLINE":
            continue
        out[names.get(k, k)] = tuple(v) if isinstance(v, list) else str(v) if isinstance(v, Path) else v
    return out


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    k: list[int] = typer.Option([10, 20, 50], help="Cut-offs to show (repeatable); must be among the run's ks."),
):
    """Evaluate a run's best checkpoint on validation and test (all / warm / cold)."""
    from clcrec.evaluation.report import evaluate_run, format_table

    results = evaluate_run(run_dir, ks=tuple(k))
    for kk in k:
        Console().print(format_table(results, ks=(kk,), title=f"{run_dir} @{kk}"))


@app.command()
def update(
    run_dir: Path = typer.Argument(..., help="The parent run (only read, never modified)."),
    interactions: Path = typer.Option(..., "--interactions", help="CSV or Parquet: user,item [,timestamp] in original ids."),
    out: Path = typer.Option(..., "--out", help="The new run directory (written atomically)."),
    new_items: Optional[Path] = typer.Option(None, "--new-items", help="DIR from embed-items with the content of items the run lacks."),
    movielens: Optional[Path] = typer.Option(None, "--movielens", help="Or MovieLens movie rows (u.item, movies.dat, movies.csv)."),
    epochs: int = typer.Option(3, help="Fine-tuning epochs over the combined data."),
    val_fraction: float = typer.Option(0.1, help="Latest share of the new pairs held out to pick the epoch and the blend."),
    blend_k: str = typer.Option("2", help="k of the ID/content blend n/(n+k), or 'auto': chosen on the held-out new pairs."),
    l_r: Optional[float] = typer.Option(None, "--l-r", help="Fine-tuning rate (default: the parent's)."),
    replay: str = typer.Option("1", help="Each epoch goes over the new pairs and R times as many old ones (a seeded "
                               "sample, against forgetting), so it costs the delta, not the history; 'all': every pair."),
    item_init: str = typer.Option("fold-in", help="Where a formerly cold or new item's ID embedding starts: "
                                  "'fold-in' (its users' mean direction) or 'content'."),
    cold_vectors: str = typer.Option("scaled", "--cold-vectors", help="How the new run ranks content rows: scaled "
                                     "(on the ID scale, like the blend's ID half), normalised or raw (as a parent "
                                     "trained with the default ranks cold items)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    threads: int = typer.Option(0),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Fold interactions that arrived after training into a new run, without retraining (clcrec/train/update.py)."""
    import json

    from clcrec import load_run
    from clcrec.evaluation.report import format_table

    try:
        rep = None if replay.strip().lower() == "all" else float(replay)
    except ValueError:
        raise UserError(f"--replay must be 'all' or a number >= 0, got {replay!r}") from None
    try:
        k = "auto" if blend_k.strip().lower() == "auto" else float(blend_k)
    except ValueError:
        raise UserError(f"--blend-k must be 'auto' or a number >= 0, got {blend_k!r}") from None
    load_run(run_dir, device="cpu").update(
        interactions, out, new_items=new_items, movielens=movielens, epochs=epochs, val_fraction=val_fraction,
        blend_k=k, l_r=l_r, replay=rep, item_init=item_init, cold_vectors=cold_vectors, seed=seed, device=device, threads=threads, force=force, console=console)
    results = json.loads((Path(out) / "results.json").read_text())
    rows = {"blend": results["test"], "ID only": results["test_id_only"]}
    Console().print(format_table(rows, ks=(10,), title=f"{out}: test (what the update did not see)"))
