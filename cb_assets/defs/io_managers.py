"""The IO manager of `training_windows`: one directory of .npy files per hourly partition.

Outputs are dicts {partition key: WindowSet}, so a single-run backfill over many hours stores every hour in its
own directory (the built-in filesystem IO managers refuse multi-partition outputs). Inputs come back as the same
dict, memory-mapped: a day of windows costs little RAM until a batch is read.
"""

import dagster as dg

from cb_assets.series.window_store import WindowStore
from cb_assets.series.windows import WindowSet


class WindowsIOManager(dg.ConfigurableIOManager):
    base_dir: str

    @property
    def store(self) -> WindowStore:
        return WindowStore(self.base_dir)

    def handle_output(self, context: dg.OutputContext, obj: dict[str, WindowSet]) -> None:
        expected = set(context.asset_partition_keys)
        if set(obj) != expected:
            raise dg.Failure(
                f"training_windows produced partitions {sorted(obj)} but the run covers {sorted(expected)}"
            )
        for key, ws in obj.items():
            path = self.store.save(key, ws)
            context.log.debug("stored %d windows of %s in %s", len(ws), key, path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(self.store.base))})

    def load_input(self, context: dg.InputContext) -> dict[str, WindowSet]:
        return {key: self.store.load(key) for key in sorted(context.asset_partition_keys)}
