"""The CLCRec command line: thin typer commands that build a config and call library code.

    python cli.py --help
    python cli.py train                      # the whole flow on the built-in synthetic default

Expected failures (bad input, a stale cache, a diverged run) raise `pipeline.errors.UserError`;
`main()` prints their message and exits 1 without a traceback.
"""

from __future__ import annotations

import clcrec  # noqa: F401 - first: sets the OpenMP wait default before torch loads (clcrec/__init__.py)
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pipeline.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="CLCRec: contrastive cold-start recommendation with a data pipeline and cached negatives.",
)
ingest_app = typer.Typer(no_args_is_help=True, help="Turn real data into a canonical dataset directory.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks, measured side by side in one run.")
app.add_typer(ingest_app, name="ingest")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


@app.callback()
def _global_options(
    skip_hash: bool = typer.Option(
        False, "--skip-hash", help="Do not hash dataset files on open (huge data); the shape, dtype, "
        "id-range and finiteness checks still run. Same as CLCREC_SKIP_HASH=1."),
) -> None:
    """CLCRec: contrastive cold-start recommendation with a data pipeline and cached negatives."""
    if skip_hash:
        import os

        from pipeline.integrity import SKIP_HASH_ENV

        os.environ[SKIP_HASH_ENV] = "1"

# ---------------------------------------------------------------------------------------------
# Data pipeline commands (ingest, synth)
# ---------------------------------------------------------------------------------------------

# [pipeline-commands]


@app.command()
def synth(
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    scale: str = typer.Option("default", help="Size: tiny | default | paper | large."),
    seed: int = typer.Option(0, help="Seed for generation and the cold split."),
    force: bool = typer.Option(False, "--force", help="Replace an existing target."),
) -> None:
    """Generate a synthetic dataset with planted structure (the built-in default data)."""
    from pipeline.synthetic import SynthConfig, write_synthetic

    path = write_synthetic(target, SynthConfig(scale=scale, seed=seed), force=force, progress=True)
    console.print(f"wrote {path}")


_SEED = typer.Option(0, "--seed", help="Seed of the cold-item split.")
_COLD = typer.Option(0.2, "--cold-fraction", help="Fraction of items made cold.")
_COLD_VAL = typer.Option(0.5, "--cold-val-share", help="Share of cold items for validation (rest: test).")
_VAL = typer.Option(0.1, "--val-fraction", help="Fraction of warm interactions for validation.")
_TEST = typer.Option(0.1, "--test-fraction", help="Fraction of warm interactions for test.")
_COLD_ITEMS = typer.Option(None, "--cold-items", help="File of original item ids (one a line) to make cold.")
_FORCE = typer.Option(False, "--force", help="Replace an existing target.")


def _split_config(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items):
    from pipeline.split import SplitConfig

    return SplitConfig(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items)


@ingest_app.command("movielens")
def ingest_movielens_cmd(
    source: Path = typer.Argument(..., help="A MovieLens release directory (ml-100k, ml-1m, ml-25m, ...)."),
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    title_dim: int = typer.Option(64, help="Dimensions of the hashed title-word features."),
    tag_dim: int = typer.Option(64, help="Dimensions of the hashed user-tag features (releases with tags.csv)."),
    seed: int = _SEED, cold_fraction: float = _COLD, cold_val_share: float = _COLD_VAL,
    val_fraction: float = _VAL, test_fraction: float = _TEST, cold_items: Optional[Path] = _COLD_ITEMS,
    force: bool = _FORCE,
) -> None:
    """Ingest a MovieLens release (detected by its files) with genre, year and title features, plus
    tag-genome and user-tag features when the release has genome-scores.csv / tags.csv."""
    from pipeline.ingest_common import IngestConfig
    from pipeline.ingest_movielens import ingest_movielens

    split = _split_config(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items)
    console.print(f"wrote {ingest_movielens(source, target, IngestConfig(split=split, title_dim=title_dim, tag_dim=tag_dim), force)}")


@ingest_app.command("refnpy")
def ingest_refnpy_cmd(
    source: Path = typer.Argument(..., help="A Data/<name>/ directory of the public CLCRec code."),
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow loading pickled .npy files (runs code)."),
    num_users: Optional[int] = typer.Option(None, help="num_user, only if it cannot be inferred."),
    force: bool = _FORCE,
) -> None:
    """Ingest the reference code's .npy layout, keeping its split."""
    from pipeline.ingest_common import IngestConfig
    from pipeline.ingest_refnpy import ingest_refnpy

    path = ingest_refnpy(source, target, IngestConfig(allow_pickle=allow_pickle), force, num_users=num_users)
    console.print(f"wrote {path}")


@ingest_app.command("table")
def ingest_table_cmd(
    interactions: Path = typer.Argument(..., help="Interactions .csv / .tsv / .parquet."),
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    feature: list[str] = typer.Option(
        [], "--feature", help="NAME=FEAT.npy:IDS.txt or NAME=FEAT.parquet; repeat per modality."
    ),
    user_col: str = typer.Option("user", help="User id column."),
    item_col: str = typer.Option("item", help="Item id column (also the id column of Parquet features)."),
    seed: int = _SEED, cold_fraction: float = _COLD, cold_val_share: float = _COLD_VAL,
    val_fraction: float = _VAL, test_fraction: float = _TEST, cold_items: Optional[Path] = _COLD_ITEMS,
    force: bool = _FORCE,
) -> None:
    """Ingest an interactions table with one item-feature file per modality."""
    from pipeline.ingest_common import IngestConfig
    from pipeline.ingest_table import ingest_table, parse_feature_spec

    config = IngestConfig(
        split=_split_config(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items),
        user_col=user_col,
        item_col=item_col,
        features=tuple(parse_feature_spec(f) for f in feature),
    )
    console.print(f"wrote {ingest_table(interactions, target, config, force)}")

# ---------------------------------------------------------------------------------------------
# Negative cache commands (build-negatives, refresh, cache info)
# ---------------------------------------------------------------------------------------------

# [cache-commands]


def _negative_config(cache: Path, **given):
    """The cache's recorded NegativeConfig (or the defaults for a new cache), with the options
    the user gave on top (a mismatch with an existing cache is refused later, by name)."""
    from dataclasses import replace

    from cache.manifest import MANIFEST, NegativeConfig, read_manifest

    base = NegativeConfig.from_dict(read_manifest(cache)["config"]) if (cache / MANIFEST).exists() else NegativeConfig()
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--shard takes i/n (e.g. 0/4), got {text!r}")
    if not (n >= 1 and 0 <= i < n):
        raise typer.BadParameter(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


@app.command("build-negatives")
def build_negatives(
    dataset: Path = typer.Argument(..., help="Dataset directory (from `ingest` or `synth`)."),
    cache: Path = typer.Argument(..., help="Cache directory; created if new."),
    num_neg: Optional[int] = typer.Option(None, "--num-neg", help="Negatives per pair [128 or the cache's]."),
    seed: Optional[int] = typer.Option(None, help="Master seed [0 or the cache's]."),
    chunk_rows: Optional[int] = typer.Option(None, "--chunk-rows", help="Pairs per chunk [16384 or the cache's]."),
    on_short: Optional[str] = typer.Option(
        None, "--on-short",
        help="Users with fewer allowed warm items than --num-neg: 'error' (default) or 'repeat' "
        "(fill their rows with all allowed items, repeated)."),
    exclude: Optional[str] = typer.Option(
        None, "--exclude",
        help="Items negatives never include: 'train' (the user's training items; default) or "
        "'all-known' (also validation and test items, as the reference code does: leaks held-out data)."),
    generations: int = typer.Option(1, "--generations", help="Build the next G generations (0..G-1 in a new cache)."),
    generation: Optional[int] = typer.Option(None, "--generation", help="Build exactly this generation (no-op if published)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: write only shard i of n of --generation into staging."),
    publish: bool = typer.Option(False, "--publish", help="Check the staged shards of --generation and publish it."),
    wait: bool = typer.Option(False, "--wait", help="Queue behind a running writer instead of failing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Sample negatives for every training pair into numbered cache generations."""
    from cache import build

    config = _negative_config(cache, num_neg=num_neg, seed=seed, chunk_rows=chunk_rows, on_short=on_short,
                              exclusion=exclude)
    if (shard or publish) and generation is None:
        raise typer.BadParameter("--shard and --publish need --generation g")
    if shard and publish:
        raise typer.BadParameter("run the --shard jobs first, then one --publish")
    if shard:
        i, n = _parse_shard(shard)
        info = build.build_shard(dataset, cache, generation, config, i, n, progress=not quiet)
        console.print(f"generation {generation} shard {i}/{n}: {info['status']}")
        return
    if publish:
        from cache.publish import check_existing

        check_existing(cache, dataset, config)  # the dataset named must be the cache's
        g = build.publish_generation(cache, generation, wait=wait)
        ids = [g]
    elif generation is not None:
        ids = [build.build_generation(dataset, cache, generation, config, wait=wait, progress=not quiet)]
    else:
        ids = build.build_next(dataset, cache, generations, config, wait=wait, progress=not quiet)
    entries = _cache_entries(cache)
    for g in ids:
        console.print(build.format_summary(entries[str(g)], config.num_neg, g), highlight=False, soft_wrap=True)


def _cache_entries(cache: Path) -> dict:
    from cache.manifest import read_manifest

    return read_manifest(cache)["generations"]


@app.command()
def refresh(
    cache: Path = typer.Argument(..., help="Cache directory (built before with build-negatives)."),
    keep: int = typer.Option(3, "--keep", help="Generations to keep; older ones are pruned unless a reader holds them."),
    wait: bool = typer.Option(False, "--wait", help="Queue behind a running writer instead of failing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """The scheduled job: build the next generation from the recorded dataset, publish, prune."""
    from cache.build import format_summary, refresh as refresh_cache
    from cache.store import CacheStore

    res = refresh_cache(cache, keep, wait=wait, progress=not quiet)
    console.print(format_summary(res["entry"], CacheStore(cache).config.num_neg, res["generation"]),
                  highlight=False, soft_wrap=True)
    if res["pruned"]:
        console.print(f"pruned generations {res['pruned']}")
    if res["in_use"]:
        console.print(f"kept generations {res['in_use']}: a reader still holds them")


@app.command("cache-info")
def cache_info(cache: Path = typer.Argument(..., help="Cache directory.")) -> None:
    """Dataset, sampling config and the published generations of a cache."""
    from rich.table import Table

    from cache.store import CacheStore

    s = CacheStore(cache).summary()
    out = Console()
    out.print(f"cache {cache}: dataset {s['dataset']['path']} (fingerprint {s['dataset']['fingerprint'][:12]}..., "
              f"{s['dataset']['num_pairs']:,} pairs, {s['dataset']['num_warm']:,} warm items)", highlight=False)
    out.print("config " + ", ".join(f"{k}={v}" for k, v in s["config"].items()), highlight=False)
    table = Table("generation", "pairs", "chunks", "MiB", "ratio", "created", "in use")
    for g in s["generations"]:
        table.add_row(str(g["generation"]), f"{g['rows']:,}", str(g["chunks"]), f"{g['bytes'] / 2**20:.1f}",
                      f"{g['raw_bytes'] / max(g['bytes'], 1):.2f}x", g["created"][:19].replace("T", " "),
                      "yes" if g["in_use"] else "")
    out.print(table)


@app.command("cache-verify")
def cache_verify(
    cache: Path = typer.Argument(..., help="Cache directory."),
    generation: Optional[int] = typer.Option(None, "--generation", help="Only this generation."),
    drop_bad: bool = typer.Option(
        False, "--drop-bad", help="Unpublish and delete generations with bad chunks or a store that will not open."),
) -> None:
    """Read every chunk and check its checksum; exit 1 naming the bad chunks and unopenable stores."""
    from cache.build import drop_generations
    from cache.store import CacheStore, UnreadableGenerationError

    store = CacheStore(cache)
    ids = [generation] if generation is not None else store.published()
    bad_gens = []
    for g in ids:
        with store.reader_lease(g):
            try:
                bad = store.open_generation(g).verify()
                what = f"{len(bad)} bad chunk(s)"
            except UnreadableGenerationError as e:  # the whole generation is bad: drop it too
                bad, what = [str(e)], "store cannot be opened"
        console.print(f"generation {g}: " + ("ok" if not bad else what), highlight=False)
        for msg in bad:
            console.print("  " + msg, highlight=False, markup=False, soft_wrap=True)
        if bad:
            bad_gens.append(g)
    if bad_gens and drop_bad:
        console.print(f"dropped generations {drop_generations(cache, bad_gens)}; rebuild with build-negatives or refresh")
    if bad_gens:
        raise typer.Exit(1)


@app.command("cache-prune")
def cache_prune(
    cache: Path = typer.Argument(..., help="Cache directory."),
    keep: int = typer.Option(3, "--keep", help="Generations to keep (the newest)."),
    wait: bool = typer.Option(False, "--wait", help="Queue behind a running writer instead of failing."),
) -> None:
    """Delete all but the newest K generations, skipping any a reader holds."""
    from cache.build import prune

    pruned, in_use = prune(cache, keep, wait=wait)
    console.print(f"pruned {pruned or 'nothing'}" + (f"; kept {in_use} (in use by a reader)" if in_use else ""))


# [bench-negatives]
@bench_app.command("negatives")
def bench_negatives(
    dataset: Optional[Path] = typer.Option(None, help="Dataset directory [paper-scale synthetic, generated once]."),
    num_neg: int = typer.Option(128, "--num-neg", help="Negatives per pair."),
    ref_rows: int = typer.Option(2000, "--ref-rows", help="Pairs timed for the reference algorithm (scaled up)."),
    workdir: Path = typer.Option(Path("caches/bench"), help="Where the synthetic data and the bench cache go."),
) -> None:
    """Numba sampler vs the reference code's random.sample, and one end-to-end generation publish."""
    from cache.bench import BenchConfig, run_negatives_bench

    run_negatives_bench(BenchConfig(dataset=dataset, num_neg=num_neg, ref_rows=ref_rows, workdir=workdir))

# ---------------------------------------------------------------------------------------------
# Training commands (train, evaluate, recommend, export)
# ---------------------------------------------------------------------------------------------

# [train-commands]


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
    readers: int = typer.Option(0, help="Threads decoding cache chunks (0: 1 on CPU, up to 4 on CUDA)."),
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
        num_sample=num_sample, hybrid_draw=hybrid_draw, exclude=exclude, batch_size=batch_size, dim_E=dim_e,
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


@app.command()
def recommend(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    user: str = typer.Option(..., help="The user's original id."),
    k: int = typer.Option(10),
    include_seen: bool = typer.Option(False, help="Also rank the user's training items."),
    candidates: str = typer.Option("all", help="Rank among all, warm (with interactions), cold, or new (--new-items) items."),
    new_items: Optional[Path] = typer.Option(None, "--new-items", help="Also rank the items of this DIR from embed-items."),
):
    """Top-k items for a user (original ids; cold items included)."""
    from rich.table import Table

    from clcrec.serve import recommend as rec

    df = rec(run_dir, user, k, include_seen, candidates, new_items)
    table = Table(title=f"top {k} for user {user}")
    for col in df.columns:
        table.add_column(col)
    for row in df.iter_rows():
        table.add_row(*[str(v) for v in row])
    Console().print(table)


@app.command()
def export(
    run_dir: Path = typer.Argument(...),
    out: Optional[Path] = typer.Option(None, help="Output directory [RUN_DIR/embeddings]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export."),
):
    """Export user and item embeddings (ranking tables) with their original ids."""
    from clcrec.serve import export_embeddings

    console.print(f"wrote {export_embeddings(run_dir, out, force)}")


# [serve-commands]


@app.command("embed-items")
def embed_items(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    features: Optional[list[str]] = typer.Argument(
        None, help="One file per run modality: NAME=FEAT.parquet or NAME=FEAT.npy:IDS.txt (NAME optional)."),
    out: Path = typer.Option(..., "--out", help="Directory to write (vectors.npy, items.parquet, meta.json)."),
    movielens: Optional[Path] = typer.Option(
        None, "--movielens", help="MovieLens-style movie rows instead (u.item, movies.dat or movies.csv)."),
    replace: bool = typer.Option(False, "--replace", help="Allow ids the run has: their vectors are replaced."),
    force: bool = _FORCE,
):
    """Ranking vectors of items the run has never seen, from their content features (no retraining)."""
    from clcrec.api import load_run

    if out.exists() and not force:  # before reading anything
        raise UserError(f"{out} already exists; pass --force to replace it")
    run = load_run(run_dir, device="cpu")
    new = run.embed_items(files=features or (), movielens=movielens, replace=replace)
    new.save(out, force=force)
    notes = new.meta.get("notes", {})
    if notes.get("unknown_genres"):
        console.print(f"genres the run never saw, ignored: {', '.join(notes['unknown_genres'])}", highlight=False)
    if notes.get("clamped"):
        console.print(f"{notes['clamped']} year(s) outside the training range, clamped to it", highlight=False)
    extra = f" ({len(new.replaced)} replace stored vectors)" if new.replaced else ""
    console.print(f"wrote {out}: {len(new)} new item(s){extra}", highlight=False)


@app.command("recommend-all")
def recommend_all_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    out: Path = typer.Option(..., "--out", help="Parquet file to write: user, rank, item, score (original ids)."),
    k: int = typer.Option(50, "--k"),
    candidates: str = typer.Option("all", help="all, warm, cold, or new (the --new-items)."),
    new_items: Optional[Path] = typer.Option(None, "--new-items", help="Also rank the items of this DIR from embed-items."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu, cuda, cuda:1 ..."),
    user_block: int = typer.Option(0, "--user-block", help="Users per block (0: sized to the catalogue and device)."),
    force: bool = _FORCE,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Top-k for every user (training items masked) into one Parquet file, in user blocks on the device."""
    from clcrec.api import load_run

    if user_block < 0:
        raise typer.BadParameter("--user-block must be >= 0")
    run = load_run(run_dir, device=device)
    res = run.recommend_all(out, k, candidates, new_items, force=force, progress=not quiet, user_block=user_block or None)
    console.print(f"wrote {out}: {res['rows']:,} rows for {res['users']:,} users over {res['items']:,} candidates "
                  f"on {res['device']}", highlight=False)


@bench_app.command("recommend")
def bench_recommend_cmd(
    scale: str = typer.Option("paper", help="Synthetic scale: tiny, default, paper (55k x 6k) or large (1M x 100k)."),
    dataset: Optional[Path] = typer.Option(None, help="A dataset directory instead of the synthetic one."),
    k: int = typer.Option(50, "--k"),
    candidates: str = typer.Option("all", help="all, warm or cold."),
    device: str = typer.Option("auto"),
    user_block: int = typer.Option(0, "--user-block", help="Users per block (0: recommend-all's default)."),
):
    """Users/s of recommend-all with a randomly initialised model (the cost does not depend on training)."""
    from clcrec.bench_recommend import BenchRecommendConfig, run_bench_recommend

    run_bench_recommend(BenchRecommendConfig(scale=scale, dataset=str(dataset or ""), k=k, candidates=candidates,
                                             device=device, user_block=user_block), console)


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
    readers: int = typer.Option(0, help="Chunk-decoding threads of the streaming loop (0: automatic)."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time the reference-style loop."),
):
    """Samples/s: the step alone, the streaming trainer and a reference-style DataLoader loop, side by side."""
    from clcrec.bench import BenchTrainConfig, run_bench_train

    run_bench_train(BenchTrainConfig(dataset=str(dataset or ""), scale=scale, steps=steps, rounds=rounds,
                                     batch_sizes=tuple(batch_size), num_neg=num_neg, workers=workers, device=device,
                                     amp=amp, encode=encode, scoring=scoring, cuda_graph=cuda_graph, readers=readers,
                                     compile=compile, compare_steps=compare_steps, reference=reference), console)


def main() -> None:
    try:
        app()  # standalone mode: typer handles usage errors (exit 2) and --help itself
    except UserError as e:
        # soft_wrap: never break a path in the message when stderr is not a terminal
        console.print("[bold red]error:[/bold red] ", end="")
        console.print(str(e), highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
