"""Private results (`"private": true`): each slice's value sealed to the job's owner, beside a digest of
it that the workers' votes compare (sealed boxes of one value differ from worker to worker).

This keeps results from being served in the clear; it hides nothing from whoever can compute them:
the work function and the slices' data are public records. A digest also lets a reader confirm a
guess of a value, so a private job's results should not be guessable from few candidates.
"""

import base64
import hashlib
from typing import Any

import orjson

from dhtmesh.crypto.errors import CryptoError
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.sealed import open_sealed, seal_to
from dhtmesh.node.records.job import JobRecord, canonical


def digest_of(job_id: bytes, number: int, value: bytes) -> str:
    return hashlib.sha256(job_id + number.to_bytes(4, "big") + value).hexdigest()


def sealed_value(job: JobRecord, number: int, value: bytes) -> bytes:
    """What a worker publishes for a private job's slice whose canonical value is `value`."""
    sealed = base64.b64encode(seal_to(job.owner_key, value)).decode()
    return canonical({"digest": digest_of(job.job_id, number, value), "sealed": sealed})


def ballot(private: bool, value: bytes) -> bytes:
    """What a worker's value counts as in a vote: itself, or for a private job its digest."""
    if not private:
        return value
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    digest = document.get("digest") if isinstance(document, dict) else None
    return digest.encode() if isinstance(digest, str) else value


def merged(values: list[bytes]) -> bytes:
    """The accepted value of a private slice: the digest its workers agreed on, and each one's box (a
    worker may seal anything beside the right digest: the owner opens the first box that matches)."""
    documents = [orjson.loads(value) for value in values]  # checked JSON; they agree on their digest
    boxes = [d["sealed"] for d in documents if isinstance(d, dict) and isinstance(d.get("sealed"), str)]
    if not boxes:
        return values[0]  # not sealed values at all (workers agreeing on something else): as they are
    return canonical({"digest": documents[0].get("digest"), "sealed": boxes})


def open_value(owner: Identity, job_id: bytes, number: int, document: Any) -> Any:
    """The owner's view of a private slice's value: the first of its boxes that opens to the value its
    digest (the one the workers agreed on) names; raises ValueError if none does."""
    boxes = document.get("sealed") if isinstance(document, dict) else None
    if not (isinstance(boxes, list) and all(isinstance(box, str) for box in boxes)):
        raise ValueError("not a sealed value")
    for box in boxes:
        try:
            value = open_sealed(owner, base64.b64decode(box, validate=True))
        except (CryptoError, ValueError):
            continue
        if digest_of(job_id, number, value) == document.get("digest"):
            return orjson.loads(value)
    raise ValueError("no box opens to the value the workers agreed on")
