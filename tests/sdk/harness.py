"""What the SDK tests and the Arize polling benchmark share: child processes whose output is
watched for a line, JSON log-line matchers, readiness, and small JSON-over-HTTP calls.
Standard library only, so any script can import it (`sys.path` holding `tests/sdk`)."""

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request


class Proc:
    """A child process whose output lines are collected on a thread (the first `keep` of them,
    for `wait_for`), and copied to `log_path` when one is given."""

    def __init__(self, argv, env=None, log_path=None, keep=None):
        self.lines = []
        self.keep = keep
        self.cond = threading.Condition()
        self.log = open(log_path, "w") if log_path else None
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if self.log:
                self.log.write(line)
                self.log.flush()
            with self.cond:
                if self.keep is None or len(self.lines) < self.keep:
                    self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    found = predicate(line)
                    if found:
                        return found
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise RuntimeError("did not see the expected line; output:\n" + "\n".join(self.lines[-40:]))
                self.cond.wait(min(remaining, 0.5))

    def stop(self):
        """SIGTERM, then SIGKILL after 20 s; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=10)
        return self.proc.returncode


def json_field(name, value):
    """A `wait_for` predicate: the JSON log line whose `name` is `value`."""

    def match(line):
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) and obj.get(name) == value else None

    return match


def http_get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def http_json(method, url, body=None, timeout=90):
    """(status, parsed JSON) of one request; an error status gives (status, body text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read().decode() or "null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_ready(admin, timeout=20):
    """Polls /readyz until 200 (readiness follows the listeners by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http_get(admin + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("evalgate did not become ready")
        time.sleep(0.05)
