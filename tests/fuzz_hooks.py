"""schemathesis hooks for ``tests/test_fuzz_api.py``, loaded by the ``schemathesis run`` process
(``SCHEMATHESIS_HOOKS=tests.fuzz_hooks``): keep the fuzzer's own key alive, record every call.

``DQ_TEST_FUZZ_KEEP_PREFIX``: the prefix of the key the fuzzer sends; a generated request that would
revoke it (``DELETE /v1/keys/<that prefix>``) goes to another prefix instead.
``DQ_TEST_FUZZ_CALLS``: a file that gets one JSON line per request: operation, phase, mode, status.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import schemathesis

KEEP_PREFIX = os.environ.get("DQ_TEST_FUZZ_KEEP_PREFIX", "")
CALLS = os.environ.get("DQ_TEST_FUZZ_CALLS", "")
STAND_IN_PREFIX = "00000000"
_lock = threading.Lock()


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    if KEEP_PREFIX and case.path_parameters and case.path_parameters.get("prefix") == KEEP_PREFIX:
        case.path_parameters["prefix"] = STAND_IN_PREFIX


@schemathesis.hook
def after_call(context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response) -> None:
    if not CALLS:
        return
    meta = case.meta
    line = {
        "operation": case.operation.label,
        "phase": meta.phase.name.value if meta else "",
        "mode": meta.generation.mode.value if meta else "",
        "status": response.status_code,
    }
    with _lock, open(CALLS, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
