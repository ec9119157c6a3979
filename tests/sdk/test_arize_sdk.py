"""The official Arize SDK (arize==8.61.0), unmodified, driven through evalgate's Arize listener.

Starts the emulator (`valiqor-emulator`, with its Arize tasks API emulator) and `evalgate` as real
processes on loopback ports chosen by the OS, points `ArizeClient(api_scheme="http", api_host=...,
api_port=...)` at evalgate's Arize listener with a caller key, and checks what the SDK's
`TasksClient` gets back. The Arize emulator accepts only the platform key evalgate is configured
with (a direct call with the caller's key is checked to be an UnauthorizedException), so every
successful call through evalgate proves the caller's key was replaced on the wire.

Also one call of evalgate's native API: a managed `arize_task_run` job, waited for and read back.

Usage: python tests/sdk/test_arize_sdk.py  (EVALGATE_BIN and EMULATOR_BIN name the binaries)
"""

import logging
import os
import re
import shutil
import sys
import tempfile
import uuid

from arize import ArizeClient
from arize._generated.api_client.exceptions import NotFoundException, UnauthorizedException
from arize._generated.api_client.models.span_evaluator_input import SpanEvaluatorInput
from arize.tasks.types import TaskEvaluatorInput, TaskType

from harness import Proc, http_json, json_field, wait_ready
from test_sdk import check

# Every tasks call logs a "[BETA] ... is a beta API" warning; keep the output to the checks.
logging.getLogger("arize.pre_releases").setLevel(logging.ERROR)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVALGATE_BIN = os.environ.get("EVALGATE_BIN", os.path.join(ROOT, "target/debug/evalgate"))
EMULATOR_BIN = os.environ.get("EMULATOR_BIN", os.path.join(ROOT, "target/debug/valiqor-emulator"))
# The Arize emulator accepts only PLATFORM_KEY; evalgate holds it, the SDK never sees it.
PLATFORM_KEY = "ak-sdk-arize-platform-key-0001"
CALLER_KEY = "ak-sdk-arize-caller-key-0002"
VALIQOR_KEY = "vq_sdk_arize_valiqor_key"

SPACE = "demo-space"
SPACE_ID = "U3BhY2U6MTplbXVs"
PROJECT = "demo-project"
PROJECT_ID = "TW9kZWw6MTplbXVs"
EVALUATOR_ID = "RXZhbHVhdG9yOjE6ZW11bA=="
UNKNOWN_TASK_ID = "T25saW5lVGFzazo5OTk6ZW11bA=="
TERMINAL = ("completed", "completed_with_errors", "failed", "cancelled")


def main():
    emulator = Proc(
        [EMULATOR_BIN, "--listen", "127.0.0.1:0", "--api-key", VALIQOR_KEY,
         "--arize-listen", "127.0.0.1:0", "--arize-api-key", PLATFORM_KEY, "--arize-run-duration", "1s"]
    )
    failures = []
    store = tempfile.mkdtemp()
    gateway = None
    try:
        upstream = emulator.wait_for(
            lambda l: (m := re.match(r"listening on (http://127\.0\.0\.1:\d+)", l)) and m.group(1)
        )
        arize_upstream = emulator.wait_for(
            lambda l: (m := re.match(r"arize listening on (http://127\.0\.0\.1:\d+)", l)) and m.group(1)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EVALGATE", "ARIZE"))}
        env.update({
            "EVALGATE__SERVER__LISTEN": "127.0.0.1:0",
            "EVALGATE__SERVER__ADMIN_LISTEN": "127.0.0.1:0",
            "EVALGATE__ARIZE__LISTEN": "127.0.0.1:0",
            "EVALGATE__ARIZE__BASE_URL": arize_upstream,
            "EVALGATE__ARIZE__API_KEY": PLATFORM_KEY,
            "EVALGATE__VALIQOR__BASE_URL": upstream,
            "EVALGATE__VALIQOR__API_KEY": VALIQOR_KEY,
            "EVALGATE__STORE__PATH": os.path.join(store, "evalgate.db"),
            "EVALGATE__TELEMETRY__FORMAT": "json",
            "RUST_LOG": "info",
        })
        gateway = Proc([EVALGATE_BIN], env=env)
        listening = gateway.wait_for(json_field("message", "listening"))
        api = "http://" + listening["listen"]
        admin = "http://" + listening["admin_listen"]
        arize_listen = listening.get("arize_listen")
        if not arize_listen:
            raise RuntimeError(f"the listening line has no arize_listen: {listening}")
        wait_ready(admin)
        run_checks(api, arize_listen, arize_upstream, failures)
    finally:
        code = gateway.stop() if gateway else None
        emulator.stop()
        shutil.rmtree(store, ignore_errors=True)
        if gateway:
            log = "\n".join(gateway.lines)
            for secret in (PLATFORM_KEY, CALLER_KEY, VALIQOR_KEY):
                if secret in log:
                    failures.append(f"secret {secret!r} appeared in the evalgate log")
            if code != 0:
                failures.append(f"evalgate exited with {code} after SIGTERM")
    if failures:
        print("ARIZE SDK TEST FAILED:\n  - " + "\n  - ".join(failures))
        sys.exit(1)
    print("Arize SDK test passed: every check went through evalgate with the platform key")


def arize_client(key, hostport):
    host, port = hostport.rsplit(":", 1)
    return ArizeClient(api_key=key, api_scheme="http", api_host=host, api_port=int(port))


def run_checks(api, arize_listen, arize_upstream, failures):
    tasks = arize_client(CALLER_KEY, arize_listen).tasks
    direct_host = arize_upstream.removeprefix("http://")
    suffix = f"egsdk-{uuid.uuid4().hex[:10]}"
    state = {}

    def evaluator():
        return TaskEvaluatorInput(
            SpanEvaluatorInput(
                evaluator_id=EVALUATOR_ID,
                column_mappings={"input": "attributes.input.value", "output": "attributes.output.value"},
            )
        )

    def create(name):
        return tasks.create_evaluation_task(
            name=name, task_type=TaskType.TEMPLATE_EVALUATION, evaluators=[evaluator()],
            project=PROJECT, space=SPACE, sampling_rate=1.0, is_continuous=False,
        )

    def direct_call_with_the_caller_key_is_unauthorized():
        try:
            arize_client(CALLER_KEY, direct_host).tasks.get(task=UNKNOWN_TASK_ID)
            raise AssertionError("expected an UnauthorizedException")
        except UnauthorizedException:
            pass

    def create_evaluation_tasks():
        t1 = create(f"{suffix}-a")
        t2 = create(f"{suffix}-b")
        assert t1.id and t2.id and t1.id != t2.id, (t1.id, t2.id)
        assert t1.name == f"{suffix}-a", t1.name
        assert t1.type == TaskType.TEMPLATE_EVALUATION, t1.type
        assert t1.project_id == PROJECT_ID, t1.project_id
        state["t1"], state["t2"] = t1, t2

    def get_by_id_and_by_name():
        t1 = state["t1"]
        by_id = tasks.get(task=t1.id)
        assert by_id.id == t1.id and by_id.name == t1.name, (by_id.id, by_id.name)
        by_name = tasks.get(task=t1.name, space=SPACE_ID)
        assert by_name.id == t1.id, (by_name.id, t1.id)

    def list_pages_of_one():
        seen, cursor, pages = [], None, 0
        while True:
            page = tasks.list(space=SPACE_ID, name=suffix, limit=1, cursor=cursor)
            pages += 1
            assert len(page.tasks or []) <= 1, len(page.tasks)
            seen += [t.id for t in page.tasks or []]
            if not page.pagination.has_more:
                break
            cursor = page.pagination.next_cursor
            assert cursor, "has_more comes with a cursor"
            assert pages < 20, "paging did not end"
        assert sorted(seen) == sorted([state["t1"].id, state["t2"].id]), seen
        assert pages >= 2, pages

    def update_rename():
        t1 = state["t1"]
        renamed = tasks.update(task=t1.id, name=t1.name + "-renamed")
        assert renamed.name == t1.name + "-renamed", renamed.name
        assert tasks.get(task=t1.id).name == t1.name + "-renamed"

    def trigger_and_wait():
        run = tasks.trigger_run(task=state["t1"].id)
        assert run.id and run.status in ("PENDING", "RUNNING"), run.status
        done = tasks.wait_for_run(run_id=run.id, poll_interval=0.2, timeout=60)
        assert done.status == "COMPLETED", done.status
        again = tasks.get_run(run_id=run.id)
        assert again.id == run.id and again.status == "COMPLETED", again.status
        assert again.task_id == state["t1"].id, again.task_id
        state["run"] = run.id

    def list_completed_runs():
        runs = tasks.list_runs(task=state["t1"].id, status="COMPLETED")
        ids = [r.id for r in runs.task_runs or []]
        assert state["run"] in ids, ids
        assert all(r.status == "COMPLETED" for r in runs.task_runs), [r.status for r in runs.task_runs]

    def cancel_a_fresh_run():
        fresh = tasks.trigger_run(task=state["t1"].id)
        cancelled = tasks.cancel_run(run_id=fresh.id)
        assert cancelled.status == "CANCELLED", cancelled.status
        assert tasks.get_run(run_id=fresh.id).status == "CANCELLED"

    def native_arize_task_run_job():
        code, accepted = http_json("POST", api + "/v1/jobs", {"kind": "arize_task_run", "task": state["t1"].id})
        assert code == 202, (code, accepted)
        assert accepted.get("run_id"), accepted
        job_id = accepted["job_id"]
        status = None
        for _ in range(4):  # ?wait is capped by jobs.max_wait: a few rounds, bounded
            code, view = http_json("GET", f"{api}/v1/jobs/{job_id}?wait=30s")
            assert code == 200, (code, view)
            status = view["status"]
            if status in TERMINAL:
                break
        assert status == "completed", status
        code, result = http_json("GET", f"{api}/v1/jobs/{job_id}/result")
        assert code == 200, (code, result)
        assert result.get("status") == "COMPLETED", result
        assert tasks.get_run(run_id=accepted["run_id"]).status == "COMPLETED"

    def delete_tasks():
        for key in ("t1", "t2"):
            tasks.delete(task=state[key].id)
        try:
            tasks.get(task=state["t1"].id)
            raise AssertionError("expected a NotFoundException after delete")
        except NotFoundException:
            pass

    def unknown_task_is_not_found():
        try:
            tasks.get(task=UNKNOWN_TASK_ID)
            raise AssertionError("expected a NotFoundException")
        except NotFoundException:
            pass

    for name, fn in [
        ("a direct call to Arize with the caller's key is an UnauthorizedException", direct_call_with_the_caller_key_is_unauthorized),
        ("create_evaluation_task (TEMPLATE_EVALUATION, span evaluator) twice", create_evaluation_tasks),
        ("get by id and by name with a space id", get_by_id_and_by_name),
        ("list with limit=1, following the cursor", list_pages_of_one),
        ("update (rename)", update_rename),
        ("trigger_run / wait_for_run / get_run", trigger_and_wait),
        ("list_runs(status=COMPLETED) holds the run", list_completed_runs),
        ("trigger_run then cancel_run", cancel_a_fresh_run),
        ("native POST /v1/jobs arize_task_run, waited and read back", native_arize_task_run_job),
        ("delete", delete_tasks),
        ("an unknown task id is a NotFoundException", unknown_task_is_not_found),
    ]:
        check(failures, name, fn)


if __name__ == "__main__":
    main()
