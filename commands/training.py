"""Training commands: `train` (and resume) and `evaluate` (clcrec/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from commands.apps import app, console
from pipeline.errors import UserError


@app.command()
def train(
    ctx: typer.Context,
    dataset: Optional[Path] = typer.Option(None, help="Dataset directory; omit to run on the built-in synthetic data."),
    cache: Optional[Path] = typer.Option(None, help="Negative cache; built (generation 0) if missing."),
    run_dir: Optional[Path] = typer.Option(None, help="Run directory (default runs/<dataset>-<time>)."),
    resume: Optional[Path] = typer.Option(None, help="Continue a killed or finished run from its last checkpoint."),
    scale: str = typer.Option("default", help="Synthetic scale when no --dataset: tiny, default, paper, large."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (default 30, synthetic demo 15; with --resume: the run's own)."),
    patience: int = typer.Option(10, help="Epochs without validation improvement before stopping."),
    batch_size: int = typer.Option(256),
    l_r: Optional[float] = typer.Option(None, "--l-r", help="Learning rate (reference default 0.001; the synthetic demo uses 0.005)."),
    reg_weight: float = typer.Option(0.1),
    num_neg: int = typer.Option(128),
    lr_lambda: float = typer.Option(0.5, help="Weight of the R-E loss (U-I gets 1 - lr_lambda)."),
    temp_value: float = typer.Option(2.0),
    num_sample: float = typer.Option(0.5, help="Fraction of U-I item slots that use the content encoder."),
    hybrid_draw: str = typer.Option("bernoulli", help="How those slots are drawn: bernoulli (each slot) or "
                                    "with-replacement (the reference: int(slots*num_sample) indices)."),
    cold_vectors: str = typer.Option("raw", help="How cold items rank: raw (encoder output as is, the reference) or "
                                     "normalised (its direction at the warm ID embeddings' mean norm)."),
    exclude: str = typer.Option("train", help="Negatives exclude the user's 'train' items, or 'all-known' "
                                "(also validation/test: reproduces the reference, leaks held-out data)."),
    dim_e: int = typer.Option(64, "--dim-e", "--dim-E"),
    has_v: bool = typer.Option(True, "--has-v/--no-v"),
    has_a: bool = typer.Option(True, "--has-a/--no-a"),
    has_t: bool = typer.Option(True, "--has-t/--no-t"),
    modality: list[str] = typer.Option([], help="Use only these feature modalities (repeatable)."),
    select_mode: str = typer.Option("cold", help="Validation Recall@K that picks the best epoch: cold, warm, all, mean."),
    select_k: int = typer.Option(10, help="K of the validation Recall@K that selects the epoch."),
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
):
    """Train CLCRec. With no --dataset: generate synthetic data, build negatives, train, report."""
    from clcrec.config import TrainConfig
    from clcrec.flow import run_training

    if resume is not None:
        if run_dir is not None and run_dir.resolve() != resume.resolve():
            raise UserError(f"--resume {resume} continues that run in place; --run-dir {run_dir} cannot move it. "
                            "Drop --run-dir (or copy the run directory first)")
        from clcrec.checkpoint import RunDir
        from clcrec.train import train as train_run

        record = RunDir(resume).read_config()
        # Options typed with --resume override the run's config; the trainer then refuses those
        # that would change what the model learns (config.RESUMABLE_CHANGES lists the others).
        names = {"dim_e": "dim_E", "modality": "modalities"}
        given = {
            names.get(k, k): (tuple(v) if isinstance(v, list) else v)
            for k, v in ctx.params.items()
            if ctx.get_parameter_source(k).name == "COMMANDLINE" and k not in ("resume", "scale")
        }
        cfg = TrainConfig.from_dict({**record["config"], **given, "run_dir": str(resume)})
        results = train_run(cfg, resume=True, console=console)
        if results:
            from clcrec.flow import report

            report(cfg.run_dir, results, console)
        return
    # Options left unset take the reference defaults, or the demo preset when no dataset is given.
    from clcrec.flow import DEMO_PRESET

    preset = DEMO_PRESET if dataset is None else {}
    cfg = TrainConfig(
        dataset=str(dataset or ""), cache=str(cache or ""), run_dir=str(run_dir or ""),
        l_r=l_r if l_r is not None else preset.get("l_r", 0.001), reg_weight=reg_weight, num_neg=num_neg, lr_lambda=lr_lambda, temp_value=temp_value,
        num_sample=num_sample, hybrid_draw=hybrid_draw, cold_vectors=cold_vectors, exclude=exclude, batch_size=batch_size, dim_E=dim_e,
        has_v=has_v, has_a=has_a, has_t=has_t,
        modalities=tuple(modality), epochs=epochs if epochs is not None else preset.get("epochs", 30), patience=patience, select_mode=select_mode,
        select_k=select_k, eval_ema=eval_ema, select_window=select_window, refresh_every=refresh_every, seed=seed, device=device, amp=amp,
        encode=encode, scoring=scoring, cuda_graph=cuda_graph, compile=compile, assemble=assemble, readers=readers,
        threads=threads, log_every=log_every,
    )
    run_training(cfg, scale=scale, console=console)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    k: list[int] = typer.Option([10, 20, 50], help="Cut-offs to show (repeatable); must be among the run's ks."),
):
    """Evaluate a run's best checkpoint on validation and test (all / warm / cold)."""
    from clcrec.evaluate import format_table
    from clcrec.serve import evaluate_run

    results = evaluate_run(run_dir, ks=tuple(k))
    for kk in k:
        Console().print(format_table(results, ks=(kk,), title=f"{run_dir} @{kk}"))
