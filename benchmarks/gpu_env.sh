# Sourced by benchmarks/gpu_check.sh and gpu_profile.sh: the results folder $OUT and its log
# ($LOG), unbuffered Python, and the packages the GPU machine lacks: a wheel folder given as
# WHEELS is installed into /tmp/site, which goes on PYTHONPATH with the repository (how the folder
# was made: gpu_check.sh's header).
OUT=${OUT:?give OUT, the results folder}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl >>"$LOG" 2>&1 || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
