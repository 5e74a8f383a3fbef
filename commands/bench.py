"""Benchmark commands: `bench negatives|recommend|train`, each measured side by side in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from commands.apps import bench_app, console
from common.machine import check_json_path, write_bench_json


# [bench-negatives]
@bench_app.command("negatives")
def bench_negatives(
    dataset: Optional[Path] = typer.Option(None, help="Dataset directory [paper-scale synthetic, generated once]."),
    num_neg: int = typer.Option(128, "--num-neg", help="Negatives per pair."),
    ref_rows: int = typer.Option(2000, "--ref-rows", help="Pairs timed for the reference algorithm (scaled up)."),
    workdir: Path = typer.Option(Path("caches/bench"), help="Where the synthetic data and the bench cache go."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every figure, with the machine, to this JSON file."),
) -> None:
    """Numba sampler vs the reference code's random.sample, and one end-to-end generation publish."""
    from cache.bench import BenchConfig, run_negatives_bench

    check_json_path(json_out)
    cfg = BenchConfig(dataset=dataset, num_neg=num_neg, ref_rows=ref_rows, workdir=workdir)
    save(json_out, "negatives", cfg, run_negatives_bench(cfg))


@bench_app.command("recommend")
def bench_recommend_cmd(
    scale: str = typer.Option("paper", help="Synthetic scale: tiny, default, paper (55k x 6k) or large (1M x 100k)."),
    dataset: Optional[Path] = typer.Option(None, help="A dataset directory instead of the synthetic one."),
    k: int = typer.Option(50, "--k"),
    candidates: str = typer.Option("all", help="all, warm or cold."),
    device: str = typer.Option("auto"),
    user_block: int = typer.Option(0, "--user-block", help="Users per block (0: recommend-all's default)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every figure, with the machine, to this JSON file."),
):
    """Users/s of recommend-all with a randomly initialised model (the cost does not depend on training)."""
    from clcrec.bench.recommend import BenchRecommendConfig, run_bench_recommend

    check_json_path(json_out)
    cfg = BenchRecommendConfig(scale=scale, dataset=str(dataset or ""), k=k, candidates=candidates, device=device,
                               user_block=user_block)
    save(json_out, "recommend", cfg, run_bench_recommend(cfg, console))


@bench_app.command("train")
def bench_train_cmd(
    dataset: Optional[Path] = typer.Option(None, help="Dataset dir (default: synthetic paper scale)."),
    scale: str = typer.Option("paper", help="Synthetic scale when no --dataset."),
    steps: int = typer.Option(300, help="Timed steps per loop (after warm-up)."),
    rounds: int = typer.Option(5, help="The two loops alternate in this many rounds, sharing the machine's noise."),
    batch_size: list[int] = typer.Option([256], "--batch-size", help="Batch size; repeat for several in one run."),
    num_neg: int = typer.Option(128),
    workers: int = typer.Option(0, help="DataLoader workers of the reference loop (0: 4 on CUDA, 1 on CPU)."),
    device: str = typer.Option("auto"),
    amp: str = typer.Option("auto", help="auto (fp32 on CPU, bf16 on CUDA), fp32, bf16 or fp16; all loops."),
    encode: str = typer.Option("auto", help="auto, unique, slots or all; all loops."),
    scoring: str = typer.Option("auto", help="auto, gather or dense (whole-table matmuls); all loops."),
    cuda_graph: str = typer.Option("auto", "--cuda-graph", help="auto, on or off: the step as one CUDA graph."),
    compile: str = typer.Option("off", "--compile", help="off or on: the losses through torch.compile; all loops."),
    compare_steps: bool = typer.Option(False, "--compare-steps", help="Also time the step alone in every form "
                                       "(eager, CUDA graph, compiled, compiled + graph), side by side."),
    readers: int = typer.Option(0, help="Threads reading and preparing chunks in the streaming loop (0: automatic)."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time the reference-style loop."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every figure, with the machine, to this JSON file."),
):
    """Samples/s: the step alone, the streaming trainer and a reference-style DataLoader loop, side by side."""
    from clcrec.bench.train import BenchTrainConfig, run_bench_train

    check_json_path(json_out)
    cfg = BenchTrainConfig(dataset=str(dataset or ""), scale=scale, steps=steps, rounds=rounds,
                           batch_sizes=tuple(batch_size), num_neg=num_neg, workers=workers, device=device,
                           amp=amp, encode=encode, scoring=scoring, cuda_graph=cuda_graph, readers=readers,
                           compile=compile, compare_steps=compare_steps, reference=reference)
    save(json_out, "train", cfg, {"by_batch_size": run_bench_train(cfg, console)})


def save(path: Optional[Path], bench: str, config, results: dict) -> None:
    if path is not None:
        write_bench_json(path, bench, config, results)
        console.print(f"figures written to {path}")
