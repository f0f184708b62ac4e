"""The cluster launch files: what can run here runs (a two-process Ray cluster on loopback,
the SLURM script under a faked SLURM), the rest is checked for syntax and required fields."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

CLUSTER = ROOT / "cluster"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
RAY = str(Path(sys.executable).parent / "ray")  # the CLI of the Ray this Python runs


def test_launch_files_parse_and_name_what_they_need():
    for path in [*CLUSTER.glob("k8s/*.yaml"), *CLUSTER.glob("cloud/*.yaml")]:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path
    job = yaml.safe_load((CLUSTER / "k8s" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    assert "python -m search run" in job["spec"]["entrypoint"]
    assert "--address auto" in job["spec"]["entrypoint"]
    mounts = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert mounts[0]["persistentVolumeClaim"]["claimName"] == "segtune-runs"
    pvc = yaml.safe_load((CLUSTER / "k8s" / "storage.yaml").read_text())
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for script in CLUSTER.glob("slurm/*.sbatch"):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.stat(script).st_mode & stat.S_IXUSR
    assert (CLUSTER / "README.md").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_search_on_a_two_process_ray_cluster(tmp_path):
    port = free_port()
    ray = [RAY]
    try:
        subprocess.run([*ray, "start", "--head", "--node-ip-address", "127.0.0.1",
                        "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false"],
                       env=ENV, check=True, capture_output=True, timeout=120)
        subprocess.run([*ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1"],
                       env=ENV, check=True, capture_output=True, timeout=120)
        proc = subprocess.run(
            [sys.executable, "-m", "search", "run", "spaces/smoke.yaml", "--storage",
             str(tmp_path), "--address", f"127.0.0.1:{port}", "--set",
             "lr_finder.enabled=false"],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run([*ray, "stop", "--force"], env=ENV, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray: 2 node(s), 2.0 CPUs" in proc.stderr
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and summary["soups"]["greedy"]["test_dice"] >= 0


@pytest.mark.e2e
def test_slurm_symmetric_run_script_under_a_faked_slurm(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    # srun on one node: drop its options, run the command here.
    (shims / "srun").write_text('#!/bin/bash\nwhile [[ $# -gt 0 ]]; do case "$1" in\n'
                                '  -w) shift 2;; -*) shift;; *) break;; esac; done\n'
                                'exec "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {**ENV, "PATH": f"{shims}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "2",
           "SLURM_GPUS_ON_NODE": "0", "SEGTUNE_VENV": str(ROOT / ".venv"),
           "SEGTUNE_STORAGE": str(tmp_path / "runs"), "RAY_PORT": str(free_port())}
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        env["SEGTUNE_VENV"] = str(tmp_path / "venv")
        (tmp_path / "venv" / "bin").mkdir(parents=True)
        (tmp_path / "venv" / "bin" / "activate").write_text("")  # the running interpreter
        env["PATH"] = f"{shims}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    proc = subprocess.run(["bash", str(CLUSTER / "slurm" / "segtune-symmetric.sbatch"),
                           "spaces/smoke.yaml", "--name", "slurm"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    subprocess.run([RAY, "stop", "--force"], env=ENV,
                   capture_output=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "segtune: head localhost (127.0.0.1:" in out and "On head node" in out
    summary = json.loads((tmp_path / "runs" / "slurm" / "summary.json").read_text())
    assert len(summary["trials"]) == 2
