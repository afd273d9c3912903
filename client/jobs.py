"""dcp-rest's job routes (`/api/v0`), as a job's owner calls them. A change is made on the owner's side:
the client reads the job's latest signed record from the node, builds the owner's next records with
`node/jobs/owner.py`, signs them with the owner's key, and sends them in the body of a request the
owner signs too (`Authorization: Ed25519`). The node only checks and stores them, so it never needs
(or gets) the owner's key. Reading a job (status, results) needs no signature."""

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson

from dhtmesh.api import paths
from dhtmesh.api.value_json import ValueJsonError, value_from_json, value_to_json
from dhtmesh.client.errors import BadAnswer
from dhtmesh.client.transport import Transport
from dhtmesh.crypto.errors import CryptoError
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.jobs import owner as job_owner
from dhtmesh.node.jobs.owner import BadJob
from dhtmesh.node.jobs.sealing import open_value
from dhtmesh.node.records.job import JOB_TYPE, JOBS, decode_job
from dhtmesh.node.records.rules import check_value
from dhtmesh.node.values.value import InvalidValue, Value

__all__ = ["BadJob", "JobRoutes", "SliceRange"]

SliceRange = tuple[int, int]  # first and last slice number, both included (dcp-rest's `range=m-n`)


PART_BYTES = 4 * 1024 * 1024  # slice data a request carries: signed, in base64 JSON, well under 16 MiB


class JobRoutes:
    """The `/api/v0` routes; mixed into `Client`, which gives the transport and the node's id (what a
    signed request is addressed to). A body that is no job raises `BadJob` before anything is sent."""

    transport: Transport
    node_id: Callable[[], Awaitable[bytes]]

    # ---- changes, signed by the owner -----------------------------------------------------------

    async def deploy_job(
        self,
        owner: Identity,
        function: str,
        slices: Iterable[object] = (),
        args: Iterable[object] = (),
        redundancy: int = 1,
        slice_timeout_ms: int | None = None,
        max_retries: int | None = None,
        public: dict[str, Any] | None = None,
        private: bool = False,
        part_bytes: int = PART_BYTES,
    ) -> str:
        """Deploy a job of `function` (JavaScript text) over `slices` (JSON data), owned by `owner`: its
        id (40 hex). The job stays open for more slices (`add_slices`) until closed (`close_job`). Slices
        of more than `part_bytes` of JSON go in several requests: the deploy, then additions."""
        body: dict[str, Any] = {"work": {"function": function}, "args": list(args), "redundancy": redundancy}
        optional = {"sliceTimeoutMs": slice_timeout_ms, "maxRetries": max_retries, "public": public}
        body |= {name: given for name, given in optional.items() if given is not None} | {"private": private}
        first, *rest = _parts(job_owner.parse_deploy(body | {"slices": list(slices)}), part_bytes)
        # The signed records are the request: dcp-rest's `slices` would only carry the data twice.
        answer = await self._signed_document(owner, "POST", paths.JOB_NEW, body, job_owner.deploy(owner, first))
        job_id = answer.get("jobId")
        if not (isinstance(job_id, str) and len(job_id) == 40):
            raise BadAnswer(f"{paths.JOB_NEW}: the node's answer names no job id: {answer}")
        for part in rest:
            await self._add_data(owner, job_id, part.slices)
        return job_id

    async def add_slices(self, owner: Identity, job_id: str, slices: Sequence[object]) -> dict[str, Any]:
        """Add `slices` (JSON data) to the open job: `{added, totalSlices}`."""
        return await self._add_data(owner, job_id, job_owner.parse_slices({"sliceData": list(slices)}))

    async def _add_data(self, owner: Identity, job_id: str, data: list[bytes]) -> dict[str, Any]:
        signed = job_owner.add_slices(owner, await self.job_record(job_id), data)
        path = paths.job_path(paths.JOB_SLICES, job_id)
        return await self._signed_document(owner, "POST", path, {}, signed)

    async def close_job(self, owner: Identity, job_id: str) -> dict[str, Any]:
        """Say the job has all its slices (it completes once they are done): `{jobId, status}`."""
        signed = [job_owner.closed(owner, await self.job_record(job_id))]
        return await self._signed_document(owner, "POST", paths.job_path(paths.JOB_CLOSE, job_id), {}, signed)

    async def cancel_job(self, owner: Identity, job_id: str, reason: str = "") -> None:
        """Cancel the job: workers stop its slices."""
        signed = [job_owner.cancelled(owner, await self.job_record(job_id), reason)]
        body = {"reason": reason} if reason else {}
        await self._signed_text(owner, "DELETE", paths.job_path(paths.JOB, job_id), body, signed)

    # ---- the owner's listings, signed -----------------------------------------------------------

    async def jobs(self, owner: Identity) -> list[dict[str, Any]]:
        """The owner's jobs: `[{jobId, status, totalSlices, completedSlices, public}]`."""
        listed = _json(paths.JOBS, await self._signed_text(owner, "GET", paths.JOBS, None, None))
        if not isinstance(listed, list):
            raise BadAnswer(f"{paths.JOBS}: the node's answer is not a JSON array")
        return listed

    async def job_count(self, owner: Identity) -> int:
        """How many jobs the owner has."""
        count = _json(paths.JOBS_COUNT, await self._signed_text(owner, "GET", paths.JOBS_COUNT, None, None))
        if not (isinstance(count, dict) and type(count.get("jobCount")) is int):
            raise BadAnswer(f"{paths.JOBS_COUNT}: the node's answer is not a job count")
        return count["jobCount"]

    # ---- reading --------------------------------------------------------------------------------

    async def job_record(self, job_id: str) -> Value:
        """The job's latest signed value, checked here as every node checks it: what the owner's next
        change follows."""
        text = await self.transport.text("GET", paths.job_path(paths.JOB_RECORD, job_id))
        try:
            value = value_from_json(orjson.loads(text))
            job = decode_job(value.data) if value.type == JOB_TYPE else None
            if job is None or job.job_id.hex() != job_id.lower().removeprefix("0x"):
                raise BadAnswer(f"the node gave a record that is not job {job_id}'s")
            check_value(JOBS.key_for(job.job_id), value)
        except (orjson.JSONDecodeError, ValueJsonError, InvalidValue) as error:
            raise BadAnswer(f"the node gave a job record that does not check: {error}") from error
        return value

    async def job_status(self, job_id: str) -> dict[str, Any]:
        """`{status, totalSlices, activeSlices, completedSlices, failedSlices, totalCPUTime, errors,
        closed, public}`; status is running, completed, cancelled or failed."""
        return await self.transport.document("GET", paths.job_path(paths.JOB_STATUS, job_id))

    async def job_results(self, job_id: str, ranges: Iterable[SliceRange] | None = None) -> dict[str, Any]:
        """`{totalSlices, completedSlices, activeSlices, results: [{sliceNumber, value}]}`: every slice's
        result known yet, or those in `ranges` (first and last slice numbers, from 1)."""
        query = "&".join(f"range={first}-{last}" for first, last in ranges or ())
        path = paths.job_path(paths.JOB_RESULTS, job_id)
        return await self.transport.document("GET", f"{path}?{query}" if query else path)

    async def job_result(self, job_id: str, slice_number: int) -> dict[str, Any]:
        """One slice's result, in `job_results`' shape."""
        return await self.transport.document("GET", paths.job_path(paths.JOB_RESULT, job_id, slice_number=slice_number))

    def listen_results(self, job_id: str) -> AsyncGenerator[dict[str, Any], None]:
        """`{sliceNumber, value}` of each completed slice (those done already first), as they complete;
        it ends when the job is finished (completed, failed or cancelled)."""
        return self.transport.lines(paths.job_path(paths.JOB_LISTEN, job_id))

    async def accounts(self) -> list[dict[str, Any]]:
        """dcp-rest's accounts: `[{name, address, balance}]`."""
        listed = await self.transport.json("GET", paths.ACCOUNTS)
        if not isinstance(listed, list):
            raise BadAnswer(f"{paths.ACCOUNTS}: the node's answer is not a JSON array")
        return listed

    # ---- signed requests ------------------------------------------------------------------------

    async def _signed_document(
        self, owner: Identity, method: str, path: str, body: dict[str, Any], signed: list[Value]
    ) -> dict[str, Any]:
        answer = _json(path, await self._signed_text(owner, method, path, body, signed))
        if not isinstance(answer, dict):
            raise BadAnswer(f"{path}: the node's answer is not a JSON object")
        return answer

    async def _signed_text(
        self, owner: Identity, method: str, path: str, body: dict[str, Any] | None, signed: list[Value] | None
    ) -> str:
        """The answer to a request signed by `owner`; a body carries the records it signed (`signed`).
        The body is serialized once: the signature covers exactly the bytes sent."""
        data = b"" if body is None else orjson.dumps(body | {"signed": [value_to_json(v) for v in signed or ()]})
        headers = sign_request(owner, method, path, data, await self.node_id())
        if body is not None:
            headers["Content-Type"] = "application/json"
        return await self.transport.text(method, path, data=data or None, headers=headers)


def _json(path: str, text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise BadAnswer(f"{path}: the node's answer is not JSON") from error


def opened(owner: Identity, job_id: str, document: dict[str, Any]) -> dict[str, Any]:
    """A private job's results (`job_results`' shape) with each sealed value opened with the owner's key;
    raises `BadAnswer` for a value the owner cannot open, or that is not the one the workers agreed on."""
    results = []
    for result in document.get("results", []):
        try:
            value = open_value(owner, bytes.fromhex(job_id), result["sliceNumber"], result["value"])
        except (ValueError, KeyError, TypeError, CryptoError) as error:
            raise BadAnswer(f"slice {result.get('sliceNumber')}: cannot open its sealed value: {error}") from error
        results.append({**result, "value": value})
    return {**document, "results": results}


def _parts(request: job_owner.Deploy, part_bytes: int) -> list[job_owner.Deploy]:
    """The deploy's slices in parts of at most `part_bytes` of JSON each (at least one part)."""
    parts = job_owner.packed(request.slices, len, part_bytes) or [[]]
    return [job_owner.Deploy(request.spec, part) for part in parts]
