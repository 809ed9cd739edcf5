"""Shared benchmark helpers: timing, percentiles, the machine line, result printing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).parent / "out"


def machine() -> str:
    cpu = memory = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return (f"{os.cpu_count()} cores{f' ({cpu})' if cpu else ''}{memory}, {platform.python_implementation()} "
            f"{platform.python_version()}, {platform.machine()}")


def best_of(repeats: int, fn: Callable[[], None]) -> float:
    """Fastest wall time of `repeats` runs, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 50) * 1000, "p99_ms": percentile(samples, 99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000, "n": len(samples),
    }


def report(name: str, result: dict) -> None:
    result = {"bench": name, "machine": machine(), **result}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- child processes: the real `aitrail` commands --------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def aitrail_env(**settings: str) -> dict[str, str]:
    """This environment without any AITRAIL_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITRAIL_")}
    env.update(settings)
    return env


def aitrail(*args: str, env: dict[str, str]) -> str:
    """Run an `aitrail` command to completion; its stdout."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "aitrail.cli", *args], env=env, capture_output=True, text=True,
                            timeout=180, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"aitrail {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout.strip()


class Service:
    """One long-running `aitrail` command in a child process, logging to `log_path`."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, ready_url: str) -> None:
        import subprocess
        import sys

        self.args, self.log_path = args, log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen([sys.executable, "-m", "aitrail.cli", *args], env=env, stdout=self._log,
                                      stderr=self._log, cwd=REPO)
        try:
            wait_until(lambda: ready(ready_url) or self.popen.poll() is not None, 120, f"aitrail {args[0]} ready")
            if self.popen.poll() is not None:
                raise RuntimeError(f"aitrail {args[0]} exited: {log_path.read_text(errors='replace')[-3000:]}")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 60) -> None:
        import signal
        import subprocess

        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(30)
        self._log.close()


def drop_opensearch_layout(url: str, prefix: str) -> None:
    """Remove every index, template and script of one index prefix (as tests/conftest.py).
    Only ever our own: benchmark prefixes start with `bench`."""
    from opensearchpy import OpenSearch

    if not prefix.startswith("bench") or "*" in prefix:
        raise ValueError(f"not a benchmark index prefix: {prefix!r}")

    client = OpenSearch([url])
    try:
        client.indices.delete(index=f"{prefix}-*", params={"ignore": 404, "expand_wildcards": "all"})
        client.indices.delete_index_template(name=f"{prefix}-records", params={"ignore": 404})
        client.delete_script(id=f"{prefix}-answers-merge", params={"ignore": 404})
    finally:
        client.close()
