"""Calibration, the one owner: for each role, the fastest measured operating point whose quality drop on the
calibration data stays within a budget, and the reference a monitor needs to watch it in production.

:func:`calibrate` (exported as ``st_leap.calibrate``) takes STS-B (the default, scored pairs like any other) or the
user's data (:mod:`st_leap.evaluation.user_data`): scored pairs, a BEIR folder or unlabeled texts. It sweeps
adaptive exit (each ``exit_threshold``), static depths (each ``truncate_layers``) and, when the model carries exit
maps, each of them with and without the maps; ranks the points within the budget by layer reduction; times the
best few against full depth on a sample of the data's own texts
(:func:`st_leap.diagnostics.time_encode`) and picks the one measured fastest. For each role it records a
:class:`~st_leap.monitoring.RoleReference` (the exit-layer distribution at the pick and up to 1,000 texts with
their full-depth embeddings), which :func:`save_calibrated` saves beside the model for
:class:`~st_leap.monitoring.ExitMonitor`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st_leap.evaluation.user_data import RetrievalData, ScoredPairs, Texts, as_user_data
from st_leap.exit_policy import PAPER_THRESHOLDS, ROLES, ExitStats

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["calibrate", "save_calibrated", "calibration_markdown", "has_exit_maps", "ndcg_at_k", "measured_speedup"]

_TASKS = {"query": "query", "document": "document", "default": None, "all": None}


def has_exit_maps(model: Any) -> bool:
    """Whether the model carries an ``ExitMaps`` module (``encode(..., exit_maps=False)`` bypasses it)."""
    return any(type(module).__name__ == "ExitMaps" for module in model)


def ndcg_at_k(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: dict[str, dict[str, int]],
    k: int = 10,
) -> float:
    """Mean NDCG@k (x100) of cosine retrieval over the whole corpus, with trec_eval's linear gain (the relevance
    itself) and log2 discount, as BEIR reports it. Ties in score go to the earlier document."""
    q = query_embeddings / np.clip(np.linalg.norm(query_embeddings, axis=1, keepdims=True), 1e-12, None)
    d = doc_embeddings / np.clip(np.linalg.norm(doc_embeddings, axis=1, keepdims=True), 1e-12, None)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for start in range(0, len(query_ids), 256):
        scores = q[start : start + 256] @ d.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        for row, qid in enumerate(query_ids[start : start + 256]):
            judged = qrels.get(qid, {})
            gains = np.array([judged.get(doc_ids[j], 0) for j in top[row]], dtype=np.float64)
            dcg = float((np.maximum(gains, 0) * discount[: len(gains)]).sum())
            ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:k]
            idcg = float((np.asarray(ideal, dtype=np.float64) * discount[: len(ideal)]).sum())
            total += dcg / idcg if idcg > 0 else 0.0
    return 100.0 * total / max(len(query_ids), 1)


def _label(row: dict[str, Any]) -> str:
    truncate, theta = row.get("truncate_layers"), row.get("theta")
    label = (
        "full"
        if theta is None and truncate is None
        else (f"static L{truncate}" if theta is None else f"theta={theta:g}")
    )
    if theta is not None and truncate is not None:
        label += f" <= L{truncate}"
    if row.get("exit_maps") is False:
        label += " (no maps)"
    elif row.get("exit_maps") is True and label != "full":
        label += " (maps)"
    return label


class _RoleMeasure:
    """Quality of one role's embeddings under a setting, for one kind of data."""

    def __init__(
        self, model: SentenceTransformer, data: Any, role: str, encode: Any, encode_documents: Any = None
    ) -> None:
        self.data, self.role, self.encode = data, role, encode
        self.task = _TASKS[role]
        if isinstance(data, ScoredPairs):
            self.texts = data.texts()
            self.index = {s: i for i, s in enumerate(self.texts)}
            self.metric = "spearman"
        elif isinstance(data, Texts):
            self.texts = data.texts
            self.metric = "agreement"
        else:
            self.query_ids = list(data.queries)
            self.doc_ids = list(data.corpus)
            self.metric = "ndcg@10"
            if role == "query":
                self.texts = [data.queries[q] for q in self.query_ids]
                documents = [data.corpus[d] for d in self.doc_ids]
                if encode_documents is not None:  # the index model of a query encoder for a kept index
                    self.other = encode_documents(documents)
                else:
                    self.other = encode(documents, "document", {})[0]
            else:
                self.texts = [data.corpus[d] for d in self.doc_ids]
                self.other = encode([data.queries[q] for q in self.query_ids], "query", {})[0]
        self.full: np.ndarray | None = None

    def score(self, embeddings: np.ndarray, nn_k: int) -> dict[str, float]:
        from st_leap.evaluation.consistency import nn_overlap
        from st_leap.evaluation.sweep import pairs_spearman

        if isinstance(self.data, ScoredPairs):
            value = pairs_spearman(
                embeddings, self.index, self.data.sentences1, self.data.sentences2, self.data.scores
            )
            return {"quality": value, "spearman": value}
        if isinstance(self.data, Texts):
            if self.full is None:
                return {"quality": 100.0, "mean_cosine": 100.0, "nn_at_k": 100.0}
            a = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
            b = self.full / np.clip(np.linalg.norm(self.full, axis=1, keepdims=True), 1e-12, None)
            cosine = 100.0 * float((a * b).sum(axis=1).mean())
            overlap = 100.0 * float(nn_overlap(self.full, embeddings, k=min(nn_k, len(self.texts) - 1)).mean())
            return {"quality": min(cosine, overlap), "mean_cosine": cosine, "nn_at_k": overlap}
        if self.role == "query":
            value = ndcg_at_k(embeddings, self.other, self.query_ids, self.doc_ids, self.data.qrels)
        else:
            value = ndcg_at_k(self.other, embeddings, self.query_ids, self.doc_ids, self.data.qrels)
        return {"quality": value, "ndcg@10": value}


def calibrate(
    model: SentenceTransformer | str,
    data: Any = None,
    max_quality_drop: float = 0.5,
    *,
    thresholds: Sequence[float] = PAPER_THRESHOLDS,
    static_depths: Sequence[int] | str = "all",
    role: str = "all",
    split: str | None = None,
    exit_patience: int | Any = None,
    exit_min_layer: int | None | Any = None,
    batch_size: int = 32,
    nn_k: int = 10,
    time_sample: int = 256,
    repeats: int = 3,
    timed_candidates: int = 3,
    reference_size: int = 1000,
    save_model: str | Path | None = None,
    show_progress_bar: bool = True,
) -> dict[str, Any]:
    """Pick, for each role, the fastest measured operating point whose quality drop on ``data`` stays within
    ``max_quality_drop`` points (x100), among adaptive exit thresholds, static depths and (when the model carries
    ``ExitMaps``) both with and without the maps.

    The data is read and checked before the model loads, so a malformed file fails at once with its file and line.
    What is measured depends on the data:

    - :class:`~st_leap.evaluation.user_data.ScoredPairs` (``{"pairs": path}``): cosine Spearman x100 of the pairs.
      STS-B (``data=None`` or ``"stsb"``, split ``dev`` by default) is read as scored pairs
      (:func:`~st_leap.evaluation.user_data.read_stsb`) and measured the same way.
    - :class:`~st_leap.evaluation.user_data.RetrievalData` (``{"beir": folder, "split": "test"}``): NDCG@10 x100,
      per role: queries through ``encode_query`` against the documents at full depth, and documents through
      ``encode_document`` against the queries at full depth.
    - :class:`~st_leap.evaluation.user_data.Texts` (``{"texts": path}`` or a list of texts): agreement with full
      depth, the smaller of the mean cosine to each text's full-depth embedding and the NN@``nn_k`` overlap
      (both x100, 100 at full depth).

    Within the budget the points are ranked by layer reduction ``L / E[layers]``; the first ``timed_candidates``
    are timed against full depth with :func:`st_leap.diagnostics.time_encode` (interleaved rounds) on up to
    ``time_sample`` of the role's texts, and the measured fastest is picked. A point measured no faster than full
    depth is never picked: full depth is returned instead.

    A query encoder for a kept index (a ``Router`` model, :func:`st_leap.model.router_of`) is calibrated on its
    query route, the part that can exit, in the ``"query"`` role: with a BEIR folder its queries at each point are
    scored against the documents as the index model encodes them (``encode_document``, as served), with texts
    against the query route at its own full depth. Every point keeps the route's exit maps (they carry it into the
    index model's space). Scored pairs and the ``"document"`` / ``"default"`` roles are refused for it (documents
    run the index model, unchanged), and ``save_model`` saves the whole model with the query route's pick.

    Each role's entry also holds ``reference``, a :class:`~st_leap.monitoring.RoleReference` measured at the pick
    on up to ``reference_size`` of the role's texts: the exit-layer histogram (E[layers], exit rate), the texts with
    their full-depth embeddings and the NN@``nn_k`` overlap and cosine at the pick. It is what
    :class:`~st_leap.monitoring.ExitMonitor` compares traffic with (``ExitMonitor(model, reference=result)``);
    ``save_model`` saves it beside the model. Result files record its summary.

    Args:
        model: st_leap model, path or Hub id.
        data: What to calibrate on (see above).
        max_quality_drop: Largest acceptable quality drop vs full depth, in points (x100).
        thresholds: Candidate thetas.
        static_depths: ``"all"`` (1..L-1), a list of depths, or ``()`` for thresholds only.
        role: ``"all"``, ``"query"``, ``"document"`` or ``"default"``. Pairs and texts are encoded in this role
            (``"all"``: plain ``encode``) and the pick is saved for it; a BEIR folder calibrates queries and
            documents (``"all"``) or one of them.
        split: The STS-B split (default ``dev``) or the qrels split of a BEIR folder given as a path (default
            ``test``).
        exit_patience: k of the exit rule (``None``: the model's).
        exit_min_layer: l_min of the exit rule (``None``: the model's).
        batch_size: Encode batch size.
        nn_k: k of the NN@k agreement (texts).
        time_sample: Texts timed per role.
        repeats: Timed rounds (the median is used).
        timed_candidates: How many of the best points (by layer reduction) are timed.
        reference_size: Texts kept per role in the monitoring reference (``0``: no reference).
        save_model: A folder to save the model to with each role's pick as its default (and the monitoring
            references in its ``st_leap_monitor/``).
        show_progress_bar: Show progress bars.

    Returns:
        ``{"data": {...}, "max_quality_drop", "roles": {role: {"metric", "full", "rows", "picked", "reason",
        "timing": {...}}}, ...}``; each row holds ``kind``, ``theta``, ``truncate_layers``, ``exit_maps``,
        ``quality`` (and the metric's own fields), ``delta``, ``expected_layers``, ``layer_reduction``,
        ``exit_rate``, ``distribution`` and, when timed, ``measured_speedup`` (median ratio of full-depth time to
        its time) and ``speedup_band`` (25th-75th percentile). ``picked`` always holds ``measured_speedup`` (1.0
        for full depth).

    Example:
        ::

            import st_leap

            cal = st_leap.calibrate(model, max_quality_drop=0.5)                 # STS-B dev
            cal = st_leap.calibrate(model, {"texts": "queries.txt"}, 1.0, role="query", save_model="calibrated")
            cal["roles"]["query"]["picked"]["label"], cal["roles"]["query"]["reason"]
            cal["roles"]["query"]["reference"].expected_layers
    """
    if not isinstance(max_quality_drop, int | float) or not math.isfinite(max_quality_drop) or max_quality_drop < 0:
        raise ValueError(f"max_quality_drop must be a finite number >= 0 (points x100), got {max_quality_drop!r}")
    if role not in ("all", *ROLES):
        raise ValueError(f"role must be 'all' or one of {list(ROLES)}, got {role!r}")
    if isinstance(reference_size, bool) or not isinstance(reference_size, int) or reference_size < 0:
        raise ValueError(f"reference_size must be an int >= 0, got {reference_size!r}")
    parsed = as_user_data(data, split=split)  # read and checked before any model loads
    from st_leap.model import MODEL_DEFAULT, describe_routes, load_model, require_torch_encoder

    overrides = {
        "exit_patience": MODEL_DEFAULT if exit_patience is None else exit_patience,
        "exit_min_layer": MODEL_DEFAULT if exit_min_layer is None else exit_min_layer,
    }
    if isinstance(parsed, RetrievalData):
        if role == "default":
            raise ValueError(
                "a BEIR folder calibrates the 'query' and 'document' roles (role 'all', 'query' or 'document')"
            )
        roles = ["query", "document"] if role == "all" else [role]
    else:
        roles = [role]
    st_model = load_model(model, allow_router=True)
    require_torch_encoder(st_model, "calibrate")
    encoder, encode_documents = st_model, None
    routes = describe_routes(st_model)
    if routes is not None:
        encoder, roles = _query_route(st_model, parsed, role)
        if isinstance(parsed, RetrievalData):

            def encode_documents(texts: list[str]) -> np.ndarray:
                return st_model.encode_document(
                    texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True
                )

    result = _calibrate_roles(
        encoder,
        parsed,
        roles,
        max_quality_drop,
        thresholds,
        static_depths,
        overrides,
        batch_size,
        nn_k,
        time_sample,
        repeats,
        timed_candidates,
        reference_size,
        show_progress_bar,
        compare_maps=routes is None,
        encode_documents=encode_documents,
    )
    if routes is not None:
        result["calibrated"] = "the query route of a query encoder for a kept index (role 'query')"
        result["routes"] = routes
    result["model"] = _model_name(st_model, model)
    if save_model is not None:
        result["saved"] = save_calibrated(st_model, result, save_model)
    return result


def _query_route(model: SentenceTransformer, data: Any, role: str) -> tuple[SentenceTransformer, list[str]]:
    """The query route of a query encoder for a kept index and the roles to calibrate it in (``["query"]``), or a
    ``ValueError`` that says what to pass instead."""
    from st_leap.backends import query_side

    if role not in ("all", "query"):
        raise ValueError(
            f"this is a query encoder for a kept index: its {role!r} texts run the index model, unchanged, which is "
            "not calibrated here. Calibrate its query route (role 'query' or 'all'), or the index model itself"
        )
    if isinstance(data, ScoredPairs):
        raise ValueError(
            "this is a query encoder for a kept index: scored pairs (STS-B by default) do not measure its query "
            "route against the index. Calibrate on a BEIR folder of your queries and documents ({'beir': folder}, "
            "st-leap calibrate --beir) or on query texts ({'texts': path}, st-leap calibrate --texts)"
        )
    return query_side(model), ["query"]


def _model_name(model: SentenceTransformer, given: Any) -> str:
    from st_leap.model import model_name

    return model_name(model, given if isinstance(given, str) else None)


def _calibrate_roles(
    model: SentenceTransformer,
    data: Any,
    roles: list[str],
    max_quality_drop: float,
    thresholds: Sequence[float],
    static_depths: Sequence[int] | str,
    overrides: dict[str, Any],
    batch_size: int,
    nn_k: int,
    time_sample: int,
    repeats: int,
    timed_candidates: int,
    reference_size: int,
    show_progress_bar: bool,
    compare_maps: bool = True,
    encode_documents: Any = None,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from st_leap.model import effective_exit_settings, encode_with_exits, exit_kwargs, num_layers
    from st_leap.monitoring import build_reference
    from st_leap.reporting import run_info

    depth = int(num_layers(model) or 0)
    depths = list(range(1, depth)) if static_depths == "all" else [int(n) for n in static_depths]
    bad = [n for n in depths if not 1 <= n <= depth]
    if bad:
        raise ValueError(f"static_depths must be ints in [1, {depth}], got {bad}")
    maps = has_exit_maps(model)
    base = exit_kwargs(exit_patience=overrides["exit_patience"], exit_min_layer=overrides["exit_min_layer"])

    def encode(texts: list[str], role: str, setting: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        kwargs = {"exit_threshold": None, "truncate_layers": None, **base, **setting}
        out = encode_with_exits(
            model, texts, task=_TASKS[role], batch_size=batch_size, show_progress_bar=False, **kwargs
        )
        return out.embeddings, out.exit_layers

    points: list[dict[str, Any]] = []
    for use_maps in [True, False] if maps and compare_maps else [None]:
        extra = {} if use_maps is None else {"exit_maps": use_maps}
        points += [{"exit_threshold": t, **extra} for t in dict.fromkeys(float(t) for t in thresholds)]
        points += [{"truncate_layers": int(n), **extra} for n in depths]

    per_role: dict[str, Any] = {}
    for role in roles:
        measure = _RoleMeasure(model, data, role, encode, encode_documents)
        progress = tqdm(total=len(points) + 1, desc=f"calibrating the {role} role", disable=not show_progress_bar)

        def row_for(
            setting: dict[str, Any], measure: _RoleMeasure = measure, role: str = role, progress: Any = progress
        ) -> tuple[dict[str, Any], np.ndarray]:
            emb, layers = encode(measure.texts, role, setting)
            stats = ExitStats.from_exit_layers(layers, depth).to_dict()
            theta, truncate = setting.get("exit_threshold"), setting.get("truncate_layers")
            row = {
                "kind": "full" if theta is None and truncate is None else ("static" if theta is None else "adaptive"),
                "theta": theta,
                "truncate_layers": truncate,
                "exit_maps": setting.get("exit_maps", True) if maps else None,
                **measure.score(emb, nn_k),
                "expected_layers": stats["expected_layers"],
                "layer_reduction": depth / stats["expected_layers"],
                "exit_rate": stats["exit_rate"],
                "distribution": stats["counts"],
                "measured_speedup": None,
            }
            progress.update(1)
            return row, emb

        full, measure.full = row_for({})
        full.update(delta=0.0, measured_speedup=1.0, speedup_band=[1.0, 1.0], label="full")
        rows = []
        for setting in points:
            row, _ = row_for(setting)
            row["delta"] = row["quality"] - full["quality"]
            row["label"] = _label(row)
            rows.append(row)
        progress.close()
        ok = [r for r in rows if -r["delta"] <= max_quality_drop + 1e-9 and r["layer_reduction"] > 1.0 + 1e-9]
        ok.sort(key=lambda r: (-r["layer_reduction"], -r["delta"]))
        timed = ok[:timed_candidates]
        timing = _time_rows(model, measure.texts, role, full, timed, base, batch_size, time_sample, repeats)
        faster = [r for r in timed if r["measured_speedup"] is not None and r["measured_speedup"] > 1.0]
        rejected = [r for r in rows if -r["delta"] > max_quality_drop + 1e-9]
        dropped = ", ".join(f"{r['label']} (drop {-r['delta']:.2f})" for r in rejected[:6])
        more = f" and {len(rejected) - 6} more" if len(rejected) > 6 else ""
        why_not = f"; over the budget: {dropped}{more}" if rejected else ""
        if faster:
            picked = max(faster, key=lambda r: (r["measured_speedup"], r["layer_reduction"]))
            band = picked["speedup_band"]
            reason = (
                f"{picked['label']}: measured fastest ({picked['measured_speedup']:.2f}x full depth, band "
                f"{band[0]:.2f}-{band[1]:.2f}x, layer reduction {picked['layer_reduction']:.2f}x) among the "
                f"{len(timed)} timed point(s) losing at most {max_quality_drop:g} points (drop {-picked['delta']:.2f}: "
                f"{picked['quality']:.2f} vs {full['quality']:.2f}){why_not}"
            )
        elif timed:
            picked = full
            reason = (
                f"full depth: no point within {max_quality_drop:g} points was measured faster than full depth{why_not}"
            )
        else:
            picked = full
            reason = f"full depth: no point saving layers loses at most {max_quality_drop:g} points{why_not}"
        settings = effective_exit_settings(model, base, _TASKS[role])
        reference = None
        if reference_size:
            reference = build_reference(
                model,
                measure.texts,
                task=_TASKS[role],
                role=role,
                max_texts=reference_size,
                nn_k=nn_k,
                batch_size=batch_size,
                full_embeddings=measure.full,
                **base,
                **_setting(picked),
            )
        per_role[role] = {
            "task": _TASKS[role],
            "metric": measure.metric,
            "num_texts": len(measure.texts),
            "exit_patience": settings["exit_patience"],
            "exit_min_layer": settings["exit_min_layer"],
            "full": full,
            "rows": rows,
            "within_budget": [r["label"] for r in ok],
            "picked": picked,
            "reason": reason,
            "timing": timing,
            "reference": reference,
        }
    result: dict[str, Any] = {
        "measured": _measured_text(data, nn_k, index_documents=encode_documents is not None),
        "data": {"kind": data.kind, "source": data.source, **_data_sizes(data)},
        "num_layers": depth,
        "exit_maps": maps,
        "maps_compared": bool(maps and compare_maps),
        "max_quality_drop": max_quality_drop,
        "thresholds": [float(t) for t in thresholds],
        "static_depths": depths,
        "roles": per_role,
        "run_info": run_info(batch_size=batch_size),
    }
    if isinstance(data, RetrievalData) and len(roles) == 2:
        result["combined"] = _combined(model, data, per_role, encode)
    return result


def _setting(row: dict[str, Any]) -> dict[str, Any]:
    setting = {"exit_threshold": row["theta"], "truncate_layers": row["truncate_layers"]}
    if row.get("exit_maps") is not None:
        setting["exit_maps"] = row["exit_maps"]
    return setting


def _time_rows(
    model: SentenceTransformer,
    texts: list[str],
    role: str,
    full: dict[str, Any],
    rows: list[dict[str, Any]],
    base: dict[str, Any],
    batch_size: int,
    time_sample: int,
    repeats: int,
) -> dict[str, Any]:
    """Time full depth and ``rows`` with :func:`st_leap.diagnostics.time_encode` on a sample of ``texts`` and write
    each row's measured speed-up into it."""
    from st_leap.diagnostics import time_encode

    sample = list(texts) if len(texts) <= time_sample else random.Random(0).sample(list(texts), time_sample)
    call: dict[str, Any] = dict(base)
    task = _TASKS[role]
    if task is not None:
        call["task"] = task
        if task in getattr(model, "prompts", {}):
            call["prompt_name"] = task
    info = {
        "num_texts": len(sample),
        "repeats": repeats,
        "batch_size": batch_size,
        "timed": [r["label"] for r in rows],
    }
    if not rows:
        return info
    settings = {"full": {**call, **_setting(full)}}
    settings.update({row["label"]: {**call, **_setting(row)} for row in rows})
    timed = time_encode(model, sample, settings, batch_size=batch_size, repeats=repeats, show_progress_bar=False)
    info["full_seconds_median"] = timed["full"]["seconds_median"]
    for row in rows:
        entry = timed[row["label"]]
        row["measured_speedup"] = entry["speedup"]
        row["speedup_band"] = entry["speedup_band"]
        row["seconds_median"] = entry["seconds_median"]
    return info


def measured_speedup(
    model: SentenceTransformer,
    texts: Sequence[str],
    row: dict[str, Any],
    *,
    role: str = "default",
    batch_size: int = 32,
    time_sample: int = 256,
    repeats: int = 3,
    **exit_settings: Any,
) -> dict[str, Any]:
    """Time one operating point (a row with ``theta`` and ``truncate_layers``, as :func:`calibrate` and
    :func:`st_leap.evaluation.sweep.sweep` return them) against full depth on up to ``time_sample`` of ``texts``
    with :func:`st_leap.diagnostics.time_encode`: ``{"measured_speedup", "speedup_band", "num_texts", "repeats"}``
    (1.0 for full depth, which is not timed)."""
    if row.get("theta") is None and row.get("truncate_layers") is None and row.get("exit_maps") is not False:
        return {"measured_speedup": 1.0, "speedup_band": [1.0, 1.0], "num_texts": 0, "repeats": 0}
    timed = {**row, "label": row.get("label") or _label(row)}
    full = {"theta": None, "truncate_layers": None, "exit_maps": row.get("exit_maps"), "label": "full"}
    info = _time_rows(model, list(texts), role, full, [timed], dict(exit_settings), batch_size, time_sample, repeats)
    return {
        "measured_speedup": timed["measured_speedup"],
        "speedup_band": timed["speedup_band"],
        "num_texts": info["num_texts"],
        "repeats": repeats,
    }


def _combined(
    model: SentenceTransformer, data: RetrievalData, per_role: dict[str, Any], encode: Any
) -> dict[str, Any]:
    """NDCG@10 with both roles at their picks (the drops of the two roles can add up)."""
    query_ids, doc_ids = list(data.queries), list(data.corpus)
    q, _ = encode([data.queries[i] for i in query_ids], "query", _setting(per_role["query"]["picked"]))
    d, _ = encode([data.corpus[i] for i in doc_ids], "document", _setting(per_role["document"]["picked"]))
    value = ndcg_at_k(q, d, query_ids, doc_ids, data.qrels)
    full = per_role["query"]["full"]["quality"]
    return {"ndcg@10": value, "full_depth": full, "delta": value - full}


def _data_sizes(data: Any) -> dict[str, int]:
    if isinstance(data, ScoredPairs):
        return {"num_pairs": len(data.scores), "num_sentences": len(data.texts())}
    if isinstance(data, Texts):
        return {"num_texts": len(data.texts)}
    return {"num_queries": len(data.queries), "num_documents": len(data.corpus)}


def _measured_text(data: Any, nn_k: int, index_documents: bool = False) -> str:
    if isinstance(data, ScoredPairs):
        what = "cosine Spearman x100 of the scored pairs"
    elif isinstance(data, Texts):
        what = f"agreement with full depth x100: the smaller of the mean cosine and the NN@{nn_k} overlap"
    elif index_documents:
        what = "NDCG@10 x100 (queries via encode_query against the documents as the index model encodes them)"
    else:
        what = "NDCG@10 x100 (queries via encode_query against documents at full depth, and the reverse)"
    return (
        f"calibration on {data.source}: {what}, per exit threshold and static depth, against full depth; the best "
        "points within the budget timed against full depth (time_encode, interleaved rounds) on a sample of the texts"
    )


def save_calibrated(model: SentenceTransformer, result: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Save ``model`` to ``path`` with each calibrated role's pick as its default (``exit_threshold`` or
    ``truncate_layers``, with the exit settings it was measured with); the other roles keep the model's settings.

    A pick measured without the exit maps can only be kept by removing the maps from the saved model: that is done
    when every saved pick is without them; otherwise the maps stay and ``notes`` says which pick runs with them.
    Each role's monitoring reference (``reference`` of its entry, see :func:`calibrate`) is saved in the folder's
    ``st_leap_monitor/`` (replacing what was there), so that
    ``st_leap.ExitMonitor(st_leap.load(path), reference=path)`` watches the loaded model. The model is changed
    in place.

    For a query encoder for a kept index (a ``Router`` model), the picks go to its query route and the whole model
    is saved (the index model unchanged); its monitor watches the query route,
    ``ExitMonitor(query_side(st_leap.load(path)), reference=path)``.
    """
    from st_leap import reporting
    from st_leap.backends import query_side
    from st_leap.exit_policy import with_role
    from st_leap.model import as_early_exit, router_of
    from st_leap.monitoring import RoleReference, save_references

    router = router_of(model) is not None
    saved_model, model = model, query_side(model)  # the query route's modules are the Router's own, not copies
    module = model[0]
    threshold, truncate = module.exit_threshold, module.truncate_layers
    patience, min_layer = module.exit_patience, module.exit_min_layer
    for role, entry in result["roles"].items():
        picked = entry["picked"]
        threshold = with_role(threshold, role, picked["theta"])
        truncate = with_role(truncate, role, picked["truncate_layers"])
        patience = with_role(patience, role, entry["exit_patience"])
        min_layer = with_role(min_layer, role, entry["exit_min_layer"])
    as_early_exit(
        model, exit_threshold=threshold, truncate_layers=truncate, exit_patience=patience, exit_min_layer=min_layer
    )
    notes = []
    without_maps = [role for role, entry in result["roles"].items() if entry["picked"].get("exit_maps") is False]
    if without_maps and router:
        raise ValueError("the query route of a query encoder for a kept index keeps its exit maps")
    if without_maps and len(without_maps) == len(result["roles"]):
        for name in [name for name, m in model._modules.items() if type(m).__name__ == "ExitMaps"]:
            del model._modules[name]
        notes.append("every pick ran without the exit maps, so the saved model has none (for every role)")
    elif without_maps:
        notes.append(
            f"the pick of {', '.join(without_maps)} ran without the exit maps, but another role's pick uses them, "
            "so the maps stay and apply to it too"
        )
    measurements = {}
    for role, entry in result["roles"].items():
        picked, full = entry["picked"], entry["full"]
        where = "every role" if role == "all" else f"the {role!r} role"
        measurements[f"calibrated operating point ({where})"] = picked["label"]
        measurements[f"{entry['metric']} on {result['data']['source']} ({where}), full depth"] = (
            f"{full['quality']:.2f}"
        )
        measurements[f"{entry['metric']} ({where}), at the operating point"] = f"{picked['quality']:.2f}"
        measurements[f"measured speed-up ({where})"] = (
            "1.00x (full depth)"
            if picked.get("kind") == "full"
            else f"{picked['measured_speedup']:.2f}x wall-clock vs full depth on {entry['timing']['num_texts']} "
            f"of the texts"
        )
        measurements[f"layer reduction L / E[layers] ({where})"] = f"{picked['layer_reduction']:.2f}x"
    measurements["quality budget"] = f"{result['max_quality_drop']:g} points (x100)"
    if router:  # sentence-transformers' own card: the measurements stay in the calibration report
        notes.append("the picks apply to the query route; documents and plain encode run the index model, unchanged")
    else:
        model.model_card_data.leap_measurements = measurements
    reporting.save_model(saved_model, path)
    references = {
        role: e["reference"] for role, e in result["roles"].items() if isinstance(e.get("reference"), RoleReference)
    }
    save_references(references, path)  # also removes the references of an earlier calibration saved there
    return {
        "path": str(path),
        "roles": {role: e["picked"]["label"] for role, e in result["roles"].items()},
        "references": sorted(references),
        "notes": notes,
    }


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _reference_line(reference: Any) -> list[str]:
    if reference is None:
        return []
    ref = reference if isinstance(reference, dict) else reference.to_dict()
    return [
        f"Monitoring reference: {ref['num_texts']} texts at the pick, E[layers] {_fmt(ref['expected_layers'])}, exit "
        f"rate {_fmt(ref['exit_rate'])}, NN@{ref['nn_k']} overlap with full depth {_fmt(ref['nn_overlap'], '.3f')}, "
        f"cosine {_fmt(ref['cosine'], '.3f')}.",
        "",
    ]


def calibration_markdown(result: dict[str, Any]) -> str:
    """A readable report of a :func:`calibrate` result: per role, the pick and why, then every point."""
    lines = [f"# Calibration of {result.get('model', 'the model')}", "", result["measured"], ""]
    lines.append(f"Budget: a drop of at most {result['max_quality_drop']:g} points (x100).")
    if result.get("routes"):
        lines.append(
            f"Calibrated: {result['calibrated']}. {result['routes']['query']}; {result['routes']['document']}."
        )
    if result.get("exit_maps") and result.get("maps_compared", True):
        lines.append("The model carries exit maps: every point was measured with and without them.")
    elif result.get("exit_maps"):
        lines.append("Every point kept the exit maps (they carry the query route into the index model's space).")
    for role, entry in result["roles"].items():
        picked = entry["picked"]
        lines += [
            "",
            f"## Role: {role} ({entry['metric']}, {entry['num_texts']} texts)",
            "",
            f"**Picked {picked['label']}**: measured speed-up {_fmt(picked['measured_speedup'])}x, layer reduction "
            f"{picked['layer_reduction']:.2f}x, quality {picked['quality']:.2f} (full depth {entry['full']['quality']:.2f}).",
            "",
            entry["reason"],
            "",
            *_reference_line(entry.get("reference")),
            "| point | quality | drop | E[layers] | layer reduction | exit rate | measured speed-up |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in [entry["full"], *entry["rows"]]:
            lines.append(
                f"| {row['label']} | {row['quality']:.2f} | {0.0 - row['delta'] + 0.0:.2f} | {row['expected_layers']:.2f} | "
                f"{row['layer_reduction']:.2f}x | {row['exit_rate']:.2f} | "
                f"{_fmt(row['measured_speedup'])}{'x' if row['measured_speedup'] is not None else ''} |"
            )
    if "combined" in result:
        combined = result["combined"]
        lines += [
            "",
            f"Both roles at their picks: NDCG@10 {combined['ndcg@10']:.2f} (full depth {combined['full_depth']:.2f}, "
            f"drop {-combined['delta']:.2f}).",
        ]
    return "\n".join(lines) + "\n"
