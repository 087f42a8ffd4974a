"""Schemathesis against `/openapi.json` of a live three-node cluster (issue 10).

Every operation of the spec gets generated requests, valid and invalid, sent
to the nodes over HTTP (leader and followers in turn); every answer must
conform to the spec (status documented, body matching its schema, no 5xx),
and afterwards every node must hold the same state (equal state digests).

The default suite runs a short pass (bounded to ~20 s); `nox -s fuzz-api`
runs a long one (FUZZ_API_EXAMPLES per operation and generation mode).
"""

from __future__ import annotations

import os
import time

import pytest
import trio

from tests.api.conftest import Cluster

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_API_EXAMPLES", "12"))
BUDGET_S = float(os.environ.get("FUZZ_API_BUDGET_S", "20"))


def _fuzz(urls: list[str], examples: int, budget_s: float) -> list[str]:
    """Run every operation against the nodes; return what failed (empty: all passed)."""
    import requests

    schema = schemathesis.openapi.from_url(urls[0] + "/openapi.json")
    failures: list[str] = []
    deadline = time.monotonic() + budget_s
    session = requests.Session()
    turn = [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                return failures

            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), derandomize=False)
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                if time.monotonic() > deadline:
                    return
                base = urls[turn[0] % len(urls)]
                turn[0] += 1
                if mode is GenerationMode.POSITIVE and "Idempotency-Key" in (case.headers or {}):
                    # A valid key reused for another request is rightly a 400
                    # (tests/kv covers it); fresh ones keep valid data valid.
                    case.headers["Idempotency-Key"] = f"fuzz-{turn[0]}:0"
                response = case.call(base_url=base, session=session, timeout=20)
                # Every check but positive_data_acceptance ("valid data gets a 2xx"):
                # a schema cannot say that a key is at most 1024 UTF-8 *bytes* (413) or
                # that a key must be absent (404), so valid-looking data may be refused.
                case.validate_response(
                    response, excluded_checks=[schemathesis.checks.positive_data_acceptance]
                )

            try:
                check()
            except Unsatisfiable:
                pass  # no parameters and no body: nothing to make invalid
            except Exception as exc:  # collect all, report together
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): "
                                f"{str(exc)[:2000]}")
    return failures


async def test_the_api_conforms_to_its_openapi_description_and_the_cluster_converges(
    trio3: Cluster,
) -> None:
    failures = await trio.to_thread.run_sync(_fuzz, trio3.all_urls, EXAMPLES, BUDGET_S)
    assert failures == [], "\n\n".join(failures)
    await trio3.settle()
    digests = {n.id: n.kv.state_digest() for n in trio3.nodes}
    assert len(set(digests.values())) == 1, digests
