"""A remote worker's finished results, kept on disk until the server has them.

Each result is written to ``<data_dir>/remote_results/<hash of job id>.json`` (mode 0600)
before it is posted, and deleted once the server answered. Results left by a stop or a crash
are posted at the next start (:meth:`PendingResults.flush`): a finished evaluation is never
lost. A result the server refuses for its content (413, 422) is replaced by a failure saying
why, so the job is not leased again to the same end.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from evaluator_worker.verdict import Verdict
from services.dispatch.job_eval import failure
from services.workers.remote_client import RemoteClient, detail, say, write_private

log = logging.getLogger(__name__)

PENDING_DIR = "remote_results"
"""Where finished results wait until the server has them, under ``data_dir``."""


class PendingResults:
    """The results of one worker that its server may not have yet.

    Parameters
    ----------
    client:
        The joined client that posts them.
    data_dir:
        The worker's data directory (results go to its :data:`PENDING_DIR`).
    """

    def __init__(self, client: RemoteClient, data_dir: Path) -> None:
        self.client = client
        self.directory = data_dir / PENDING_DIR

    def _path(self, job_id: str) -> Path:
        return self.directory / f"{hashlib.sha256(job_id.encode()).hexdigest()[:32]}.json"

    def _post(self, job_id: str, result: dict[str, Any], fallback: bool = True) -> bool | None:
        """Post a result until the server answers; whether it stored it (None: refused)."""
        response = self.client.post_result(job_id, result)
        if response.status_code == 200:
            return bool(response.json().get("accepted"))
        # 404/409: the job is gone or another worker holds it now; 413/422: a result the
        # server will never take. Retrying the same post cannot help either way.
        why = f"the server refused the result ({response.status_code}): {detail(response)}"
        say(f"job {job_id}: {why}")
        if fallback and response.status_code in (413, 422):
            # Say so in the job's place: otherwise it would be leased again, to the same end.
            return self._post(
                job_id, failure(Verdict.RUNTIME_ERROR, f"remote worker: {why}"), False
            )
        return None

    def deliver(self, job_id: str, result: dict[str, Any]) -> bool | None:
        """Keep the result on disk, post it, forget it once the server answered.

        Returns
        -------
        bool or None
            True: stored; False: the job already had a result; None: refused.
        """
        path = self._path(job_id)
        write_private(path, {"url": self.client.base_url, "job_id": job_id, "result": result})
        outcome = self._post(job_id, result)
        path.unlink(missing_ok=True)
        return outcome

    def flush(self) -> None:
        """Post the results a previous run of this worker finished but could not deliver."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                log.warning("dropping unreadable pending result %s: %s", path, e)
                path.unlink(missing_ok=True)
                continue
            if saved.get("url") != self.client.base_url:
                continue  # for another server this worker joined before
            outcome = self._post(saved["job_id"], saved["result"])
            path.unlink(missing_ok=True)
            if outcome is not None:
                say(f"job {saved['job_id']}: delivered a result left by an earlier run")
