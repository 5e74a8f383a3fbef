"""Items that arrive after training: content features in, ranking vectors out, no retraining.

    python cli.py embed-items runs/RUN v=new_v.npy:new_ids.txt t=new_t.parquet --out new/
    python cli.py embed-items runs/RUN --movielens new_movies.csv --out new/
    python cli.py embed-items runs/RUN --items new_items.csv --out new/    # raw content: raw_items.py

Reads one feature file per modality of the run, in the formats of `ingest table --feature`
(NAME=FEAT.parquet or NAME=FEAT.npy:IDS.txt, read by pipeline.ingest_table.read_feature; a bare
FEAT.parquet / FEAT.npy:IDS is matched to the run's modality named like its file, else to the one
with its dimension), or MovieLens-style movie rows, whose features come from the ingest's own
builder (pipeline.ingest_movielens.movie_rows_features). They are encoded exactly as the run's
cold items are (each modality L2-normalised per row, concatenated, the trained encoder), and
written atomically as DIR/:

    meta.json       format, count, dim, modalities, run dir, the encoder's SHA-256 (a DIR made by
                    another model is refused), ids that replace a stored item's vector
    vectors.npy     float32 (N, D) ranking vectors
    features/M.npy  float32 (N, dim) the raw content of each run modality M (what `update` trains on)
    items.parquet   original_id [, title]; rows aligned to vectors.npy
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from clcrec.model import NO_PRIOR, CLCRec, Prior, concat_normalised_features
from common.errors import InputError, UserError
from pipeline.dataset import validate_features
from pipeline.ingest_common import FeatureSpec, integer_ids
from pipeline.ingest_table import parse_feature_spec, read_feature

FORMAT = "clcrec-new-items"
FORMAT_VERSION = 1


@dataclass
class NewItems:
    """Ranking vectors of items the run has not seen, with their original ids."""

    ids: np.ndarray  # (N,) int64 original ids
    vectors: np.ndarray  # (N, D) float32 ranking vectors (the encoder output)
    encoder: str  # SHA-256 of the encoder that made them (encoder_id)
    titles: list | None = None  # (N,) titles of MovieLens rows
    replaced: list[int] = field(default_factory=list)  # ids that replace a stored item's vector
    meta: dict = field(default_factory=dict)  # modalities, notes of the feature build
    features: dict[str, np.ndarray] | None = None  # the raw content per modality (cli.py update reads it)

    def __len__(self) -> int:
        return len(self.ids)

    def frame(self) -> pl.DataFrame:
        df = pl.DataFrame({"original_id": self.ids.astype(np.int64)})
        return df.with_columns(pl.Series("title", self.titles, dtype=pl.String)) if self.titles is not None else df

    def save(self, out: Path, force: bool = False) -> Path:
        """Write DIR atomically (built beside it, then renamed); an existing DIR only with force."""
        from common.fsutil import atomic_write_json, building_dir, check_output
        from common.integrity import record_files

        out = Path(out)
        check_output(out, "--out", "new-items", force)  # only an earlier embed-items output is replaced
        with building_dir(out, "new-items", force=out.exists()) as tmp:
            np.save(tmp / "vectors.npy", self.vectors.astype(np.float32))
            if self.features is not None:  # the content itself, so `update` can train these items
                (tmp / "features").mkdir()
                for name, arr in self.features.items():
                    np.save(tmp / "features" / f"{name}.npy", np.asarray(arr, dtype=np.float32))
            self.frame().write_parquet(tmp / "items.parquet")
            atomic_write_json(tmp / "meta.json", {
                "files": record_files(tmp),  # a SHA-256 per file, checked on load (as a dataset's)
                "format": FORMAT, "format_version": FORMAT_VERSION, "count": len(self),
                "dim": int(self.vectors.shape[1]), "encoder_sha256": self.encoder,
                "replaced": [int(i) for i in self.replaced], **self.meta,
            })  # fmt: skip
        return out


def load_new_items(path: Path) -> NewItems:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{path} is not a new-items directory (no meta.json); make one with `cli.py embed-items`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{meta_path} is unreadable or truncated ({e}); make the directory again with embed-items") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{meta_path} is not a {FORMAT} v{FORMAT_VERSION} directory; make it again with embed-items")
    if isinstance(meta.get("files"), dict):  # directories from before per-file digests have none
        from common.integrity import check_files

        check_files(path, meta["files"], what="new-items file", since="embed-items wrote it",
                    remake="make the directory again with embed-items")
    vectors = np.load(path / "vectors.npy", allow_pickle=False)
    items = pl.read_parquet(path / "items.parquet")
    if vectors.shape != (meta["count"], meta["dim"]) or items.height != meta["count"]:
        raise UserError(f"{path} is inconsistent (vectors {vectors.shape}, {items.height} ids); make it again")
    own = ("format", "format_version", "count", "dim", "encoder_sha256", "replaced", "files")
    rest = {k: v for k, v in meta.items() if k not in own}
    titles = items["title"].to_list() if "title" in items.columns else None
    feats = None
    if (path / "features").is_dir():
        feats = {p.stem: np.load(p, allow_pickle=False) for p in sorted((path / "features").glob("*.npy"))}
        if any(a.ndim != 2 or a.shape[0] != meta["count"] for a in feats.values()):
            raise UserError(f"{path}/features is inconsistent with its {meta['count']} items; make it again")
    return NewItems(items["original_id"].to_numpy().astype(np.int64), vectors, meta["encoder_sha256"], titles,
                    list(meta.get("replaced", [])), rest, feats)


def encoder_id(model: CLCRec, prior: Prior = NO_PRIOR) -> str:
    """SHA-256 of the encoder's weights (and of the run's content prior, when it has one): vectors
    made by one model are meaningless to another."""
    h = hashlib.sha256()
    if prior.beta > 0:
        h.update(np.asarray(prior, dtype=np.float64).tobytes())
    for name, t in sorted(model.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def encode_features(model: CLCRec, features: list[np.ndarray], block: int = 65536, item_status=None,
                    prior: Prior = NO_PRIOR) -> np.ndarray:
    """(N, D) float32 ranking vectors of feature rows given per modality in the run's order:
    the same normalisation, concatenation, encoder and cold-row scaling as `CLCRec.tables`'s cold
    rows, with the run's content `prior` (then D = dim_E + the content width). `item_status`, the
    run's dataset's, is needed when the run rescales cold rows or has a prior."""
    x = concat_normalised_features(features)  # (N, F)
    dev = next(model.parameters()).device
    if (model.cold_vectors != "raw" or prior.beta > 0) and item_status is None:
        raise ValueError("this run rescales cold rows or has a content prior: pass the run's item_status")
    scale, shift = model.content_scale(item_status), model.cold_shift(item_status)
    out = [model.cold_rows(model.encoder(x[s : s + block].to(dev)).float(), scale, shift).cpu()
           for s in range(0, x.shape[0], block)]
    rows = torch.cat(out)  # (N, dim_E)
    if prior.share != 1.0:  # scaled about the run's cold mean row, as CLCRec.ranking_table does
        mean_row = model.cold_centre(item_status, scale, shift).cpu()
        rows = mean_row + prior.share * (rows - mean_row)
    if prior.beta > 0:  # a new item is cold: its content columns in full (with_prior's lean 1)
        rows = torch.cat([rows, F.normalize(x, dim=1) - model.content_centre(item_status).cpu()], dim=1)
    return rows.numpy()


def _spec(text: str | Path) -> tuple[FeatureSpec, bool]:
    """(spec, named): NAME=PATH / NAME=FEAT.npy:IDS, or a bare path named later by matching."""
    text = str(text)
    name, sep, _ = text.partition("=")
    if sep and name and "/" not in name:
        return parse_feature_spec(text), True
    path, sep, ids = text.rpartition(":")
    if sep and path.endswith(".npy"):
        return FeatureSpec(name=Path(path).stem, path=Path(path), ids=Path(ids)), False
    if text.endswith(".npy"):
        raise InputError(f"feature file {text!r}: a .npy feature file needs its item-id order file, FEAT.npy:IDS.txt")
    return FeatureSpec(name=Path(text).stem, path=Path(text)), False


def read_feature_files(files: list[str | Path], modalities: dict[str, int], item_col: str = "item"):
    """(ids Int64 (N,), {modality: (N, dim) float32} in the run's order) from one file per modality.

    Files are matched to the run's modalities by name (NAME=... or the file's stem), else by
    dimension; every modality needs exactly one file, each file must hold the same item ids.
    """
    if not files:
        raise InputError(f"no feature files given; the run needs one per modality: {_describe(modalities)}")
    loaded: dict[str, tuple[FeatureSpec, pl.Series, np.ndarray]] = {}
    for text in files:
        spec, named = _spec(text)
        ids, mat = read_feature(spec, item_col)
        if len(ids) == 0:
            raise InputError(f"feature file {spec.path} has no rows")
        name = spec.name
        if not named and name not in modalities:  # a bare path: the one free modality of its dimension
            fits = [m for m, d in modalities.items() if d == mat.shape[1] and m not in loaded]
            if len(fits) != 1:
                raise InputError(
                    f"feature file {spec.path}: cannot tell which modality it is ({mat.shape[1]} columns); "
                    f"name it NAME={text}, with NAME one of {_describe(modalities)}"
                )
            name = fits[0]
        if name not in modalities:
            raise InputError(f"feature file {spec.path} is for modality {name!r}, which the run does not use; "
                             f"the run's modalities are {_describe(modalities)}")
        if name in loaded:
            raise InputError(f"two feature files for modality {name!r} ({loaded[name][0].path} and "
                             f"{spec.path}); give one")
        if mat.shape[1] != modalities[name]:
            raise InputError(f"feature file {spec.path} has {mat.shape[1]} columns but the run's modality "
                             f"{name!r} has {modalities[name]}; use features built like the training ones")
        loaded[name] = (spec, ids, mat)
    missing = [m for m in modalities if m not in loaded]
    if missing:
        raise InputError(f"no feature file for modality {missing[0]!r}; the run needs one per modality: "
                         f"{_describe(modalities)}")
    first = next(iter(modalities))
    ids = loaded[first][1]
    order = pl.DataFrame({"original_id": ids})
    out = {}
    for name in modalities:
        spec, its, mat = loaded[name]
        have = pl.DataFrame({"original_id": its, "_r": np.arange(len(its), dtype=np.int64)})
        rows = order.join(have, on="original_id", how="left", maintain_order="left")["_r"]
        if rows.null_count() or len(its) != len(ids):
            odd = order.join(have, on="original_id", how="anti")["original_id"]
            odd = odd if len(odd) else have.join(order, on="original_id", how="anti")["original_id"]
            raise InputError(f"feature files {loaded[first][0].path} and {spec.path} list different items "
                             f"(e.g. item {odd[0]}); every new item needs a row in every modality's file")
        out[name] = mat[rows.to_numpy()]
    return ids, out


def check_feature_arrays(features: dict[str, np.ndarray], ids, modalities: dict[str, int]):
    """In-memory features of the API: (ids Int64, {modality: float32} in the run's order), validated
    as files are (names, dims, NaN/inf, duplicate or non-integer ids)."""
    if ids is None:
        raise InputError("embed_items(features=...) needs ids=, one original id per row")
    ids = integer_ids(pl.Series("ids", np.asarray(ids)), "ids")
    if len(ids) == 0:
        raise InputError("embed_items got no items (ids is empty)")
    if ids.is_duplicated().any():
        raise InputError(f"ids: item id {ids.filter(ids.is_duplicated())[0]} is given more than once")
    unknown = sorted(set(features) - set(modalities))
    missing = [m for m in modalities if m not in features]
    if unknown or missing:
        raise InputError(f"features must be one array per run modality, {_describe(modalities)}; "
                         f"got {sorted(features)}")
    feats = validate_features({m: features[m] for m in modalities}, len(ids), where=" (new items)")
    for m, arr in feats.items():
        if arr.shape[1] != modalities[m]:
            raise InputError(f"features[{m!r}] has {arr.shape[1]} columns but the run's modality {m!r} "
                             f"has {modalities[m]}")
    return ids, feats


def _describe(modalities: dict[str, int]) -> str:
    return ", ".join(f"{m} ({d} dims)" for m, d in modalities.items())
