"""Redelivery decisions, keyed by (bucket, object, generation).

Write order for input generation G, and what a redelivery finds after a crash at each point:

1. mask PNGs + overlay.jpg (scratch)  → no record for G yet          → COMPUTE again, replacing them
2. masks.json or error.json (record)  → record for G, no completion  → PUBLISH from the record
3. publish the completion message
4. completion.json (marker)           → completion for G              → DONE, nothing published

So a crash anywhere loses nothing; only a crash between 3 and 4 (milliseconds) republishes, and the
copy carries the same (input, generation) for subscribers to dedupe on. Objects for a newer input
generation make an older event STALE: a re-upload wins over a late redelivery.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from samdrop.layout import OutputPaths, input_generation
from samdrop.storage import ObjectInfo


class Step(enum.Enum):
    COMPUTE = "compute"
    PUBLISH = "publish"
    DONE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True)
class Plan:
    step: Step
    reason: str
    record: ObjectInfo | None = None  # the masks.json / error.json to publish from (PUBLISH only)


def decide(listing: Mapping[str, ObjectInfo], paths: OutputPaths, generation: int) -> Plan:
    """What a delivery of input ``generation`` should do, given the objects in ``paths.folder``."""
    newer = [
        info.name
        for info in listing.values()
        if (gen := input_generation(info.metadata)) is not None and gen > generation
    ]
    if newer:
        return Plan(Step.STALE, f"outputs of a newer upload exist ({min(newer)}); this event is outdated")
    completion = listing.get(paths.completion)
    if completion is not None and input_generation(completion.metadata) == generation:
        return Plan(Step.DONE, "already completed: the completion for this generation was published")
    for name in (paths.masks_json, paths.error_json):
        record = listing.get(name)
        if record is not None and input_generation(record.metadata) == generation:
            return Plan(
                Step.PUBLISH, f"{name.rsplit('/', 1)[-1]} exists but its completion was not recorded", record
            )
    return Plan(Step.COMPUTE, "no record for this generation")
