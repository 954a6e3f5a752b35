#!/usr/bin/env bash
# Create (or verify) the isolated venv for face/lip masks: mediapipe 0.10.21, the last release that ships the
# legacy face-mesh model. It never goes into the main venv: its metadata pins numpy<2 and protobuf<5 and pulls
# opencv-contrib-python (clobbering opencv-python-headless's cv2) plus jax/jaxlib (~360 MB, unused here).
# So it is installed --no-deps with exactly what `mp.solutions.face_mesh` imports.
#
#   bash scripts/setup_preprocess_env.sh            # -> .venv-preprocess/ in the repo root
#   STABLEAVATAR_PREPROCESS_VENV=/some/dir bash scripts/setup_preprocess_env.sh
#   PYTHON=python3.12 bash scripts/setup_preprocess_env.sh   # interpreter (3.9-3.12; mediapipe 0.10.21 has no 3.13 wheel)
#
# Idempotent: when the venv exists with the same pins and imports, it returns at once (~0.1 s).
# Prints the venv's python path last; export STABLEAVATAR_PREPROCESS_PYTHON=<that path> if the venv is not the default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STABLEAVATAR_PREPROCESS_VENV:-$ROOT/.venv-preprocess}"
PYTHON="${PYTHON:-python3}"

# Pins: mediapipe's face mesh runs with numpy 1.26 (what it was built against) and needs protobuf<5
# ('FieldDescriptor' object has no attribute 'label' with 5.x); opencv-python-headless 4.11 is the last cv2 that
# supports numpy<2; matplotlib is imported by mp.solutions.drawing_utils.
PINS=(
  "mediapipe==0.10.21"
  "numpy==1.26.4"
  "protobuf==4.25.9"
  "opencv-python-headless==4.11.0.86"
  "absl-py>=2,<3"
  "attrs>=19.1"
  "flatbuffers>=2"
  "matplotlib>=3.8,<4"
)
STAMP="$VENV/.stableavatar-preprocess"
WANT="$(printf '%s\n' "${PINS[@]}")"

check() {
  "$VENV/bin/python" - <<'PY'
import mediapipe as mp, cv2, numpy
assert mp.__version__ == "0.10.21", mp.__version__
mp.solutions.face_mesh.FaceMesh(static_image_mode=True).close()
PY
}

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && "${1:-}" != "--force" ]]; then
  [[ "${1:-}" == "--check" ]] && { check 2>/dev/null && echo "preprocess venv OK"; }
  echo "$VENV/bin/python"
  exit 0
fi

echo "creating the preprocess venv in $VENV (mediapipe 0.10.21, ~400 MB) ..." >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# what the face mesh imports (pinned), then mediapipe without its declared deps (jax, jaxlib,
# opencv-contrib-python, sounddevice, sentencepiece: unused by the face mesh; `pip check` will name them).
"${PIP[@]}" "${PINS[@]:1}"
"${PIP[@]}" --no-deps "${PINS[0]}"
check 2>/dev/null || { echo "the preprocess venv in $VENV does not import mediapipe's face mesh" >&2; exit 1; }
printf '%s\n' "$WANT" > "$STAMP"
echo "$VENV/bin/python"
