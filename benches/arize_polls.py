"""Upstream polls of one Arize task run: the official SDK (arize==8.61.0) direct, through evalgate,
and a managed run. Driven by benches/arize_polls.sh, which runs the scenarios in parallel.

One scenario per process (`run --scenario X`), each with its own `valiqor-emulator` (Arize emulator,
runs last `--run-seconds`), its own `evalgate` (loopback ports chosen by the OS, its own store in a
temp dir) and a counting proxy in front of the Arize emulator, so a poll that reaches Arize is
counted where it arrives as well as by evalgate:

  a  1 SDK watcher directly against Arize (the baseline)
  b  1 SDK watcher through evalgate's Arize listener
  c  N SDK watchers (threads, default 100), through evalgate, on the same run
  d  a managed run (POST /v1/jobs kind arize_task_run, then GET /v1/jobs/{id}?wait= until
     terminal), no SDK watcher

A watcher is `tasks.wait_for_run(run_id=...)` with the SDK defaults (poll_interval=5.0,
timeout=600); its polls are counted by wrapping `tasks._api.get_task_run`, the one call that
method makes per poll. Watchers start together, `--start-delay` seconds (2) after the trigger:
the SDK's last poll comes at its deadline, and through evalgate it may be answered from a cache
up to `arize.run_status_max_age` (1 s) old, so a watcher started at the trigger instant could
read RUNNING at its deadline and raise TimeoutError on a run lasting exactly the SDK's timeout.

Polls reaching Arize (b-d) are evalgate's `evalgate_upstream_requests_total{outcome="response",
upstream="arize"}` (every upstream call evalgate makes) on the admin port's /metrics: read after
the trigger and after the watchers finish (b, c). For d it is read before POST /v1/jobs instead,
because evalgate polls a new managed run at once, which may land before the 202 is read; the
trigger's own two calls (GET /v2/tasks/{id}, POST /v2/tasks/{id}/trigger, seen by the proxy) are
then subtracted. Checks: the counter's increase over the window equals every request the proxy saw
in it, and the proxy saw no request but task-run polls (a-c) or but those and the trigger's two (d).

`table RESULT.json...` prints the Markdown table of the per-scenario results.
"""

import argparse
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "sdk"))
from harness import Proc, http_json, json_field, wait_ready  # noqa: E402

EVALGATE_BIN = os.environ.get("EVALGATE_BIN", os.path.join(ROOT, "target/debug/evalgate"))
EMULATOR_BIN = os.environ.get("EMULATOR_BIN", os.path.join(ROOT, "target/debug/valiqor-emulator"))
PLATFORM_KEY = "ak-bench-arize-platform-key"  # the only key the Arize emulator accepts
CALLER_KEY = "ak-bench-arize-caller-key"  # what SDK callers of evalgate send (dropped by evalgate)
VALIQOR_KEY = "vq_bench_valiqor_key"
PROJECT_ID = "TW9kZWw6MTplbXVs"
EVALUATOR_ID = "RXZhbHVhdG9yOjE6ZW11bA=="
JOB_TERMINAL = ("completed", "failed", "cancelled", "completed_with_errors")
POLL_METRIC = "evalgate_upstream_requests_total"
TASK_RUN_PATH = re.compile(r"^/v2/task-runs/[^/?]+(\?.*)?$")

SCENARIOS = {
    "a": ("1 SDK watcher, direct to Arize (baseline)", "direct"),
    "b": ("1 SDK watcher through evalgate", "evalgate"),
    "c": ("{n} SDK watchers through evalgate, same run", "evalgate"),
    "d": ("managed run (`POST /v1/jobs`), no SDK watcher", "managed"),
}


def log(scenario, message):
    print(f"[{time.strftime('%H:%M:%S')}] {scenario}: {message}", flush=True)


class CountingProxy:
    """A plain HTTP/1.1 reverse proxy in front of the Arize emulator that counts what arrives:
    `GET /v2/task-runs/{id}` (the run-status poll) apart from every other request."""

    HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
           "content-length", "host"}

    def __init__(self, upstream):
        host, port = upstream.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.lock = threading.Lock()
        self.polls = 0
        self.other = []  # (method, path) of every other request
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.count(self.command, self.path)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP}
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status, response.reason)
                for k, v in response.getheaders():
                    if k.lower() not in proxy.HOP and k.lower() not in ("date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, method, path):
        with self.lock:
            if method == "GET" and TASK_RUN_PATH.match(path):
                self.polls += 1
            else:
                self.other.append((method, path.split("?")[0]))

    def snapshot(self):
        with self.lock:
            return self.polls, len(self.other)

    def others_since(self, mark):
        with self.lock:
            return list(self.other[mark:])

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def arize_polls_metric(admin):
    """`evalgate_upstream_requests_total` for Arize by outcome (a counter is absent until first used)."""
    with urllib.request.urlopen(admin + "/metrics", timeout=10) as response:
        text = response.read().decode()
    by_outcome = {}
    for line in text.splitlines():
        m = re.match(POLL_METRIC + r"\{([^}]*)\}\s+(\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("upstream") == "arize":
            by_outcome[labels.get("outcome", "")] = by_outcome.get(labels.get("outcome", ""), 0) + int(float(m.group(2)))
    return by_outcome


def arize_client(key, hostport):
    from arize import ArizeClient

    host, port = hostport.removeprefix("http://").rsplit(":", 1)
    return ArizeClient(api_key=key, api_scheme="http", api_host=host, api_port=int(port))


def create_task(tasks):
    from arize._generated.api_client.models.span_evaluator_input import SpanEvaluatorInput
    from arize.tasks.types import TaskEvaluatorInput, TaskType

    evaluator = TaskEvaluatorInput(
        SpanEvaluatorInput(evaluator_id=EVALUATOR_ID, column_mappings={"input": "attributes.input.value"})
    )
    return tasks.create_evaluation_task(
        name=f"bench-polls-{uuid.uuid4().hex[:10]}", task_type=TaskType.TEMPLATE_EVALUATION,
        evaluators=[evaluator], project=PROJECT_ID, sampling_rate=1.0, is_continuous=False,
    )


class Watcher(threading.Thread):
    """One SDK watcher: its own ArizeClient, `wait_for_run` with the SDK defaults, polls counted."""

    def __init__(self, index, key, front, shared, barrier, wait_kwargs):
        super().__init__(daemon=True, name=f"watcher-{index}")
        self.index, self.key, self.front, self.shared, self.barrier = index, key, front, shared, barrier
        self.wait_kwargs = wait_kwargs
        self.polls = 0
        self.status = None
        self.error = None
        self.elapsed = None

    def run(self):
        try:
            tasks = arize_client(self.key, self.front).tasks
            api = tasks._api
            get_task_run = api.get_task_run

            def counted(*args, **kwargs):
                self.polls += 1
                return get_task_run(*args, **kwargs)

            api.get_task_run = counted  # wait_for_run calls self._api.get_task_run once per poll
            self.barrier.wait(timeout=120)
            started = time.monotonic()
            try:
                run = tasks.wait_for_run(run_id=self.shared["run_id"], **self.wait_kwargs)
                self.status = getattr(run.status, "value", run.status)
            finally:
                self.elapsed = time.monotonic() - started
        except Exception as error:  # reported per watcher
            self.error = f"{type(error).__name__}: {error}"


def run_scenario(args):
    scenario = args.scenario
    label, via = SCENARIOS[scenario]
    n_watchers = {"a": 1, "b": 1, "c": args.watchers, "d": 0}[scenario]
    label = label.format(n=n_watchers)
    work = tempfile.mkdtemp(prefix=f"arize-polls-{scenario}-")
    logs = args.logs or work
    os.makedirs(logs, exist_ok=True)
    procs, proxy = [], None
    result = {"scenario": scenario, "label": label, "watchers": n_watchers, "run_seconds": args.run_seconds,
              "start_delay": args.start_delay, "errors": []}
    try:
        emulator = Proc(
            [EMULATOR_BIN, "--listen", "127.0.0.1:0", "--api-key", VALIQOR_KEY, "--arize-listen", "127.0.0.1:0",
             "--arize-api-key", PLATFORM_KEY, "--arize-run-duration", f"{args.run_seconds}s"],
            log_path=os.path.join(logs, f"{scenario}-emulator.log"),
            keep=200,
        )
        procs.append(emulator)
        valiqor = emulator.wait_for(lambda l: (m := re.match(r"listening on (http://127\.0\.0\.1:\d+)", l)) and m.group(1))
        arize = emulator.wait_for(lambda l: (m := re.match(r"arize listening on (http://127\.0\.0\.1:\d+)", l)) and m.group(1))
        proxy = CountingProxy(arize)
        admin = api = None
        if via == "direct":
            front, key = proxy.url, PLATFORM_KEY
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("EVALGATE", "ARIZE"))}
            env.update({
                "EVALGATE__SERVER__LISTEN": "127.0.0.1:0",
                "EVALGATE__SERVER__ADMIN_LISTEN": "127.0.0.1:0",
                "EVALGATE__ARIZE__LISTEN": "127.0.0.1:0",
                "EVALGATE__ARIZE__BASE_URL": proxy.url,
                "EVALGATE__ARIZE__API_KEY": PLATFORM_KEY,
                "EVALGATE__VALIQOR__BASE_URL": valiqor,
                "EVALGATE__VALIQOR__API_KEY": VALIQOR_KEY,
                "EVALGATE__STORE__PATH": os.path.join(work, "evalgate.db"),
                "EVALGATE__TELEMETRY__FORMAT": "json",
                "RUST_LOG": "info",
            })
            gateway = Proc([EVALGATE_BIN], env=env, log_path=os.path.join(logs, f"{scenario}-evalgate.log"), keep=200)
            procs.append(gateway)
            listening = gateway.wait_for(json_field("message", "listening"))
            if not listening.get("arize_listen"):
                raise RuntimeError(f"evalgate's listening line has no arize_listen: {listening}")
            api, admin = "http://" + listening["listen"], "http://" + listening["admin_listen"]
            front, key = "http://" + listening["arize_listen"], CALLER_KEY
            wait_ready(admin)

        tasks = arize_client(key, front).tasks
        task = create_task(tasks)
        shared = {}
        wait_kwargs = {}
        if args.poll_interval is not None:
            wait_kwargs["poll_interval"] = args.poll_interval
        if args.sdk_timeout is not None:
            wait_kwargs["timeout"] = args.sdk_timeout
        barrier = threading.Barrier(n_watchers + 1)
        watchers = [Watcher(i, key, front, shared, barrier, wait_kwargs) for i in range(n_watchers)]
        for w in watchers:
            w.start()

        metric_before = arize_polls_metric(admin) if admin else {}
        proxy_before = proxy.snapshot()
        if via == "managed":
            code, accepted = http_json("POST", api + "/v1/jobs", {"kind": "arize_task_run", "task": task.id})
            if code != 202:
                raise RuntimeError(f"POST /v1/jobs answered {code}: {accepted}")
            shared["run_id"], job_id = accepted["run_id"], accepted["job_id"]
        else:
            run = tasks.trigger_run(task=task.id)
            shared["run_id"] = run.id
        triggered = time.monotonic()
        metric_after_trigger = arize_polls_metric(admin) if admin else {}
        proxy_after_trigger = proxy.snapshot()
        log(scenario, f"task {task.id} run {shared['run_id']} triggered; {n_watchers} watcher(s)")

        deadline = triggered + args.run_seconds + args.start_delay + 300
        if via == "managed":
            status = view = None
            while time.monotonic() < deadline:
                code, view = http_json("GET", f"{api}/v1/jobs/{job_id}?wait=60s")
                if code != 200:
                    raise RuntimeError(f"GET /v1/jobs/{job_id} answered {code}: {view}")
                status = view["status"]
                if status in JOB_TERMINAL:
                    break
            result["final_status"] = status
            result["job_id"] = job_id
            result["wall_seconds"] = round(time.monotonic() - triggered, 1)
        else:
            time.sleep(max(0.0, triggered + args.start_delay - time.monotonic()))
            barrier.wait(timeout=120)
            for w in watchers:
                w.join(timeout=max(1.0, deadline - time.monotonic()))
            alive = [w.index for w in watchers if w.is_alive()]
            if alive:
                result["errors"].append(f"{len(alive)} watcher(s) still polling at the deadline")
            polls = [w.polls for w in watchers]
            result["sdk_polls"] = {"min": min(polls), "max": max(polls), "mean": round(statistics.mean(polls), 2),
                                   "total": sum(polls)}
            statuses = {}
            for w in watchers:
                s = w.status or (w.error or "unfinished").split(":")[0]
                statuses[s] = statuses.get(s, 0) + 1
            result["final_status"] = ", ".join(f"{k} ×{v}" if len(watchers) > 1 else k for k, v in statuses.items())
            errors = sorted({w.error for w in watchers if w.error})
            result["errors"] += errors[:5]
            elapsed = [w.elapsed for w in watchers if w.elapsed is not None]
            result["watch_seconds"] = round(max(elapsed), 1) if elapsed else None
        time.sleep(args.settle)  # anything still in flight lands before the last reading

        proxy_end = proxy.snapshot()
        start = proxy_before if via == "managed" else proxy_after_trigger
        others = proxy.others_since(start[1])
        result["arize_other_requests"] = others
        result["arize_polls_seen"] = proxy_end[0] - start[0]
        if via == "managed":
            result["polls_before_202_read"] = proxy_after_trigger[0] - proxy_before[0]
            expected = [("GET", f"/v2/tasks/{task.id}"), ("POST", f"/v2/tasks/{task.id}/trigger")]
        else:
            expected = []
        if admin:
            metric_end = arize_polls_metric(admin)
            base = metric_before if via == "managed" else metric_after_trigger
            calls = metric_end.get("response", 0) - base.get("response", 0)
            result["upstream_calls"] = calls
            result["upstream_polls"] = calls - len(others)
            result["upstream_failed_calls"] = {k: v - base.get(k, 0) for k, v in metric_end.items()
                                               if k != "response" and v - base.get(k, 0)}
            if result["upstream_failed_calls"]:
                result["errors"].append(f"failed upstream calls: {result['upstream_failed_calls']}")
            if calls != result["arize_polls_seen"] + len(others):
                result["errors"].append(
                    f"evalgate counted {calls} Arize calls in the window, the Arize port saw "
                    f"{result['arize_polls_seen']} polls and {len(others)} other requests")
        else:
            result["upstream_polls"] = result["sdk_polls"]["total"]
            if result["upstream_polls"] != result["arize_polls_seen"]:
                result["errors"].append(f"the SDK counted {result['upstream_polls']} polls, the Arize port saw "
                                        f"{result['arize_polls_seen']}")
        decoded = [(m, urllib.parse.unquote(p)) for m, p in others]
        if decoded != expected:
            result["errors"].append(f"unexpected other Arize requests in the window: {others}")
        log(scenario, f"done: {json.dumps(result)}")
    except BaseException as error:
        result["errors"].append(f"{type(error).__name__}: {error}")
        raise
    finally:
        for p in reversed(procs):
            code = p.stop()
            if code not in (0, None):
                result["errors"].append(f"{os.path.basename(p.proc.args[0])} exited with {code}")
        if proxy:
            proxy.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
    return 1 if result["errors"] else 0


def table(paths):
    results = []
    for path in paths:
        with open(path) as f:
            results.append(json.load(f))
    results.sort(key=lambda r: r["scenario"])
    lines = [
        "| scenario | watchers | SDK polls per watcher | SDK polls sent (all watchers) | polls reaching Arize per run | seen at the Arize port | final status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sdk = r.get("sdk_polls")
        if sdk:
            per = str(sdk["min"]) if sdk["min"] == sdk["max"] else f"{sdk['min']}–{sdk['max']} (mean {sdk['mean']})"
            total = f"{sdk['total']:,}"
            if r["scenario"] != "a":
                total += " (to evalgate)"
        else:
            per, total = "—", "—"
        upstream = r.get("upstream_polls")
        upstream = "?" if upstream is None else f"**{upstream:,}**"
        seen = r.get("arize_polls_seen")
        seen = "?" if seen is None else f"{seen:,}"
        lines.append(f"| {r['scenario']}. {r['label']} | {r['watchers']} | {per} | {total} | {upstream} | {seen} | "
                     f"{r.get('final_status')} |")
    print("\n".join(lines))
    problems = [(r["scenario"], e) for r in results for e in r.get("errors", [])]
    for scenario, error in problems:
        print(f"\nscenario {scenario}: {error}")
    for r in results:
        if r.get("arize_other_requests"):
            calls = ", ".join(f"{m} {urllib.parse.unquote(p)}" for m, p in r["arize_other_requests"])
            print(f"\nscenario {r['scenario']}: besides the polls, Arize received {calls} (the trigger; not counted "
                  f"as polls); {r.get('polls_before_202_read', 0)} poll(s) arrived before the 202 was read")
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario")
    run.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    run.add_argument("--run-seconds", type=int, default=600, help="the Arize emulator's run duration")
    run.add_argument("--watchers", type=int, default=100, help="SDK watchers in scenario c")
    run.add_argument("--start-delay", type=float, default=2.0, help="seconds from the trigger to the watchers' start")
    run.add_argument("--settle", type=float, default=2.0, help="seconds waited before the last reading")
    run.add_argument("--poll-interval", type=float, help="wait_for_run poll_interval (default: the SDK's, 5.0)")
    run.add_argument("--sdk-timeout", type=float, help="wait_for_run timeout (default: the SDK's, 600)")
    run.add_argument("--out", help="write the result here as JSON")
    run.add_argument("--logs", help="keep the emulator and evalgate logs in this directory")
    tab = sub.add_parser("table", help="print the Markdown table of results")
    tab.add_argument("results", nargs="+")
    args = parser.parse_args()
    if args.command == "table":
        return table(args.results)
    os.environ["ARIZE_LOG_ENABLE"] = "false"  # read when `arize` is imported: no prerelease warnings on stdout
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the children
    return run_scenario(args)


if __name__ == "__main__":
    sys.exit(main())
