"""Negative cache commands: `build-negatives`, `refresh`, `cache-info|verify|prune` (cache/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from commands.apps import app, console
from common.errors import UserError


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


MAX_GENERATIONS = 1000  # generations one build-negatives call makes (each a full pass over the data)
MAX_GENERATION_ID = 10**6  # the largest generation id (one a day for 2,700 years)


def check_generation(generation: int | None) -> None:
    """Refuse a --generation id outside 0..MAX_GENERATION_ID, before anything is read or written."""
    if generation is not None and not 0 <= generation <= MAX_GENERATION_ID:
        raise UserError(f"--generation must be from 0 to {MAX_GENERATION_ID:,}, got {generation}")


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
    config_file: Optional[Path] = typer.Option(None, "--config", help="A TOML file of NegativeConfig fields "
                                               "(num_neg, seed, chunk_rows, exclusion, on_short, cname, clevel); "
                                               "options given here override it."),
) -> None:
    """Sample negatives for every training pair into numbered cache generations."""
    from cache import build

    check_generation(generation)
    if not 1 <= generations <= MAX_GENERATIONS:
        raise UserError(f"--generations must be from 1 to {MAX_GENERATIONS}, got {generations}")
    from_file = {}
    if config_file is not None:
        from cache.manifest import NegativeConfig
        from common.tomlconfig import read_toml_fields

        from_file = read_toml_fields(config_file, NegativeConfig)
    given = dict(num_neg=num_neg, seed=seed, chunk_rows=chunk_rows, on_short=on_short, exclusion=exclude)
    config = _negative_config(cache, **{**from_file, **{k: v for k, v in given.items() if v is not None}})
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
    from cache.build import format_summary
    from cache.build import refresh as refresh_cache
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

    check_generation(generation)
    store = CacheStore(cache)
    if generation is not None and generation not in store.published():  # before any lease file is made
        raise UserError(f"cache {cache} has no published generation {generation}; it has "
                        f"{store.published() or 'none'}")
    ids = [generation] if generation is not None else store.published()
    if not ids:
        raise UserError(f"cache {cache} has no published generation, so there is nothing to verify; "
                        f"build one with `cli.py build-negatives DATASET {cache}`")
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
        raise UserError(f"{len(bad_gens)} generation(s) of {cache} failed verification: {bad_gens} (listed above); "
                        + ("they were dropped: rebuild with build-negatives or refresh" if drop_bad else
                           f"drop them with `cli.py cache-verify {cache} --drop-bad`, then rebuild"))


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
