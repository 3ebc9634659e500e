"""A stand-in Cloud Function for the local-stack tests: records every CloudEvent it receives.

Each event is appended to ``$RECORD_FILE`` as one structured-mode CloudEvent JSON line. An object
whose name contains ``fail-on-purpose`` raises, so Pub/Sub redelivers and finally dead-letters it.
"""

import json
import os

import functions_framework
from cloudevents.http import CloudEvent


@functions_framework.cloud_event
def on_upload(event: CloudEvent) -> None:
    record = {**event.get_attributes(), "data": event.get_data()}
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")
    object_id = record["data"]["message"].get("attributes", {}).get("objectId", "")
    if "fail-on-purpose" in object_id:
        raise RuntimeError(f"failing {object_id} on purpose")
