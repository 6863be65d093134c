# SPDX-License-Identifier: GPL-3.0-or-later
"""A real ComfyUI ``main.py`` subprocess with the pack and the test pack installed, and a stdlib HTTP client.

Stdlib only (urllib, subprocess, socket): the pytest process and scripts/demo.py never import torch for it.

    with ComfyServer() as srv:              # boots (see ComfyServer.start) and always stops
        write_server_models(srv.models_dir) # lyco_testkit.server_models
        entry = srv.queue(prompt)           # history entry of a successful run
        png = srv.image(entry)

Boot flags (comfyui-host.md §7.1): ``--cpu --listen 127.0.0.1 --port <free> --disable-auto-launch
--dont-print-server --base-directory <tmp> --database-url sqlite:///:memory: --disable-all-custom-nodes
--whitelist-custom-nodes comfyui-lycoris lyco_test_pack``. The pack (repo root) is symlinked as
``<tmp>/custom_nodes/comfyui-lycoris``, ``tests/test_pack`` as ``<tmp>/custom_nodes/lyco_test_pack``.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from pathlib import Path

from . import host

PACK_FOLDER = "comfyui-lycoris"
TEST_PACK_FOLDER = "lyco_test_pack"
MODEL_FOLDERS = ("checkpoints", "diffusion_models", "unet", "vae", "loras", "text_encoders", "clip",
                 "clip_vision", "embeddings", "upscale_models")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ComfyServerError(RuntimeError):
    """The server failed to boot, died, timed out, or answered unexpectedly. The message ends with the
    server log's tail."""


class PromptValidationError(ComfyServerError):
    """``POST /prompt`` answered 400. ``.body`` is the parsed answer, ``.node_errors`` its node_errors."""

    def __init__(self, message: str, body: dict):
        super().__init__(message)
        self.body = body
        self.node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}


class PromptExecutionError(ComfyServerError):
    """The prompt was queued but its history status is ``error``. ``.entry`` is the history entry and
    ``.execution_error`` the ``execution_error`` message data (node_id, node_type, exception_message, ...)."""

    def __init__(self, message: str, entry: dict):
        super().__init__(message)
        self.entry = entry
        self.execution_error = execution_error(entry)


def execution_error(entry: dict) -> dict | None:
    """The ``execution_error`` message data of a history entry, or None."""
    for msg in (entry.get("status") or {}).get("messages") or []:
        if isinstance(msg, (list, tuple)) and len(msg) == 2 and msg[0] == "execution_error":
            return msg[1]
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and os.path.realpath(dst) == os.path.realpath(src):
            return
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        else:
            dst.unlink()
    dst.symlink_to(src, target_is_directory=src.is_dir())


class ComfyServer:
    """One ComfyUI server process.

    Args:
        base_dir: ``--base-directory``; a fresh temp dir (removed by :meth:`stop`) when None.
        pack_dir: the pack folder, linked as ``custom_nodes/comfyui-lycoris``; None/False to leave it out.
            Defaults to the repo root. A pack without ``__init__.py`` is still linked (ComfyUI skips it).
        test_pack: link ``tests/test_pack`` as ``custom_nodes/lyco_test_pack``.
        extra_args: more ``main.py`` flags (e.g. ``["--cache-none"]``).
        python / comfyui_path: override :func:`host.host_python` / :func:`host.comfyui_path`.
        env: extra environment variables for the server process.
        boot_timeout: seconds to wait for ``/system_stats``.

    Attributes after :meth:`start`: ``url``, ``port``, ``pid``, ``boot_seconds``, ``base_dir``,
    ``models_dir``, ``output_dir``, ``log_path``.
    """

    instances: "weakref.WeakSet[ComfyServer]" = weakref.WeakSet()

    def __init__(self, base_dir: str | os.PathLike | None = None, pack_dir: str | os.PathLike | None | bool = True,
                 test_pack: bool = True, extra_args: list[str] | tuple = (), python: str | None = None,
                 comfyui_path: str | os.PathLike | None = None, env: dict | None = None,
                 boot_timeout: float = 180.0):
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="lyco_comfy_"))
        self.pack_dir = host.REPO_ROOT if pack_dir is True else (Path(pack_dir) if pack_dir else None)
        self.test_pack = test_pack
        self.extra_args = list(extra_args)
        self.python = python or host.host_python()
        self.comfyui_path = Path(comfyui_path) if comfyui_path else host.comfyui_path()
        self.env = dict(env or {})
        self.boot_timeout = boot_timeout
        self.models_dir = self.base_dir / "models"
        self.output_dir = self.base_dir / "output"
        self.log_path = self.base_dir / "comfyui.log"
        self.port: int | None = None
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self.boot_seconds: float | None = None
        self.client_id = uuid.uuid4().hex
        self._log_file = None
        self.prepare()
        ComfyServer.instances.add(self)

    # ---------------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        """Create custom_nodes/ (which must exist, §8.3) with the links, and the models folders."""
        custom = self.base_dir / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        if self.pack_dir is not None:
            _link(self.pack_dir.resolve(), custom / PACK_FOLDER)
        if self.test_pack:
            _link(host.TEST_PACK_DIR.resolve(), custom / TEST_PACK_FOLDER)
        for folder in MODEL_FOLDERS:
            (self.models_dir / folder).mkdir(parents=True, exist_ok=True)
        for folder in ("input", "output", "temp", "user"):
            (self.base_dir / folder).mkdir(exist_ok=True)

    def command(self, port: int) -> list[str]:
        whitelist = [n for n, on in ((PACK_FOLDER, self.pack_dir is not None), (TEST_PACK_FOLDER, self.test_pack))
                     if on]
        cmd = [self.python, str(self.comfyui_path / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(port), "--disable-auto-launch", "--dont-print-server",
               "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
               "--disable-all-custom-nodes"]
        if whitelist:
            cmd += ["--whitelist-custom-nodes", *whitelist]
        return cmd + self.extra_args

    def start(self) -> "ComfyServer":
        """Boot and wait for readiness (``GET /system_stats`` == 200 while the PID lives; no fixed sleeps).
        Retries on another port if the chosen one was taken meanwhile. Raises ComfyServerError with the
        log tail on early exit or timeout (the process group is killed then)."""
        if self.proc is not None:
            return self
        if self.comfyui_path == host.comfyui_path():
            reason = host.comfyui_unavailable_reason()
        else:
            reason = None if (self.comfyui_path / "main.py").is_file() else f"no main.py in {self.comfyui_path}"
        if reason:
            raise ComfyServerError(reason)
        t0 = time.monotonic()
        for attempt in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the repo root must not lead
            env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "DO_NOT_TRACK": "1"})
            env.update(self.env)
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(f"\n=== lyco_testkit: {' '.join(self.command(self.port))}\n".encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(self.command(self.port), cwd=str(self.base_dir), env=env,
                                         stdin=subprocess.DEVNULL, stdout=self._log_file,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            try:
                self._wait_ready(t0 + self.boot_timeout)
            except ComfyServerError:
                port_taken = "address already in use" in self.log_text().lower()
                self._kill()
                if port_taken and attempt < 2:
                    continue
                raise
            self.boot_seconds = time.monotonic() - t0
            return self
        raise ComfyServerError("unreachable")

    def _wait_ready(self, deadline: float) -> None:
        delay = 0.05
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ComfyServerError(f"ComfyUI exited with code {code} during boot "
                                       f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ComfyServerError(f"ComfyUI not ready after {self.boot_timeout:.0f} s "
                                       f"(log {self.log_path}):\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)  # the server's own group (start_new_session)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:  # children left in the group after the leader exited
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, cleanup: bool | None = None) -> None:
        """Kill the process group (always safe to call twice). Removes a temp base dir this object created,
        unless ``cleanup=False`` or env ``LYCO_KEEP_SERVER_DIR=1``."""
        self._kill()
        if cleanup is None:
            cleanup = self._own_dir and os.environ.get("LYCO_KEEP_SERVER_DIR") != "1"
        if cleanup and self.base_dir.exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<ComfyServer {self.url or '(not started)'} pid={self.pid} base={self.base_dir}>"

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        try:
            self._kill()
        except Exception:
            pass

    # ---------------------------------------------------------------- log
    def log_text(self, since: int = 0) -> str:
        """The server log (stdout + stderr), from byte offset ``since`` (see :meth:`log_mark`)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """The log's current size, to pass as ``log_text(since=...)``."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_text()
        return text if len(text) <= chars else "...\n" + text[-chars:]

    # ---------------------------------------------------------------- HTTP
    def request(self, method: str, path: str, body=None, timeout: float = 30.0) -> tuple[int, bytes]:
        """Raw request; returns ``(status, bytes)`` for any HTTP status (4xx/5xx included)."""
        if self.url is None:
            raise ComfyServerError("server not started")
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise ComfyServerError(f"{method} {path} failed: {e} (server alive: {self.alive()}):\n"
                                   f"{self.log_tail()}") from e

    def get(self, path: str, timeout: float = 30.0):
        """GET a route; JSON is parsed, anything else returned as bytes. Raises on non-200."""
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyServerError(f"GET {path} -> {status}: {data[:2000]!r}")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return data

    def post(self, path: str, body=None, timeout: float = 30.0) -> tuple[int, object]:
        """POST JSON; returns ``(status, parsed JSON or bytes)``."""
        status, data = self.request("POST", path, body if body is not None else {}, timeout=timeout)
        try:
            return status, json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return status, data

    def object_info(self, node: str | None = None) -> dict:
        """``/object_info`` (all nodes) or ``/object_info/<node>`` (``{node: info}``, ``{}`` if unknown)."""
        return self.get("/object_info" + (f"/{urllib.parse.quote(node)}" if node else ""))

    def submit(self, prompt: dict, prompt_id: str | None = None) -> str:
        """POST /prompt; returns the prompt id. Raises PromptValidationError on 400."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if prompt_id:
            body["prompt_id"] = prompt_id
        status, answer = self.post("/prompt", body)
        if status == 400:
            raise PromptValidationError(
                f"POST /prompt -> 400: {json.dumps(answer, indent=1)[:6000] if isinstance(answer, dict) else answer!r}",
                answer if isinstance(answer, dict) else {"raw": answer})
        if status != 200 or not isinstance(answer, dict) or "prompt_id" not in answer:
            raise ComfyServerError(f"POST /prompt -> {status}: {answer!r}\n{self.log_tail()}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Poll ``/history/<id>`` until completed or error; returns the history entry. On timeout the prompt
        is interrupted and ComfyServerError raised."""
        t0 = time.monotonic()
        delay = 0.02
        while True:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id) if isinstance(hist, dict) else None
            if entry:
                status = entry.get("status") or {}
                if status.get("completed") or status.get("status_str") == "error":
                    entry.setdefault("prompt_id", prompt_id)
                    entry.setdefault("wall_seconds", time.monotonic() - t0)
                    return entry
            if not self.alive():
                raise ComfyServerError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                self.post("/interrupt", {"prompt_id": prompt_id})
                raise ComfyServerError(f"prompt {prompt_id} not done after {timeout} s:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def queue(self, prompt: dict, timeout: float = 120.0) -> dict:
        """Run an API-format prompt to completion and return its history entry (plus ``prompt_id`` and
        ``wall_seconds``). Raises PromptValidationError (400, with node_errors) or PromptExecutionError."""
        t0 = time.monotonic()
        pid = self.submit(prompt)
        entry = self.wait(pid, timeout)
        entry["wall_seconds"] = time.monotonic() - t0  # POST /prompt -> completed history
        if (entry.get("status") or {}).get("status_str") != "success":
            err = execution_error(entry) or {}
            raise PromptExecutionError(
                f"prompt {pid} failed in node {err.get('node_id')} ({err.get('node_type')}): "
                f"{err.get('exception_type')}: {err.get('exception_message')}\n"
                f"{''.join(err.get('traceback') or [])[-4000:]}", entry)
        return entry

    def queue_expect_error(self, prompt: dict, timeout: float = 120.0) -> dict:
        """Run a prompt that must fail; returns a dict describing the failure:

        - validation (HTTP 400): ``{"stage": "validation", "http_status": 400, "body": ..., "error": body["error"],
          "node_errors": {...}, "entry": None}``
        - execution: ``{"stage": "execution", "http_status": 200, "entry": <history entry>,
          "error": <execution_error data>, "node_errors": {}}``

        Raises AssertionError if the prompt succeeded.
        """
        try:
            pid = self.submit(prompt)
        except PromptValidationError as e:
            return {"stage": "validation", "http_status": 400, "body": e.body, "error": e.body.get("error"),
                    "node_errors": e.node_errors, "entry": None}
        entry = self.wait(pid, timeout)
        if (entry.get("status") or {}).get("status_str") == "success":
            raise AssertionError(f"prompt {pid} was expected to fail but succeeded: {entry.get('outputs')}")
        return {"stage": "execution", "http_status": 200, "body": None, "error": execution_error(entry),
                "node_errors": {}, "entry": entry}

    # ---------------------------------------------------------------- outputs
    @staticmethod
    def image_refs(entry: dict, node_id: str | None = None) -> list[dict]:
        """``[{filename, subfolder, type}, ...]`` of an entry's images (of one output node, or all)."""
        outputs = entry.get("outputs") or {}
        refs = []
        for nid in sorted(outputs, key=lambda k: (len(k), k)):
            if node_id is None or str(node_id) == nid:
                refs += outputs[nid].get("images") or []
        return refs

    def view(self, ref: dict) -> bytes:
        q = urllib.parse.urlencode({"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                                    "type": ref.get("type", "output")})
        status, data = self.request("GET", f"/view?{q}")
        if status != 200:
            raise ComfyServerError(f"GET /view?{q} -> {status}")
        return data

    def images(self, entry: dict, node_id: str | None = None) -> list[bytes]:
        return [self.view(ref) for ref in self.image_refs(entry, node_id)]

    def image(self, entry: dict, node_id: str | None = None, index: int = 0) -> bytes:
        """Bytes (PNG for SaveImage) of one image of a history entry, fetched via ``/view``."""
        refs = self.image_refs(entry, node_id)
        if len(refs) <= index:
            raise ComfyServerError(f"no image #{index} in outputs {entry.get('outputs')}")
        return self.view(refs[index])


@atexit.register
def _kill_leftovers() -> None:  # servers whose owner never called stop() (interrupted runs)
    for srv in list(ComfyServer.instances):
        try:
            srv._kill()
        except Exception:
            pass


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes; raises ValueError if not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
