"""The printed comparison table of a run's metrics (all metrics stay in the JSON files)."""

from __future__ import annotations

from captionlab.captioning.metrics import format_metrics_table

__all__ = ["TABLE_COLUMNS", "metrics_table"]

#: The columns of the printed comparison tables.
TABLE_COLUMNS = (
    "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr",
    "object_f1", "attribute_accuracy", "count_accuracy", "relation_accuracy",
)  # fmt: skip


def metrics_table(rows: dict[str, dict]) -> str:
    """A printed table of the main metrics, one row per model/decoding."""
    return format_metrics_table(
        {
            name: {c: m[c] for c in (*TABLE_COLUMNS, "unavailable") if c in m}
            for name, m in rows.items()
        }
    )
