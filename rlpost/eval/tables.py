"""Input tables for Benchmark² audits, and the per-item correctness export format.

Three table formats (all with a header row):

- **scores** (long): ``benchmark, model, score[, domain]`` — CSV or parquet. Scores on the
  0–1 scale. One row per (benchmark, model).
- **item correctness**: ``benchmark, model, item, correct`` — CSV, JSONL or parquet (chosen
  by file extension). ``correct`` is 0/1 or a boolean (``true``/``false`` in text files).
  One row per (benchmark, model, item). This is also what rlpost evaluation runs export
  through :func:`write_item_correctness`, so an eval suite built from rlpost's own runs
  can be audited with ``rlpost bench-quality --items``.
- **families**: ``model, family, size`` — CSV or parquet. ``size`` is a parameter count,
  either a number or text like ``7B`` / ``1.5b`` / ``350M``.

Every reader validates and raises ``ValueError`` naming the offending rows and the fix.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ITEM_COLUMNS",
    "correctness_matrix",
    "families_from_frame",
    "parse_size",
    "read_families",
    "read_item_correctness",
    "read_scores",
    "scores_from_items",
    "scores_matrix",
    "write_item_correctness",
]

ITEM_COLUMNS = ("benchmark", "model", "item", "correct")
_TEXT_COLUMNS = ("benchmark", "model", "item", "family", "domain")
_MAX_LISTED = 5


def _read_table(path: str | Path, allowed: tuple[str, ...]) -> pd.DataFrame:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ValueError(f"{path}: unsupported extension {suffix!r}; use one of {', '.join(allowed)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    # Identifier columns stay text: "007" must not become 7, nor "1.5" a float.
    text = {c: str for c in _TEXT_COLUMNS}
    if suffix == ".csv":
        df = pd.read_csv(path, dtype=text, keep_default_na=True)
    elif suffix == ".jsonl":
        df = pd.read_json(path, lines=True, dtype=text)
    else:
        df = pd.read_parquet(path)
    df.columns = [str(c).strip().lower() for c in df.columns]
    for c in _TEXT_COLUMNS:
        if c in df.columns:
            df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return df


def _require_columns(df: pd.DataFrame, required: Iterable[str], what: str, path: Any) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: {what} table is missing column(s) {missing}; expected columns "
            f"{list(required)} (got {list(df.columns)})"
        )


def _rows(df: pd.DataFrame, mask) -> str:
    """First few offending rows as 'line N: {...}' (line numbers count the header as 1)."""
    bad = df[mask].head(_MAX_LISTED)
    parts = [f"line {i + 2}: {row}" for i, row in zip(bad.index, bad.to_dict("records"))]
    more = int(np.asarray(mask).sum()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _check_no_missing(df: pd.DataFrame, cols: Iterable[str], what: str, path: Any) -> None:
    for c in cols:
        mask = df[c].isna()
        if mask.any():
            raise ValueError(
                f"{path}: {what} table has empty '{c}' values ({_rows(df, mask)}); fill them in or drop those rows"
            )


def _check_unique(df: pd.DataFrame, keys: list[str], what: str, path: Any) -> None:
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        raise ValueError(
            f"{path}: {what} table has duplicate ({', '.join(keys)}) rows ({_rows(df, dup)}); "
            "keep exactly one row per key"
        )


# --------------------------------------------------------------------------- scores


def _validate_scores(df: pd.DataFrame, path: Any) -> pd.DataFrame:
    _require_columns(df, ("benchmark", "model", "score"), "scores", path)
    _check_no_missing(df, ("benchmark", "model"), "scores", path)
    score = pd.to_numeric(df["score"], errors="coerce")
    bad = score.isna()
    if bad.any():
        raise ValueError(
            f"{path}: scores table has NaN or non-numeric scores ({_rows(df, bad)}); "
            "every (benchmark, model) needs a score"
        )
    df = df.assign(score=score.astype(float))
    out = (df["score"] < 0) | (df["score"] > 1)
    if out.any():
        raise ValueError(
            f"{path}: scores must be on the 0–1 scale ({_rows(df, out)}); divide percentages by 100"
        )
    _check_unique(df, ["benchmark", "model"], "scores", path)
    if "domain" in df.columns:
        _check_no_missing(df, ("domain",), "scores", path)
        per = df.groupby("benchmark")["domain"].nunique()
        if (per > 1).any():
            raise ValueError(
                f"{path}: benchmark(s) {per[per > 1].index.tolist()} have more than one domain; "
                "give each benchmark a single domain"
            )
    counts = df.groupby("benchmark")["model"].nunique()
    few = counts[counts < 2]
    if len(few):
        raise ValueError(
            f"{path}: benchmark(s) {few.index.tolist()} have fewer than 2 models; Benchmark² "
            "metrics compare models, so add scores for at least 2 models or drop the benchmark"
        )
    return df.reset_index(drop=True)


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read and validate a long scores table ``benchmark, model, score[, domain]`` (.csv/.parquet)."""
    return _validate_scores(_read_table(path, (".csv", ".parquet")), path)


def scores_matrix(long: pd.DataFrame, source: Any = "scores") -> tuple[pd.DataFrame, pd.Series]:
    """Pivot a validated long scores table into (benchmark×model matrix, domain per benchmark).

    Rows keep the first-appearance order of benchmarks, columns that of models. Domains are
    "all" when the table has no ``domain`` column.

    Raises:
        ValueError: a model is scored on some benchmarks but not others (CBRC compares
            rankings of the same models), naming the missing cells.
    """
    benches = pd.unique(long["benchmark"]).tolist()
    models = pd.unique(long["model"]).tolist()
    mat = long.pivot(index="benchmark", columns="model", values="score").reindex(index=benches, columns=models)
    if mat.isna().any().any():
        cells = [(b, m) for b in benches for m in models if pd.isna(mat.at[b, m])][:_MAX_LISTED]
        raise ValueError(
            f"{source}: missing scores for (benchmark, model) {cells}; every model must be scored on "
            "every benchmark to compare rankings — add the scores or drop the model"
        )
    if "domain" in long.columns:
        domains = long.drop_duplicates("benchmark").set_index("benchmark")["domain"].reindex(benches)
    else:
        domains = pd.Series("all", index=benches)
    mat.columns.name = None
    mat.index.name = "benchmark"
    return mat, domains.rename("domain")


# --------------------------------------------------------------------------- item correctness

_TRUE = {"1", "1.0", "true", "t", "yes"}
_FALSE = {"0", "0.0", "false", "f", "no"}


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and v in (0, 1):
        return bool(v)
    if isinstance(v, (float, np.floating)) and v in (0.0, 1.0):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    return None


def _validate_items(df: pd.DataFrame, path: Any) -> pd.DataFrame:
    _require_columns(df, ITEM_COLUMNS, "item correctness", path)
    _check_no_missing(df, ("benchmark", "model", "item"), "item correctness", path)
    col = df["correct"]
    if pd.api.types.is_bool_dtype(col) and not col.isna().any():
        conv = col
    elif pd.api.types.is_integer_dtype(col) and not col.isna().any():
        # Fast path for the common 0/1 column: out-of-range values become NaN -> reported below.
        conv = col.where(col.isin([0, 1])).map({0: False, 1: True})
    else:
        conv = col.map(_to_bool)
    bad = conv.isna()
    if bad.any():
        raise ValueError(
            f"{path}: 'correct' must be 0/1 or true/false ({_rows(df, bad)}); "
            "score each answer as right (1) or wrong (0), counting unanswered items as 0"
        )
    df = df.assign(correct=conv.astype(bool))
    _check_unique(df, ["benchmark", "model", "item"], "item correctness", path)
    return df[list(ITEM_COLUMNS) + [c for c in df.columns if c not in ITEM_COLUMNS]].reset_index(drop=True)


def read_item_correctness(path: str | Path) -> pd.DataFrame:
    """Read and validate a per-item correctness table (.csv, .jsonl or .parquet).

    Returns a DataFrame with columns ``benchmark, model, item`` (str) and ``correct`` (bool),
    plus any extra columns the file had.
    """
    return _validate_items(_read_table(path, (".csv", ".jsonl", ".parquet")), path)


def write_item_correctness(
    records: Iterable[tuple[str, str, str, Any]] | Iterable[Mapping[str, Any]] | pd.DataFrame,
    path: str | Path,
) -> Path:
    """Write per-item correctness rows ``(benchmark, model, item, correct)`` to CSV or JSONL.

    The format is chosen by the extension of ``path`` (``.csv`` or ``.jsonl``); parent
    directories are created. Rows are validated exactly as :func:`read_item_correctness`
    does (``correct`` 0/1/bool; no duplicate (benchmark, model, item)), so a file written
    here always reads back. ``correct`` is written as 0/1 in CSV and true/false in JSONL.

    Args:
        records: tuples in ``ITEM_COLUMNS`` order, dicts with those keys, or a DataFrame.
        path: output file.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"{path}: write_item_correctness writes .csv or .jsonl; got {suffix!r}")
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        rows = list(records)
        if rows and isinstance(rows[0], Mapping):
            df = pd.DataFrame(rows)
        else:
            bad = [r for r in rows if len(r) != len(ITEM_COLUMNS)]
            if bad:
                raise ValueError(f"records must be (benchmark, model, item, correct) tuples; got {bad[:_MAX_LISTED]}")
            df = pd.DataFrame(rows, columns=list(ITEM_COLUMNS))
    if df.empty:
        raise ValueError("write_item_correctness got no records; nothing to write")
    for c in ("benchmark", "model", "item"):
        if c in df.columns:
            df[c] = df[c].map(lambda v: None if v is None else str(v))
    df = _validate_items(df, f"records for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        df.assign(correct=df["correct"].astype(int)).to_csv(path, index=False)
    else:
        with path.open("w", encoding="utf-8") as fh:
            for rec in df.to_dict("records"):
                fh.write(json.dumps({k: (bool(v) if k == "correct" else v) for k, v in rec.items()}) + "\n")
    return path


def correctness_matrix(items: pd.DataFrame, benchmark: str | None = None) -> pd.DataFrame:
    """Item×model bool matrix for one benchmark of a validated item table.

    Rows keep the items' first-appearance order, columns the models'. ``benchmark`` may be
    omitted when the table holds a single benchmark.

    Raises:
        ValueError: some model has no row for some item (every model must answer every item;
            count unanswered items as wrong), or the benchmark has fewer than 2 models.
    """
    names = pd.unique(items["benchmark"]).tolist()
    if benchmark is None:
        if len(names) != 1:
            raise ValueError(f"the item table holds benchmarks {names}; pass benchmark= to pick one")
        benchmark = names[0]
    sub = items[items["benchmark"] == benchmark]
    if sub.empty:
        raise ValueError(f"benchmark {benchmark!r} is not in the item table (has {names})")
    item_ids = pd.unique(sub["item"]).tolist()
    models = pd.unique(sub["model"]).tolist()
    if len(models) < 2:
        raise ValueError(
            f"benchmark {benchmark!r} has fewer than 2 models ({models}); add per-item results for another model"
        )
    mat = sub.pivot(index="item", columns="model", values="correct").reindex(index=item_ids, columns=models)
    if mat.isna().any().any():
        holes = mat.isna()
        cells = [(m, i) for i in item_ids for m in models if holes.at[i, m]][:_MAX_LISTED]
        raise ValueError(
            f"benchmark {benchmark!r}: {int(holes.to_numpy().sum())} (model, item) result(s) missing, "
            f"e.g. {cells}; every model must have a row for every item (write unanswered items as correct=0)"
        )
    mat = mat.astype(bool)
    mat.columns.name = None
    mat.index.name = "item"
    return mat


def scores_from_items(items: pd.DataFrame) -> pd.DataFrame:
    """Long scores table (benchmark, model, score) of per-model accuracy per benchmark."""
    acc = items.groupby(["benchmark", "model"], sort=False)["correct"].mean().rename("score").reset_index()
    return _validate_scores(acc, "item correctness")


# --------------------------------------------------------------------------- families

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_UNIT = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_size(v: Any) -> float:
    """Parameter count from a number or text like ``7B``, ``1.5b``, ``350M`` (unit-less = as given)."""
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"model size must be a positive number; got {v!r}")
        return float(v)
    m = _SIZE.match(str(v))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"cannot read model size {v!r}; write a positive number or e.g. '7B', '1.5B', '350M'")
    return float(m.group(1)) * _UNIT[m.group(2).lower()]


def families_from_frame(df: pd.DataFrame, source: Any = "families") -> dict[str, tuple[str, float]]:
    """Validate a ``model, family, size`` frame into ``{model: (family, size)}``."""
    _require_columns(df, ("model", "family", "size"), "families", source)
    _check_no_missing(df, ("model", "family", "size"), "families", source)
    _check_unique(df, ["model"], "families", source)
    out = {}
    for line, row in zip(df.index, df.to_dict("records")):
        try:
            size = parse_size(row["size"])
        except ValueError as e:
            raise ValueError(f"{source}: line {line + 2}: {e}") from None
        out[str(row["model"])] = (str(row["family"]), size)
    return out


def read_families(path: str | Path) -> dict[str, tuple[str, float]]:
    """Read a family/size table ``model, family, size`` (.csv/.parquet) -> ``{model: (family, size)}``."""
    df = _read_table(path, (".csv", ".parquet"))
    if "size" in df.columns and df["size"].dtype == object:
        df["size"] = df["size"].map(lambda v: v.strip() if isinstance(v, str) else v)
    return families_from_frame(df, path)
