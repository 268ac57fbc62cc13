#!/usr/bin/env bash
# Install bld and what it needs on a fresh machine (Python + pip + apt).
#   bash scripts/setup.sh          # the package, torch (CPU build) and Fashion-MNIST
#   bash scripts/setup.sh --test   # the same plus the test tools (pytest, gradio, playwright, Debian's chromium)
#   bash scripts/setup.sh --web    # the same plus the browser app of `bld serve` (gradio)
#   bash scripts/setup.sh --bench  # the same plus the benchmark baselines (diffusers, vector-quantize-pytorch)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test" ;;
    --bench) extras="${extras:+$extras,}bench" ;;
    --web) extras="${extras:+$extras,}web" ;;
    *) echo "setup.sh: unknown option $arg (use --test, --bench and/or --web)" >&2; exit 2 ;;
  esac
done

apt_pkgs=""
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || apt_pkgs="dataset-fashion-mnist"
# the browser test drives Debian's chromium (playwright's own browser download is not used);
# cairosvg (OpenMoji, DiceBear) draws with the system cairo library; DiceBear's faces are
# drawn by Node.js
case ",$extras," in
  *,test,*) command -v chromium >/dev/null || apt_pkgs="${apt_pkgs:+$apt_pkgs }chromium"
            ldconfig -p 2>/dev/null | grep -q libcairo.so.2 || apt_pkgs="${apt_pkgs:+$apt_pkgs }libcairo2"
            command -v node >/dev/null || apt_pkgs="${apt_pkgs:+$apt_pkgs }nodejs" ;;
esac
if [ -n "$apt_pkgs" ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup.sh: need root or sudo to apt-get install $apt_pkgs" >&2; exit 1; }
    sudo=sudo
  fi
  echo "setup.sh: installing Debian packages: $apt_pkgs"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086  # a list of package names
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $apt_pkgs >/dev/null
fi

# torch is pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".${extras:+[$extras]}"
echo "setup.sh: done ($(python3 -c 'import bld, torch; print("bld", bld.__version__, "torch", torch.__version__)'))"
