"""The Python API over a trained run, for notebooks and services; original ids in and out.

    from clcrec import load_run
    run = load_run("runs/ml")                                     # best checkpoint; GPU if present
    new = run.embed_items(movielens="new_movies.csv")             # or files=[...], or features={...}, ids=[...]
    new = run.embed_items(items=df)                               # raw content: a polars DataFrame or a table
    recs = run.recommend([196, 186], k=10, new_items=new)         # polars: user, rank, item, score, status
    scores = run.score([196], [1, 50, 1683], new_items=new)       # numpy (1, 3)

`cli.py recommend`, `recommend-all` and `embed-items` are thin wrappers over `Run`. Reads the run
(clcrec.rundir.open_run) and, for new items, their feature files or a DIR from `embed-items`;
writes only what `NewItems.save` and `recommend_all` are asked to write.

Candidates: `all` (the run's items plus any new ones), `warm` (ranked by ID embedding), `cold`
(the run's cold items, ranked by content) and `new` (the new items). A new item whose id the run
already has (only with replace=True) replaces that item's vector and counts as new; the user's
training interactions with it stay masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from clcrec.device import resolve_device
from clcrec.rundir import TrainedRun, open_run
from clcrec.serving.new_items import (
    NewItems,
    encode_features,
    encoder_id,
    load_new_items,
)
from clcrec.serving.recommend_all import (
    block_columns,
    default_block,
    write_topk_parquet,
)
from common.errors import InputError, UserError
from pipeline.dataset import STATUS_NAMES

CANDIDATES = ("all", "warm", "cold", "new")
NEW = 3  # status code of new items, beside pipeline.dataset's 0 warm, 1 cold-val, 2 cold-test
STATUS = {**STATUS_NAMES, NEW: "new"}


@dataclass
class Catalogue:
    """The items a ranking runs over: the run's, then the new ones (replaced rows overwritten)."""

    table: torch.Tensor  # (I', D) float32 ranking vectors on the run's device
    ids: np.ndarray  # (I',) int64 original ids
    status: np.ndarray  # (I',) int8, STATUS codes
    titles: list | None  # (I',) or None when the dataset has no titles


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto") -> "Run":
    """Open a finished run (its `best` or `last` checkpoint) for serving on `device`."""
    return Run(open_run(Path(run_dir), which), resolve_device(device))


class Run:
    def __init__(self, loaded: TrainedRun, device: torch.device):
        self.loaded, self.device = loaded, device
        self.dataset = loaded.dataset
        self.modalities = {m: int(self.dataset.features[m].shape[1]) for m in loaded.checkpoint["modalities"]}
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._encoder: str | None = None
        items = self.dataset.item_ids()
        self.item_ids = items["original_id"].to_numpy().astype(np.int64)  # (I,) by item index
        self._titles = items["title"].to_list() if "title" in items.columns else None
        self._user_frame = self.dataset.user_ids()  # columns user, original_id

    # --- tables and identities ------------------------------------------------------------------

    @property
    def user_ids(self) -> np.ndarray:
        return self._user_frame["original_id"].to_numpy()

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors (U, D), ranking table (I, D)) float32 on the device, computed once."""
        if self._tables is None:
            users, items = self.loaded.tables()
            self._tables = users.to(self.device), items.to(self.device)
        return self._tables

    @property
    def encoder(self) -> str:
        if self._encoder is None:
            self._encoder = encoder_id(self.loaded.model, self.loaded.prior)
        return self._encoder

    def user_index(self, user_ids) -> np.ndarray:
        """(R,) int64 indices of original user ids (ints or strings like "196"); unknown ones refused."""
        col = self._user_frame["original_id"]
        given = [user_ids] if isinstance(user_ids, (str, int, np.integer)) else list(user_ids)
        if not given:
            raise UserError("no users given")
        # Strings ("196", from the command line) and ints alike, cast to the id column's type.
        keys = pl.Series("original_id", [str(u) for u in given]).str.strip_chars().cast(col.dtype, strict=False)
        hit = pl.DataFrame({"original_id": keys}).join(self._user_frame, on="original_id", how="left",
                                                       maintain_order="left")["user"]
        if hit.null_count():
            bad = [given[i] for i in np.flatnonzero(hit.is_null().to_numpy())]
            more = f" (and {len(bad) - 1} more unknown)" if len(bad) > 1 else ""
            raise UserError(f"user {str(bad[0])!r} is not in dataset {self.dataset.root}{more} "
                            f"(original ids, e.g. {col[0]!r})")
        return hit.to_numpy().astype(np.int64)

    # --- new items ------------------------------------------------------------------------------

    def embed_items(self, features: dict[str, np.ndarray] | None = None, ids=None, *, files=(), movielens=None,
                    items=None, bow=None, replace: bool = False) -> NewItems:
        """Ranking vectors of items the run has not seen, from exactly one source:
        `features` ({modality: (N, dim)} arrays) with `ids`; `files` (one feature file per modality,
        the `ingest table --feature` formats); `movielens` (a u.item / movies.dat / movies.csv); or
        `items`, raw content (a polars DataFrame or an item table's path, with `bow` LDA-C lines for a
        bag-of-words modality) through the featurizer the run's dataset kept (clcrec/serving/raw_items.py;
        `files` then give only the modalities that were --feature files at ingest).
        Ids the run already has are refused unless `replace`, which replaces their vectors."""
        from clcrec.serving.new_items import check_feature_arrays, read_feature_files

        if [features is not None, bool(files) and items is None, movielens is not None, items is not None].count(True) != 1:
            raise UserError("give the new items' content one way: --items FILE, feature files, --movielens FILE, "
                            "or arrays")
        titles, meta = None, {"modalities": self.modalities}
        if items is not None:
            from clcrec.serving.raw_items import featurize_items

            ids, feats, titles, meta["notes"] = featurize_items(self.dataset, self.modalities, items, bow, files)
        elif bow is not None:
            raise UserError("--bow gives the bag-of-words lines of an --items table; give --items too")
        elif features is not None:
            ids, feats = check_feature_arrays(features, ids, self.modalities)
        elif movielens is not None:
            from pipeline.ingest_movielens import movie_rows_features

            items, all_feats, notes = movie_rows_features(Path(movielens), self.dataset)
            wrong = {m: d for m, d in self.modalities.items() if m not in all_feats or all_feats[m].shape[1] != d}
            if wrong:
                raise InputError(f"run modalities {wrong} are not built from MovieLens rows; give feature files")
            ids, titles, meta["notes"] = items["original_id"], items["title"].to_list(), notes
            if ids.is_duplicated().any():
                dup = ids.filter(ids.is_duplicated())[0]
                raise InputError(f"movies file {movielens}: movie id {dup} has more than one row")
            feats = {m: all_feats[m] for m in self.modalities}
        else:
            ids, feats = read_feature_files([files] if isinstance(files, (str, Path)) else list(files), self.modalities)
        ids = ids.to_numpy().astype(np.int64)
        known = np.isin(ids, self.item_ids)
        if known.any() and not replace:
            raise UserError(f"{int(known.sum())} new item id(s) are already in run {self.loaded.cfg.run_dir} "
                            f"(e.g. item {ids[known][0]}); give new items new ids, or pass --replace to "
                            "replace their stored vectors")
        vectors = encode_features(self.loaded.model, [feats[m] for m in self.modalities],
                                  item_status=self.loaded.dataset.item_status, prior=self.loaded.prior)
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():  # finite features the encoder cannot take (e.g. values near float32's limit)
            raise InputError(f"{int(bad.sum())} new item(s) get non-finite vectors from the run's encoder, e.g. "
                             f"item {ids[int(np.argmax(bad))]}: their features are finite but out of the range "
                             "the encoder was trained on; scale them like the training features")
        meta["run_dir"] = str(self.loaded.cfg.run_dir)
        return NewItems(ids, vectors, self.encoder, titles, ids[known].tolist(), meta,
                        {m: feats[m] for m in self.modalities})

    def new_items(self, new_items: NewItems | str | Path | None) -> NewItems | None:
        """A NewItems (or a DIR from embed-items, loaded), checked to come from this run's encoder."""
        if new_items is None or isinstance(new_items, NewItems) and new_items.encoder == self.encoder:
            return new_items
        where = "these new items"
        if not isinstance(new_items, NewItems):
            where, new_items = f"new items {new_items}", load_new_items(Path(new_items))
        if new_items.encoder != self.encoder:
            raise UserError(f"{where} were embedded by another model than run {self.loaded.cfg.run_dir}'s; "
                            "embed them again with this run (cli.py embed-items RUN ...)")
        width = self.tables()[1].shape[1]  # dim_E, plus the content prior's columns
        if new_items.vectors.shape[1] != width:
            raise UserError(f"{where} have {new_items.vectors.shape[1]} dims, the run {width}; "
                            f"embed them again with this run (cli.py embed-items RUN ...)")
        return new_items

    def catalogue(self, new_items: NewItems | str | Path | None = None) -> Catalogue:
        """The run's items followed by the genuinely new ones; replaced items keep their index."""
        _, table = self.tables()
        status = self.dataset.item_status.astype(np.int8)
        new = self.new_items(new_items)
        if new is None or len(new) == 0:
            return Catalogue(table, self.item_ids, status, self._titles)
        where = _positions(self.item_ids, new.ids)  # (N,) index in the run, or -1
        old = where >= 0
        if not set(new.ids[old].tolist()) <= set(new.replaced):
            raise UserError("the new items hold ids the run already has, not marked --replace; embed them again")
        dev = table.device
        vecs = torch.as_tensor(new.vectors, device=dev)
        table, status = table.clone(), status.copy()
        table[torch.as_tensor(where[old], device=dev)] = vecs[torch.as_tensor(np.flatnonzero(old), device=dev)]
        status[where[old]] = NEW
        titles = None
        if self._titles is not None or new.titles is not None:
            run_t = np.array(self._titles if self._titles is not None else [None] * len(status), dtype=object)
            new_t = np.array(new.titles if new.titles is not None else [None] * len(new), dtype=object)
            if new.titles is not None:
                run_t[where[old]] = new_t[old]
            titles = run_t.tolist() + new_t[~old].tolist()
        return Catalogue(
            torch.cat([table, vecs[torch.as_tensor(np.flatnonzero(~old), device=dev)]]),
            np.concatenate([self.item_ids, new.ids[~old]]),
            np.concatenate([status, np.full(int((~old).sum()), NEW, dtype=np.int8)]),
            titles,
        )

    # --- folding in new interactions ------------------------------------------------------------

    def update(self, interactions: str | Path, out: str | Path, *, new_items=None, movielens=None,
               epochs: int = 3, val_fraction: float = 0.1, blend_k: float | str = 2.0, l_r: float | None = None,
               replay: float | None = 1.0, item_init: str = "fold-in", cold_vectors: str = "scaled", seed: int = 0,
               device: str = "auto", threads: int = 0, force: bool = False, console=None) -> "Run":
        """Fold the interactions file (user,item [,timestamp], original ids) into a new run at `out`
        (clcrec/train/update.py) and open it; items the run lacks need their content: `new_items`
        (a DIR or NewItems from this run's embed_items) or `movielens` rows. This run is not changed."""
        # The one import of training from serving (tests/test_layout.py): lazy, so serving alone
        # never loads the trainer.
        from clcrec.train.update import UpdateConfig, update_run

        if self.loaded.root is None:
            raise UserError("this run was not opened from a directory (load_run(DIR)); it cannot be updated")
        rows, source = self._new_item_rows(new_items, movielens)
        update_run(self.loaded.root, Path(interactions), Path(out), new_items=rows, new_items_source=source,
                   config=UpdateConfig(epochs=epochs, val_fraction=val_fraction, blend_k=blend_k, l_r=l_r,
                                       replay=replay, item_init=item_init, cold_vectors=cold_vectors, seed=seed,
                                       device=device, threads=threads),
                   force=force, console=console, parent=self.loaded)
        return load_run(out, device=str(self.device))

    def _new_item_rows(self, new_items, movielens):
        """(NewItemRows or None, lineage note) of the content of items this run lacks."""
        from pipeline.extend_dataset import NewItemRows

        if new_items is not None and movielens is not None:
            raise UserError("give the new items' content one way: --new-items DIR or --movielens FILE")
        if movielens is not None:
            from pipeline.ingest_movielens import movie_rows_features

            items, feats, _ = movie_rows_features(Path(movielens), self.dataset)
            missing = [m for m in self.modalities if m not in feats]
            if missing:
                raise InputError(f"run modalities {missing} are not built from MovieLens rows; use --new-items DIR")
            from common.integrity import file_sha256

            return (NewItemRows(items["original_id"].to_numpy().astype(np.int64), {m: feats[m] for m in self.modalities},
                                items["title"].to_list()),
                    {"kind": "movielens", "path": str(Path(movielens).resolve()), "sha256": file_sha256(Path(movielens))})
        if new_items is None:
            return None, None
        where = str(new_items) if not isinstance(new_items, NewItems) else "NewItems"
        new = self.new_items(new_items)  # refuses another run's encoder
        if new.features is None:
            raise UserError(f"new items {where} hold no content features (made before embed-items kept them); "
                            f"embed them again with cli.py embed-items {self.loaded.root or 'RUN'} ...")
        unknown = sorted(set(new.features) ^ set(self.modalities))
        if unknown:
            raise UserError(f"new items {where} have modalities {sorted(new.features)}, the run {list(self.modalities)}")
        return (NewItemRows(new.ids, dict(new.features), new.titles),
                {"kind": "new-items", "path": where, "encoder_sha256": new.encoder})

    # --- ranking --------------------------------------------------------------------------------

    def pool(self, cat: Catalogue, candidates: str, k: int, clamp: bool = False) -> torch.Tensor | None:
        """(C,) candidate item indices of `cat` (None: all), with k checked against their count
        (`clamp`: a k past the count is allowed; the caller ranks min(k, count))."""
        if candidates not in CANDIDATES:
            raise UserError(f"--candidates must be one of {', '.join(CANDIDATES)}, got {candidates!r}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise UserError(f"--k must be an integer >= 1, got {k!r}")
        if candidates == "new" and not (cat.status == NEW).any():
            raise UserError("--candidates new needs new items: pass --new-items DIR (from cli.py embed-items)")
        keep = {"all": None, "warm": cat.status == 0, "cold": (cat.status == 1) | (cat.status == 2),
                "new": cat.status == NEW}[candidates]
        n = len(cat.status) if keep is None else int(keep.sum())
        if k > n and not clamp:
            raise UserError(f"--k {k} is larger than the {n} candidate items (--candidates {candidates}); "
                            f"choose --k <= {n}")
        return None if keep is None else torch.as_tensor(np.flatnonzero(keep), device=cat.table.device)

    def recommend(self, user_ids, k: int = 10, candidates: str = "all", new_items=None,
                  include_seen: bool = False, clamp: bool = False) -> pl.DataFrame:
        """Top-k per user: columns user, rank, item, score, status [, title]; best first, users in
        the order given. Training items are skipped unless include_seen. A k past the number of
        candidates is an error, or with `clamp` ranks them all (a user then gets fewer than k rows)."""
        from clcrec.evaluation.topk import topk_items

        cat = self.catalogue(new_items)
        pool = self.pool(cat, candidates, k, clamp)
        k = min(k, len(cat.ids) if pool is None else int(pool.numel()))
        users = self.user_index(user_ids)
        user_vecs, _ = self.tables()
        scores, idx = topk_items(user_vecs, cat.table, torch.as_tensor(users), self.dataset.train, k,
                                 exclude_train=not include_seen, candidates=pool,
                                 user_block=default_block(len(cat.ids), self.device))
        cols = block_columns(0, scores, idx, self.user_ids[users], np.arange(len(cat.ids)))
        rows = cols["item"]
        df = pl.DataFrame({"user": cols["user"], "rank": cols["rank"], "item": cat.ids[rows], "score": cols["score"],
                           "status": [STATUS[int(s)] for s in cat.status[rows]]})
        if cat.titles is not None:
            df = df.with_columns(pl.Series("title", [cat.titles[r] for r in rows.tolist()], dtype=pl.String))
        return df

    def score(self, user_ids, item_ids, new_items=None) -> np.ndarray:
        """(len(user_ids), len(item_ids)) float32 scores (dot products of the ranking vectors),
        training items not masked."""
        cat = self.catalogue(new_items)
        users = self.user_index(user_ids)
        given = [item_ids] if isinstance(item_ids, (str, int, np.integer)) else list(item_ids)
        if not given:
            raise UserError("no items given")
        keys = pl.Series("original_id", [str(i) for i in given]).str.strip_chars().cast(pl.Int64, strict=False)
        where = np.full(len(given), -1, dtype=np.int64)
        where[keys.is_not_null().to_numpy()] = _positions(cat.ids, keys.drop_nulls().to_numpy())
        if (where < 0).any():
            raise UserError(f"item {str(given[int(np.argmax(where < 0))])!r} is neither in run "
                            f"{self.loaded.cfg.run_dir} nor among the new items")
        user_vecs, _ = self.tables()
        with torch.no_grad():
            u = user_vecs[torch.as_tensor(users, device=self.device)]
            t = cat.table[torch.as_tensor(where, device=self.device)]
            return (u @ t.T).cpu().numpy()

    def recommend_all(self, out: str | Path, k: int = 50, candidates: str = "all", new_items=None, *,
                      force: bool = False, progress: bool = False, user_block: int | None = None) -> dict:
        """Top-k for every user into the Parquet file `out` (clcrec.serving.recommend_all); returns a summary."""
        from clcrec.evaluation.topk import iter_topk
        from common.fsutil import check_output

        out = Path(out)
        check_output(out, "--out", "recommend-all", force)  # before any work: nothing computed for a refusal
        cat = self.catalogue(new_items)
        pool = self.pool(cat, candidates, k)
        user_vecs, _ = self.tables()
        block = user_block or default_block(len(cat.ids), self.device)
        users = torch.arange(user_vecs.shape[0])
        blocks = iter_topk(user_vecs, cat.table, users, self.dataset.train, k, candidates=pool, user_block=block)
        codes = sorted(STATUS)  # the columns `recommend` shows: status, and title when items have one
        labels = {"status": (cat.status.astype(np.int32), [STATUS[c] for c in codes])}
        if cat.titles is not None:
            labels["title"] = (np.arange(len(cat.ids), dtype=np.int32), [t or "" for t in cat.titles])
        rows = write_topk_parquet(out, blocks, self.user_ids, cat.ids, force=force, progress=progress, labels=labels)
        return {"out": str(out), "users": int(user_vecs.shape[0]), "rows": rows, "k": k, "candidates": candidates,
                "items": len(cat.ids) if pool is None else int(pool.numel()), "device": str(self.device)}


def recommend(run_dir: Path, user: str, k: int = 10, include_seen: bool = False, candidates: str = "all",
              new_items: Path | None = None) -> pl.DataFrame:
    """Top-k items for one user (original id) as `cli.py recommend` shows them: rank, original_id
    [, title], score (rounded), status; k clamped to the candidates. A wrapper over Run.recommend."""
    df = load_run(run_dir, device="cpu").recommend([user], k, candidates, new_items, include_seen, clamp=True)
    return df.select(
        "rank", pl.col("item").alias("original_id"), *(["title"] if "title" in df.columns else []),
        pl.col("score").cast(pl.Float64).round(4), "status",
    )


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """(len(wanted),) index of each wanted id in `ids` (unique), or -1."""
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids, wanted, sorter=order).clip(max=len(ids) - 1)
    return np.where(ids[order[pos]] == wanted, order[pos], -1)
