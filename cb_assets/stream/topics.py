"""Topic administration: create the ticker topic once, list its partitions.

Kept out of the producer because the sink, the feed, the benchmarks and the tests all need it, and none of
them needs a producer for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)
# librdkafka's own log lines go through `logging` instead of raw stderr (the producer's logger, so one
# setting quiets both).
_RDKAFKA_LOG = logging.getLogger("cb_assets.stream.librdkafka")


def _admin_config(bootstrap: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": _RDKAFKA_LOG, **dict(extra or {})}


def ensure_topic(
    bootstrap: str,
    topic: str,
    *,
    partitions: int = 6,
    replication_factor: int = 1,
    timeout_s: float = 15.0,
    extra_config: Mapping[str, Any] | None = None,
) -> bool:
    """Create `topic` if missing; returns True if it was created.

    Several partitions let the sink's consumers share products (the key decides the partition). An
    existing topic is left alone; one with fewer partitions than asked for is reported, not altered,
    because adding partitions re-maps keys and would break per-product ordering mid-stream.
    """
    admin = AdminClient(_admin_config(bootstrap, extra_config))
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)],
        request_timeout=timeout_s,
    )
    try:
        futures[topic].result(timeout=timeout_s)
    except KafkaException as e:
        err = e.args[0]
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise
        meta = admin.list_topics(topic, timeout=timeout_s)
        have = len(meta.topics[topic].partitions) if topic in meta.topics else 0
        if have < partitions:
            log.warning(
                "topic %s exists with %d partitions (asked for %d); left unchanged", topic, have, partitions
            )
        return False
    log.info("created topic %s with %d partitions", topic, partitions)
    return True


def topic_partitions(bootstrap: str, topic: str, timeout_s: float = 10.0) -> Sequence[int]:
    """Partition ids of `topic` (empty when it does not exist); handy for `assign`-based consumers."""
    meta = AdminClient(_admin_config(bootstrap)).list_topics(topic, timeout=timeout_s)
    info = meta.topics.get(topic)
    if info is None or info.error is not None:
        return []
    return sorted(info.partitions)
