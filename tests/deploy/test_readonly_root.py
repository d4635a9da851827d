"""The container's promise, kept on this machine without Docker: `autoglm serve` started by
the image's entrypoint, with the compose gateway's settings file and secret files, in a
mount namespace where the whole root filesystem is read-only except the data dir and the
temporary dir (as `read_only: true` + a data volume + a /tmp tmpfs). It must become ready,
answer with the admin key from its file, pass the image's HEALTHCHECK script, and stop
cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.support import DEPLOY, ENTRYPOINT, HEALTHCHECK
from tests.e2e.support import MODEL, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.model]

MOUNT_AND_RUN = """set -e
mount --bind "$RO_DATA" "$RO_DATA"
mount --bind "$RO_TMP" "$RO_TMP"
mount -o remount,bind,ro /
if touch /.autoglm-ro-probe 2>/dev/null; then echo "root is writable" >&2; exit 70; fi
unset RO_DATA RO_TMP
exec sh "$ENTRYPOINT" "$@"
"""


def _can_make_read_only_root() -> str | None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) to make a read-only root in a mount namespace"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        "mount -o remount,bind,ro / && ! touch /.autoglm-ro-probe"],
                       check=False, capture_output=True, timeout=30)
    return None if r.returncode == 0 else f"cannot remount / read-only: {r.stderr!r}"


def test_serves_with_a_read_only_root(tmp_path: Path) -> None:
    reason = _can_make_read_only_root()
    if reason:
        pytest.skip(reason)
    secrets = tmp_path / "secrets"
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(secrets)], check=True,
                   capture_output=True, timeout=60)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    # short, as the image's /tmp: the engines' unix socket paths must fit in 108 bytes
    tmp = Path(tempfile.mkdtemp(prefix="agro-", dir="/tmp"))
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HOME": str(data),  # as the image: HOME is the data dir
        "TMPDIR": str(tmp),
        "AUTOGLM_DATA_DIR": str(data),
        "AUTOGLM_HOST": "127.0.0.1",
        "AUTOGLM_PORT": str(port),
        "AUTOGLM_CONFIG": str(DEPLOY / "settings" / "gateway.yaml"),
        "AUTOGLM_KEY_PEPPER_FILE": str(secrets / "key_pepper"),
        "AUTOGLM_ADMIN_KEY_FILE": str(secrets / "admin_key"),
        "AUTOGLM_N_THREADS": "1",
        "RO_DATA": str(data),
        "RO_TMP": str(tmp),
        "ENTRYPOINT": str(ENTRYPOINT),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", MOUNT_AND_RUN, "sh",
             "autoglm", "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(data), start_new_session=True)
    admin = (secrets / "admin_key").read_text().strip()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        with httpx.Client(base_url=base, timeout=30) as http:
            while True:
                assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-3000:]}"
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            hc = subprocess.run([sys.executable, str(HEALTHCHECK)], check=False, capture_output=True,
                                text=True, timeout=30,
                                env={"AUTOGLM_PORT": str(port), "AUTOGLM_HOST": "0.0.0.0"})
            assert hc.returncode == 0, hc.stderr
            r = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {admin}"},
                          json={"model": MODEL, "max_tokens": 4,
                                "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] is not None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "read-only file system" not in log.read_text().lower()
    assert (data / "secrets").is_dir() and (data / "autoglm.db").exists()
