#!/usr/bin/env bash
# The comparison of `benchmarks/adjoints.py` on a GPU, sized for under five minutes:
# every adjoint up to 2,000 steps, 5 repeats. The results (results.json, adjoints.png
# and the printed tables in log.txt) go to benchmarks/results/<device>/, for example
# benchmarks/results/nvidia-h200/, named after `jax.devices()[0].device_kind`; the CPU
# results in benchmarks/results/ stay as they are.
#
#   bash benchmarks/gpu.sh                   # on a machine with an NVIDIA GPU
#   bash benchmarks/gpu.sh --wheelhouse DIR  # installing jax from DIR, offline
#   bash benchmarks/gpu.sh --cpu             # the same pipeline on the CPU, tiny sizes
#   bash benchmarks/gpu.sh -- --repeats 7    # more options for adjoints.py
#
# Options:
#   --cpu             run on the CPU, at tiny sizes (a check of this script), and write
#                     to a temporary folder unless --results is given
#   --wheelhouse DIR  install jax and the benchmark's needs from DIR alone (see below)
#   --python PY       the Python to use, or to make the virtual environment with
#                     (default: python3)
#   --venv DIR        the virtual environment to install into (default: .venv-gpu)
#   --results DIR     write to DIR/<device>/ (default: benchmarks/results)
#
# Which jax it runs with:
# 1. With --wheelhouse DIR: --venv's, with jax[cuda12] installed from DIR without
#    network. On a machine with network, fill DIR with
#        pip download -d DIR -c constraints.txt \
#            "jax[cuda12]" diffrax equinox jaxtyping matplotlib
#    (constraints.txt pins jax and jaxlib: this is `jax[cuda12]==0.10.2`). For a GPU
#    machine whose Python or platform differs, add, for example,
#        --only-binary=:all: --python-version 3.12 \
#            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
# 2. Otherwise --python's, or else --venv's if it exists, if it sees a GPU and has
#    diffrax, equinox, jaxtyping and matplotlib: a CUDA build of jax already installed
#    is used as it is, whatever its version.
# 3. Otherwise --venv's, with `pip install -c constraints.txt "jax[cuda12]" ...` (needs
#    network).
# The package is imported from this checkout, without installing it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cpu=false
wheelhouse=""
python=python3
venv="$root/.venv-gpu"
results=""
while (($#)); do
    case "$1" in
    --cpu) cpu=true ;;
    --wheelhouse) wheelhouse="$(cd "$2" && pwd)" && shift ;;
    --python) python="$2" && shift ;;
    --venv) venv="$2" && shift ;;
    --results) results="$2" && shift ;;
    --) shift && break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
    *) echo "$0: unknown option $1 (--help lists them)" >&2 && exit 2 ;;
    esac
    shift
done

if $cpu; then
    export JAX_PLATFORMS=cpu
    platform=cpu
    jax_requirement=jax
    sizes=(--quick --problems mlp --repeats 1)
    results="${results:-$(mktemp -d)}"
else
    platform=gpu
    jax_requirement="jax[cuda12]"
    sizes=(--max-steps 2000 --repeats 5)
    results="${results:-$root/benchmarks/results}"
fi
needs=("$jax_requirement" diffrax equinox jaxtyping matplotlib)

# The name of the first device, as a folder name ("NVIDIA H200" -> "nvidia-h200"), if
# Python $1 runs the benchmark on the wanted platform; else fails, saying why.
probe() {
    "$1" - "$platform" <<'EOF'
import re
import sys

import diffrax, equinox, jaxtyping, matplotlib  # noqa: F401, E401
import jax

device = jax.devices()[0]
if device.platform != sys.argv[1]:
    sys.exit(f"jax {jax.__version__} runs on {device.platform}, not {sys.argv[1]}")
print(re.sub("[^a-z0-9]+", "-", device.device_kind.lower()).strip("-"))
EOF
}

# pip install $needs into --venv, with the arguments given ahead of them.
install() {
    if [[ ! -x "$venv/bin/python" ]]; then
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet "$@" -c "$root/constraints.txt" \
        "${needs[@]}"
}

why="$(mktemp)"
trap 'rm -f "$why"' EXIT
if [[ -n "$wheelhouse" ]]; then
    echo "installing ${needs[*]} from $wheelhouse into $venv" >&2
    install --no-index --find-links "$wheelhouse"
    py="$venv/bin/python"
elif device="$(probe "$python" 2>"$why")"; then
    py="$python"
elif [[ -x "$venv/bin/python" ]] && device="$(probe "$venv/bin/python" 2>>"$why")"; then
    py="$venv/bin/python"
else
    echo "no ready jax on $platform ($(tail -n 1 "$why")): installing ${needs[*]}" \
        "into $venv" >&2
    install
    py="$venv/bin/python"
fi
if [[ -z "${device:-}" ]] && ! device="$(probe "$py" 2>"$why")"; then
    echo "$0: $py cannot run the benchmark on $platform:" >&2
    cat "$why" >&2
    exit 1
fi

# This checkout, importable with its version (as an editable install would make it).
site="$(mktemp -d)"
trap 'rm -rf "$why" "$site"' EXIT
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml")"
mkdir "$site/reversible_adjoint-$version.dist-info"
printf 'Metadata-Version: 2.1\nName: reversible_adjoint\nVersion: %s\n' "$version" \
    >"$site/reversible_adjoint-$version.dist-info/METADATA"
ln -s "$root/reversible_adjoint" "$site/reversible_adjoint"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

output="$results/$device"
mkdir -p "$output"
start=$SECONDS
"$py" "$root/benchmarks/adjoints.py" "${sizes[@]}" --output "$output" "$@" 2>&1 |
    tee "$output/log.txt"
echo "took $((SECONDS - start)) s on $device; results in $output"
