#!/usr/bin/env bash
# Build the wheel, install it (not editable) into a fresh virtual environment and use it as a new user would, from
# a folder outside the checkout: --help, --version, the offline demo, evaluation of its folder, a 3D run and its export.
#   scripts/check_wheel.sh [WORKDIR]      (default: a new temporary folder; removed on success)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
python3 -m pip wheel -q --no-deps -w "$work/dist" "$repo"
wheel=$(ls "$work"/dist/rewardsds-*.whl)
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "$wheel"
export WANDB_MODE=offline HF_HUB_OFFLINE=1 PATH="$work/venv/bin:$PATH"
run="$work/user"
mkdir -p "$run" && cd "$run"
rewardsds --help > "$run/help.txt"
grep -q "rewardsds experiment=demo" "$run/help.txt"
rewardsds --help | head -1   # a closed pipe is not an error
rewardsds --version | tee "$run/version.txt"
grep -qx "rewardsds $(basename "$wheel" | cut -d- -f2)" "$run/version.txt"   # the wheel's own version
rewardsds experiment=demo debug=fast hydra.run.dir="$run/demo" | tee "$run/demo.log"
grep -q "| reward_sds |" "$run/demo.log"
test -f "$run/demo/side_by_side.png"
rewardsds experiment=analytic steps=20 logger=csv output.video=false hydra.run.dir="$run/analytic" | tee "$run/analytic.log"
grep -q "final reward" "$run/analytic.log"
rewardsds-eval "$run/analytic" --metrics none
rewardsds experiment=analytic_3d debug=fast steps=4 hydra.run.dir="$run/nerf"
rewardsds export "$run/nerf"
ls "$run/nerf/export"
echo "wheel check passed: $wheel"
[ -n "${1:-}" ] || rm -rf "$work"
