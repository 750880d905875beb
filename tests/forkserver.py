"""A fork server for the CLI tests: ``python <script> overrides...`` without paying the imports each time.

Every CLI test runs a real entry script (``train.py``, ``eval.py``, ...) in its own process. Starting Python
and importing torch, Lightning, timm and vit-ft costs ~8 s of CPU per process, which made up most of the
suite's time. This server imports those libraries once (per pytest worker) and then ``fork()``s one child
per command. The child is a fresh process from the command's point of view: its own pid and process group,
its working directory, its environment, its ``sys.argv``, file descriptors 0/1/2 pointing at /dev/null and
two capture files, the script executed as ``__main__`` (``runpy.run_path``), and a normal interpreter exit
(non-daemon threads joined, ``atexit`` handlers run) with the script's exit status.

What a forked child cannot reproduce is what happens *while importing*: warnings printed at import time,
and module constants read from the environment at import (``HF_HOME`` in ``huggingface_hub.constants``).
The server is started with the same environment shape as the tests' commands (``clean_env``), and tests
about a process's whole output (``test_quiet_output``) ask for a fresh interpreter (``run_cli(fresh=True)``).
``VIT_FT_TEST_FRESH=1`` turns the server off for a whole test session.

Protocol: one JSON request per line on the server's stdin, one JSON reply per line on a pipe passed to it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in the server process. Kept free of test-suite imports: it must not import pytest.
SERVER = r"""
import json, os, signal, sys, time, runpy, traceback, threading, atexit

PRELOAD = json.loads(sys.argv[1])
for name in PRELOAD:
    try:
        __import__(name)
    except Exception:  # a module that fails to import fails again, visibly, in the child
        pass

REPLY_FD = int(sys.argv[2])
reply = os.fdopen(REPLY_FD, "w", buffering=1)
requests = sys.stdin
reply.write(json.dumps({"ready": os.getpid()}) + "\n")

def run_child(req):
    os.setpgid(0, 0)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(devnull, 0); os.dup2(out, 1); os.dup2(err, 2)
    for fd in (devnull, out, err, REPLY_FD):
        try:
            os.close(fd)
        except OSError:
            pass
    sys.argv = [req["script"], *req["args"]]
    sys.path[0] = os.path.dirname(req["script"])
    code = 0
    try:
        runpy.run_path(req["script"], run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush(); sys.stderr.flush()
    except BaseException:
        traceback.print_exc()
    os._exit(code)

for line in requests:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            run_child(req)
        finally:
            os._exit(70)
    deadline = time.monotonic() + req["timeout"]
    status, timed_out = None, False
    while True:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        if time.monotonic() > deadline:
            timed_out = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    try:  # the command's own children (DDP ranks, loader workers) go with it
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    code = os.waitstatus_to_exitcode(status)
    reply.write(json.dumps({"returncode": code, "timed_out": timed_out}) + "\n")
"""

PRELOAD = [
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "hydra",
    "omegaconf",
    "wandb",
    "vit_ft.tasks.cli",
    "vit_ft.tasks.train",
    "vit_ft.tasks.evaluate",
    "vit_ft.tasks.predict",
    "vit_ft.tasks.export",
]


class ForkServer:
    def __init__(self, env: dict[str, str]) -> None:
        self._dir = tempfile.mkdtemp(prefix="vit-ft-forkserver-")
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, json.dumps(PRELOAD), str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        self._replies = os.fdopen(read_fd, "r")
        ready = self._replies.readline()
        if not ready:
            raise RuntimeError("the CLI fork server did not start")
        self._n = 0
        atexit.register(self.close)

    def close(self) -> None:
        """End the server (its stdin closes, its loop ends) and remove its capture folder."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def run(self, cmd: list[str], cwd: Path, env: dict[str, str], timeout: float):
        self._n += 1
        out, err = Path(self._dir) / f"{self._n}.out", Path(self._dir) / f"{self._n}.err"
        req = dict(
            script=cmd[1],
            args=cmd[2:],
            cwd=str(cwd),
            env=env,
            stdout=str(out),
            stderr=str(err),
            timeout=timeout,
        )
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self._replies.readline()
        if not line:
            raise RuntimeError("the CLI fork server died")
        reply = json.loads(line)
        stdout = out.read_text(errors="replace")
        stderr = err.read_text(errors="replace")
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(cmd, reply["returncode"], stdout, stderr)

    def alive(self) -> bool:
        return self.proc.poll() is None


_server: ForkServer | None = None


def fork_run(cmd: list[str], cwd: Path, env: dict[str, str], server_env: dict[str, str], timeout: float):
    """``subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)`` for
    ``cmd = [python, script, *args]``, forked from a server that has the heavy imports done."""
    global _server
    if _server is None or not _server.alive():
        _server = ForkServer(server_env)
    return _server.run(cmd, cwd, env, timeout)
