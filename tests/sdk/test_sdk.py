"""The official Valiqor SDK (valiqor==0.0.21), unmodified, driven through evalgate.

Starts the emulator (`valiqor-emulator`) and `evalgate` as real processes on loopback ports chosen
by the OS, points `ValiqorClient(base_url=...)` at evalgate with a placeholder key, and checks
what the SDK gets back. The emulator accepts only the key evalgate is configured with, so every
successful call proves the caller's key was swapped for the platform key.

Usage: python tests/sdk/test_sdk.py  (EVALGATE_BIN and EMULATOR_BIN name the binaries)
"""

import os
import re
import sys
import tempfile

from harness import Proc, http_get, json_field, wait_ready
from valiqor import ValiqorClient
from valiqor.common import exceptions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVALGATE_BIN = os.environ.get("EVALGATE_BIN", os.path.join(ROOT, "target/debug/evalgate"))
EMULATOR_BIN = os.environ.get("EMULATOR_BIN", os.path.join(ROOT, "target/debug/valiqor-emulator"))
UPSTREAM_KEY = "vq_sdk_upstream_key"
# evalgate runs with auth.mode = "tokens": the SDK's api_key is a tenant token (the SDK insists on
# the vq_ prefix); the platform key stays in evalgate.
CALLER_KEY = "vq_sdk_tenant_token_0001"
UNKNOWN_KEY = "vq_sdk_not_a_tenant_token"
BYOK_KEY = "sk-sdk-test-byok"


def main():
    emulator = Proc(
        [EMULATOR_BIN, "--listen", "127.0.0.1:0", "--api-key", UPSTREAM_KEY,
         "--inline-max-items", "10", "--max-dataset-items", "1000", "--job-duration", "2s"]
    )
    upstream = emulator.wait_for(lambda l: (m := re.search(r"(http://127\.0\.0\.1:\d+)", l)) and m.group(1))
    store = tempfile.mkdtemp()
    tenants_file = os.path.join(store, "tenants.toml")
    with open(tenants_file, "w") as f:
        f.write(f'[[tenants]]\nname = "sdk-test"\ntokens = ["{CALLER_KEY}"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALGATE")}
    env.update({
        "EVALGATE__SERVER__LISTEN": "127.0.0.1:0",
        "EVALGATE__SERVER__ADMIN_LISTEN": "127.0.0.1:0",
        "EVALGATE__VALIQOR__BASE_URL": upstream,
        "EVALGATE__VALIQOR__API_KEY": UPSTREAM_KEY,
        "EVALGATE__VALIQOR__OPENAI_API_KEY": BYOK_KEY,
        "EVALGATE__STORE__PATH": os.path.join(store, "evalgate.db"),
        "EVALGATE__AUTH__MODE": "tokens",
        "EVALGATE__AUTH__TENANTS_FILE": tenants_file,
        "RUST_LOG": "info",
    })
    gateway = Proc([EVALGATE_BIN], env=env)
    failures = []
    try:
        listening = gateway.wait_for(json_field("message", "listening"))
        api = "http://" + listening["listen"]
        admin = "http://" + listening["admin_listen"]
        wait_ready(admin)
        run_checks(api, admin, failures)
    finally:
        code = gateway.stop()
        emulator.stop()
        log = "\n".join(gateway.lines)
        for secret in (UPSTREAM_KEY, CALLER_KEY, BYOK_KEY):
            if secret in log:
                failures.append(f"secret {secret!r} appeared in the evalgate log")
        if code != 0:
            failures.append(f"evalgate exited with {code} after SIGTERM")
    if failures:
        print("SDK TEST FAILED:\n  - " + "\n  - ".join(failures))
        sys.exit(1)
    print("SDK test passed: every check went through evalgate with the platform key")


def check(failures, name, fn):
    try:
        fn()
        print(f"ok   {name}")
    except Exception as error:  # report every failing check, not just the first
        failures.append(f"{name}: {type(error).__name__}: {error}")
        print(f"FAIL {name}: {type(error).__name__}: {error}")


def dataset(n):
    return [
        {"input": f"question {i}", "output": ("fail " if i % 3 == 0 else "") + f"answer {i}", "context": [f"ctx {i}"]}
        for i in range(n)
    ]


def run_checks(api, admin, failures):
    client = ValiqorClient(api_key=CALLER_KEY, project_name="sdk-test", base_url=api)
    fa = client.failure_analysis
    state = {}

    def sync_run():
        result = fa.run(dataset=dataset(3))
        assert result.status == "completed", result.status
        assert result.summary.total_items == 3, result.summary
        assert result.failure_tags, "the inline run has tags"
        state["run_id"] = result.run_id

    def async_run_with_progress():
        handle = fa.run_async(dataset=dataset(25))
        assert handle.job_id, "202 carried a job id"
        assert handle._total_items == 25, handle._total_items  # the 202 body carried total_items
        seen = []
        final = handle.wait(poll_interval=0.3, timeout=60, on_progress=lambda s: seen.append((s.status, s.progress_percent)))
        assert final.status == "completed", final.status
        statuses = [s for s, _ in seen]
        assert "running" in statuses or "queued" in statuses, seen
        progress = [p for _, p in seen]
        assert progress == sorted(progress), f"progress never goes back: {progress}"
        result = handle.result()
        assert result.summary.total_items == 25, result.summary
        assert len(result.inputs) == 25, len(result.inputs)

    def blocking_run_polls_to_completion():
        result = fa.run(dataset=dataset(12))
        assert result.status == "completed" and result.summary.total_items == 12

    def taxonomy_twice_second_from_cache():
        first = fa.get_taxonomy()
        second = fa.get_taxonomy()
        assert first and [b.bucket_id for b in first] == [b.bucket_id for b in second]
        _, metrics = http_get(admin + "/metrics")
        hits = re.search(r'evalgate_taxonomy_cache_total\{result="hit"\} (\d+)', metrics)
        assert hits and int(hits.group(1)) >= 1, "second taxonomy call was a cache hit"

    def playground():
        result = fa.playground(input="What is 2+2?", output="5")
        assert result.playground_limit_per_day == 10, result.playground_limit_per_day
        assert isinstance(result.failure_tags, list)

    def read_back():
        run_id = state["run_id"]
        run = fa.get_run(run_id)
        assert run.run_id == run_id
        tags = fa.get_tags(run_id)
        assert tags, "tags"
        failing = fa.get_tags(run_id, decision="fail")
        assert all(t.decision == "fail" for t in failing), [t.decision for t in failing]
        inputs = fa.get_run_inputs(run_id)
        assert [i.item_index for i in inputs] == [0, 1, 2], [i.item_index for i in inputs]

    def cancel():
        handle = fa.run_async(dataset=dataset(40))
        answer = fa.cancel_run(handle.job_id)
        assert answer.get("status") == "cancelled", answer
        assert fa.poll_status(handle.job_id).status == "cancelled"

    def eval_async():
        handle = client.eval.evaluate_async(dataset=dataset(15), metrics=["coherence", "fluency"])
        assert handle.job_id
        handle.wait(poll_interval=0.3, timeout=60)
        result = handle.result()
        assert result.total_items == 15, result.total_items
        assert 0.0 <= result.overall_score <= 1.0, result.overall_score

    def security_audit_async():
        items = [{"user_input": f"q{i}", "assistant_response": ("unsafe " if i % 4 == 0 else "") + f"r{i}"} for i in range(14)]
        handle = client.security.audit_async(dataset=items)
        assert handle.job_id
        handle.wait(poll_interval=0.3, timeout=60)
        result = handle.result()
        assert result.total_items == 14, result.total_items

    def five_thousand_items_through_an_upstream_capped_at_one_thousand():
        # The emulator refuses more than 1,000 items; evalgate splits, polls and merges.
        items = dataset(5000)
        result = fa.run(dataset=items)
        assert result.run_id.startswith("egj_"), result.run_id
        assert result.status == "completed", result.status
        assert result.summary.total_items == 5000, result.summary.total_items
        indexes = [i.item_index for i in result.inputs]
        assert indexes == list(range(5000)), indexes[:5]
        expected_failures = sum(1 for i in range(5000) if i % 3 == 0)
        failing_items = {t.item_index for t in result.failure_tags if t.decision == "fail"}
        assert len(failing_items) == expected_failures, (len(failing_items), expected_failures)
        handle = fa.run_async(dataset=items[:2500])
        assert handle.job_id.startswith("egj_")
        status = fa.poll_status(handle.job_id)
        assert status.status in ("queued", "running", "completed"), status.status
        handle.wait(poll_interval=0.5, timeout=120)
        assert handle.result().summary.total_items == 2500

    def errors_keep_the_sdk_exception_types():
        try:
            fa.get_run("no-such-run")
            raise AssertionError("expected an error")
        except exceptions.APIError as error:
            assert error.status_code == 404, error.status_code

    def unknown_token_is_an_authentication_error():
        stranger = ValiqorClient(api_key=UNKNOWN_KEY, project_name="sdk-test", base_url=api)
        try:
            stranger.failure_analysis.get_run("no-such-run")
            raise AssertionError("expected an AuthenticationError")
        except exceptions.AuthenticationError:
            pass

    for name, fn in [
        ("a token that is no tenant's is an AuthenticationError", unknown_token_is_an_authentication_error),
        ("sync failure-analysis run (200 inline)", sync_run),
        ("async failure-analysis run polled to completion with progress", async_run_with_progress),
        ("blocking run() over a 202 job", blocking_run_polls_to_completion),
        ("taxonomy twice, second from the cache", taxonomy_twice_second_from_cache),
        ("playground", playground),
        ("get_run / get_tags / get_run_inputs", read_back),
        ("cancel", cancel),
        ("eval evaluate_async", eval_async),
        ("security audit_async", security_audit_async),
        ("upstream errors map to SDK exceptions", errors_keep_the_sdk_exception_types),
        ("run() of 5,000 items against an upstream capped at 1,000", five_thousand_items_through_an_upstream_capped_at_one_thousand),
    ]:
        check(failures, name, fn)


if __name__ == "__main__":
    main()
