"""A run killed with SIGKILL resumes from its last checkpoint: the step count goes on."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autoglm.finetune.job import run_dir
from autoglm.supply.registry import Registry
from tests.finetune.conftest import THREADS, link_base, needs_train
from tests.finetune.test_train import small_task

ARGS = ["--name", "resumed", "--max-steps", "8", "--batch-size", "2", "--max-len", "64",
        "--val-fraction", "0.2", "--eval-every", "4", "--checkpoint-every", "2",
        "--threads", str(THREADS)]


def _finetune(data: Path, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "AUTOGLM_DATA_DIR": str(data_dir)}
    return subprocess.Popen([sys.executable, "-m", "autoglm", "finetune", "--data", str(data),
                             *ARGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@needs_train
def test_sigkill_then_resume_continues_from_the_last_checkpoint(tmp_path: Path,
                                                                 bundled_base) -> None:
    data_dir = tmp_path / "data"
    link_base(bundled_base, data_dir)
    data = small_task(tmp_path / "d.jsonl", 10)
    run = run_dir(data_dir, "resumed")
    proc = _finetune(data, data_dir)
    deadline = time.monotonic() + 180
    try:
        while run.latest() is None or run.latest().name < "step-000004":
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no checkpoint at step 4 within 180 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        first = proc.communicate(timeout=30)[0]
    killed_at = int(run.latest().name.removeprefix("step-"))
    assert 4 <= killed_at < 8, first
    assert not Registry(data_dir).list()  # nothing registered by the killed run
    second = _finetune(data, data_dir)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    assert f"resuming from the checkpoint at step {killed_at} of 8" in out
    steps = [int(line.split()[1].split("/")[0]) for line in out.splitlines()
             if line.startswith("step ")]
    assert steps == list(range(killed_at + 1, 9))  # continues, does not restart
    result = json.loads(run.info_path.read_text())["result"]
    assert result["steps"] == 8 and result["resumed_from"] == [killed_at]
    assert Registry(data_dir).get("resumed")["kind"] == "adapter"
