"""Per-hour success and failure inside one run that covers several hours (a single-run backfill).

A run over a day must not fail 23 good hours because of one bad one, and a re-run of the failed partitions
must not redo the good ones. Dagster supports exactly that for ranged runs: partitions for which the run logged
a materialisation count as materialised even when the step then fails, and only the rest (and what depends on
them) are marked failed. So when some hours are bad, the good ones are recorded one by one and the step fails
naming the bad ones; when all are good, the usual single result covers the whole range.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg


@dataclass
class HourOutcomes:
    """What happened to each hour (partition key) of a run."""

    done: dict[str, dict[str, object]] = field(default_factory=dict)  # key -> per-hour metadata
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason

    def fail(self, key: str, reason: str) -> None:
        self.failed[key] = reason

    def succeed(self, key: str, metadata: Mapping[str, object] | None = None) -> None:
        self.done[key] = dict(metadata or {})

    def raise_if_failed(self, context: dg.AssetExecutionContext) -> None:
        """Record each good hour separately, then fail the step with the bad hours' reasons."""
        if not self.failed:
            return
        for key, metadata in sorted(self.done.items()):
            context.log_event(
                dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=metadata)
            )
        reasons = "; ".join(f"{key}: {reason}" for key, reason in sorted(self.failed.items()))
        raise dg.Failure(
            description=f"{len(self.failed)} of {len(self.failed) + len(self.done)} hours failed "
            f"({len(self.done)} recorded as materialised): {reasons}",
            metadata={
                "failed_hours": dg.MetadataValue.json(sorted(self.failed)),
                "materialised_hours": len(self.done),
            },
            # The bad hours would fail the same way again: only the retraining sensor's delayed retries help.
            allow_retries=False,
        )
