"""A raw prediction (one slot of the predictor's ``predictions``) → a checked :class:`Prediction`.

The document itself, and the coercion of protobuf's floats back to ints, is
:class:`samdrop.documents.Prediction`; this module adds what the function needs: an error slot
raises by its code's rule in :data:`samdrop.errors.ERROR_CODES`, and masks must be COCO RLE at the
image's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from functions.endpoint import BadResponse
from samdrop.documents import FailedPrediction, Prediction, prediction_from_json
from samdrop.errors import RetryRule, error_from_code, retry_rule


def parse_prediction(raw: Any, *, where: str) -> Prediction:
    """Check one prediction. A ``{"error": {"code", "message"}}`` slot raises the error its code
    stands for (``TransientError``: redeliver, ``ConfigError``, or ``PermanentError`` with that code).
    Anything off-contract raises ``BadResponse``."""
    if not isinstance(raw, Mapping):
        raise BadResponse(f"prediction for {where} is not an object")
    try:
        prediction = prediction_from_json(raw)
        if isinstance(prediction, Prediction):
            _check_masks(prediction)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadResponse(f"prediction for {where} is off-contract ({type(exc).__name__}: {exc})") from None
    if isinstance(prediction, FailedPrediction):
        code, message = prediction.error["code"], prediction.error["message"]
        # The input's fault reads as the user's error; anything else says who failed.
        permanent = retry_rule(code) is RetryRule.PERMANENT
        raise error_from_code(code, message if permanent else f"predictor: {message}")
    return prediction


def _check_masks(prediction: Prediction) -> None:
    for mask in prediction.masks:
        size = mask.rle["size"]
        if size != [prediction.height, prediction.width]:
            raise ValueError(
                f"mask size {size} differs from the image's [{prediction.height}, {prediction.width}]"
            )
