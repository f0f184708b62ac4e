"""The cluster launch files: what can run here runs (a two-process Ray cluster on loopback,
the SLURM script under a faked SLURM), the rest is checked for syntax and required fields."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml
from helpers import (
    RAY,
    ROOT,
    free_port,
    in_process,
    ray_temp_dir,
    start_ray,
    stop_ray,
    stop_shared_ray,
)

CLUSTER = ROOT / "cluster"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
ENV.pop("RAY_ADDRESS", None)


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


@pytest.mark.e2e
def test_search_on_a_two_process_ray_cluster(tmp_path):
    # Two `ray start` processes of this test's own (its temporary folder, stopped by their
    # process, not by `ray stop`, which would stop every Ray on the machine).
    # The CLI runs in this process (`in_process`).
    port, temp = free_port(), ray_temp_dir()
    blocks = []
    try:
        blocks.append(start_ray(temp, "--head", "--port", str(port), "--num-cpus", "1",
                                "--include-dashboard", "false", env=ENV, log="head.log"))
        blocks.append(start_ray(temp, "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                                env=ENV, log="worker.log"))
        proc = in_process("run", "spaces/smoke.yaml", "--storage", str(tmp_path),
                          "--address", f"127.0.0.1:{port}", "--set", "lr_finder.enabled=false",
                          "--set", "tracking.plots=false", "--set", "train.epochs=1",
                          "--set", "train.val_hd95=false", env=ENV)
    finally:
        stop_ray(temp, *blocks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray: 2 node(s), 2.0 CPUs" in proc.stderr
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and summary["soups"]["greedy"]["test_dice"] >= 0


def own_process_view() -> list[str]:
    """A command prefix that runs a command in a PID namespace of its own, as on a SLURM node
    of the job's own: `ray symmetric-run` refuses to start while `ps` shows any Ray on the
    machine (the session's, another test worker's). Empty where no namespace can be made (not
    root, no user namespaces): the session's Ray is stopped instead, and the test is skipped
    if another Ray still runs (another test worker's: `-n 0` runs the suite in one process)."""
    for prefix in (["unshare", "--pid", "--fork", "--mount-proc"],
                   ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
                return prefix
        except FileNotFoundError:
            break
    stop_shared_ray()
    from ray._private.services import find_gcs_addresses  # what `ray symmetric-run` checks

    if find_gcs_addresses():
        pytest.skip("another Ray runs on this machine and no PID namespace can be made")
    return []


@pytest.mark.e2e
def test_slurm_symmetric_run_script_under_a_faked_slurm(tmp_path):
    isolated = own_process_view()
    shims = tmp_path / "bin"
    shims.mkdir()
    # Ray of the test's own: RAY_TMPDIR gives its processes a folder of their own, where
    # `ray start` writes the address that `--address auto` reads (not /tmp/ray, where another
    # Ray on this machine may be the latest). `ray symmetric-run` ends with `ray stop`, which
    # stops every Ray on the machine: the `ray` shim stops this test's Ray instead.
    temp = ray_temp_dir()
    stop = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import helpers; " \
        f"helpers.stop_ray({temp!r})"
    (shims / "ray").write_text(f'#!/bin/bash\nif [[ "$1" == stop ]]; then\n'
                               f'  exec {sys.executable} -c "{stop}"\nfi\nexec {RAY} "$@"\n')
    (shims / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    # srun on one node: drop its options, run the command here (the shims first again: the
    # script's venv activation put the venv's `ray` before them).
    (shims / "srun").write_text('#!/bin/bash\nwhile [[ $# -gt 0 ]]; do case "$1" in\n'
                                '  -w) shift 2;; -*) shift;; *) break;; esac; done\n'
                                f'PATH="{shims}:$PATH" exec "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {**ENV, "PATH": f"{shims}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "2",
           "SLURM_GPUS_ON_NODE": "0", "SEGTUNE_VENV": str(ROOT / ".venv"),
           "SEGTUNE_STORAGE": str(tmp_path / "runs"), "RAY_PORT": str(free_port()),
           "RAY_TMPDIR": temp}
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        env["SEGTUNE_VENV"] = str(tmp_path / "venv")
        (tmp_path / "venv" / "bin").mkdir(parents=True)
        (tmp_path / "venv" / "bin" / "activate").write_text("")  # the running interpreter
        env["PATH"] = f"{shims}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    try:
        proc = subprocess.run([*isolated, "bash",
                               str(CLUSTER / "slurm" / "segtune-symmetric.sbatch"),
                               "spaces/smoke.yaml", "--name", "slurm",
                               "--set", "lr_finder.enabled=false", "--set", "train.epochs=1",
                               "--set", "tracking.plots=false", "--set", "soup.enabled=false",
                               "--set", "train.val_hd95=false"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        stop_ray(temp)  # whatever the script's own stop left
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "segtune: head localhost (127.0.0.1:" in out and "On head node" in out
    summary = json.loads((tmp_path / "runs" / "slurm" / "summary.json").read_text())
    assert len(summary["trials"]) == 2
