# Environment for segtune jobs on a SLURM cluster: sourced by the sbatch scripts.
# Edit the first block for your site.

# The segtune virtual environment (on shared storage, visible from every node).
SEGTUNE_VENV="${SEGTUNE_VENV:-$HOME/segtune/.venv}"
# Shared storage for run folders (checkpoints are written there by every node).
SEGTUNE_STORAGE="${SEGTUNE_STORAGE:-$HOME/segtune/runs}"
# An MLflow tracking server (see mlflow-server.sbatch); empty: sqlite in $SEGTUNE_STORAGE.
SEGTUNE_TRACKING_URI="${SEGTUNE_TRACKING_URI:-}"

# module load cuda/12.6   # site modules, if any

# shellcheck disable=SC1091
source "$SEGTUNE_VENV/bin/activate"
export SEGTUNE_CACHE="${SEGTUNE_CACHE:-$SEGTUNE_STORAGE/.cache}"  # the phantom, if used
# One torch thread per CPU Ray gives a trial (segtune sets it); keep BLAS from oversubscribing.
export OMP_NUM_THREADS=1
# Ray's token authentication: the token in ~/.ray/auth_token (a shared home) is used by every
# node; create it once with `ray get-auth-token --generate`.
