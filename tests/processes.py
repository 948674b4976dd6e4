"""Tests that start a test file again as processes: training runs to kill,
or the workers of a MultiWorkerMirroredStrategy cluster on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))


def free_ports(count: int) -> list[int]:
    """`count` ports on 127.0.0.1 that are free now."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start(script: str, *arguments) -> subprocess.Popen:
    """Starts `python script arguments...` on the CPU, quiet, with the
    repository and `tests/` importable; its output is piped."""
    path = [os.path.dirname(TESTS), TESTS, os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(path),
    }
    return subprocess.Popen(
        [sys.executable, script, *map(str, arguments)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(processes: list, timeout: float = 300) -> None:
    """Waits for `processes` (killing those still running after `timeout`);
    asserts each exited with 0."""
    try:
        outputs = [p.communicate(timeout=timeout)[0].decode() for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:  # hung: the workers disagreed on steps
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]


def join_cluster(index: int, ports: str) -> None:
    """Makes this process worker `index` of the workers on the comma-separated
    `ports` of 127.0.0.1 (`TF_CONFIG`)."""
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports.split(",")]},
            "task": {"type": "worker", "index": index},
        }
    )
