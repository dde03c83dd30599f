#!/usr/bin/env bash
# timm's own model suite (tests/test_models.py of a timm snapshot) on every registered t2t_vit* model.
#
# usage: benchmarks/timm_suite.sh SNAPSHOT [pytest args...]
#   SNAPSHOT  a timm source tree or its git directory (e.g. the `fetch` of
#             github:huggingface/pytorch-image-models); its tests/ run against the *installed* timm.
#   K=expr    pytest -k expression (default: t2t_vit, i.e. every T2T-ViT variant and distilled twin)
#   OUT=dir   where the log and summary go (default: benchmarks/results/timm_suite)
#
# The snapshot's tests folder is copied to a temporary directory and changed only as an upstream PR
# adding T2T-ViT would: a conftest.py that imports t2tvit (registering the models), 't2t_vit_*' added to
# NON_STD_FILTERS (ViT-like models whose features are token sequences, like 'vit_*' and 'deit*'), and
# the module 't2t_vit' added to FEAT_INTER_FILTERS (models with forward_intermediates and
# features_only through FeatureGetterNet, like 'vision_transformer' and 'deit'). Nothing else of the
# suite is edited or skipped.
set -euo pipefail
snap=${1:?usage: benchmarks/timm_suite.sh SNAPSHOT [pytest args...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/benchmarks/results/timm_suite}
k=${K:-t2t_vit}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -f "$snap/tests/test_models.py" ]; then
    cp -r "$snap/tests" "$work/tests"
    rev=$(git -C "$snap" rev-parse HEAD 2>/dev/null || echo unknown)
else
    git --git-dir="$snap" archive HEAD tests | tar -x -C "$work"
    rev=$(git --git-dir="$snap" rev-parse HEAD)
fi
cd "$work/tests"
python - <<'PY'
import pathlib

path = pathlib.Path("test_models.py")
text = path.read_text()
for anchor, entry in (("NON_STD_FILTERS = [\n", "'t2t_vit_*'"), ("FEAT_INTER_FILTERS = [\n", "'t2t_vit'")):
    if anchor not in text:
        raise SystemExit(f"test_models.py has no {anchor.split()[0]} list: a different timm layout, update this script")
    text = text.replace(anchor, f"{anchor}    {entry},\n", 1)
path.write_text(text)
PY
printf 'import t2tvit  # noqa: F401  registers every t2t_vit* model with timm\n' > conftest.py
cat > pytest.ini <<'INI'
[pytest]
markers =
    base: basic model tests
    cfg: config tests
    torchscript: torchscript tests
    features: feature extraction tests
    fxforward: torch.fx forward tests
    fxbackward: torch.fx backward tests
    timeout: per-test timeout (pytest-timeout, when installed)
INI

mkdir -p "$out"
start=$(date +%s)
set +e
python -m pytest test_models.py -q -p no:cacheprovider -k "$k" -rfE --junitxml="$work/junit.xml" "$@" \
    2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
set -e
secs=$(( $(date +%s) - start ))
ours=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
python - "$work/junit.xml" "$out" "$rev" "$secs" "$k" "$*" "$ours" <<'PY'
import json
import os
import platform
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

import timm
import torch

junit, out, rev, secs, k, extra, ours = sys.argv[1:]


def host() -> str:
    """The CPU model, its logical CPUs this run may use, and the instruction-set extensions the numbers depend on."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return f"{model}, {len(os.sched_getaffinity(0))} CPU(s) for this run, {' '.join(isa) or 'no AVX2'}"


rows = []
for case in ET.parse(junit).iter("testcase"):
    state = "passed"
    for tag in ("failure", "error", "skipped"):
        el = case.find(tag)
        if el is not None:
            state = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
            msg = (el.get("message") or "").splitlines()[0][:160] if el.get("message") else ""
            break
    else:
        msg = ""
    if case.get("name"):  # an interrupted run can leave a nameless entry
        rows.append((case.get("name"), state, msg))
counts = defaultdict(int)
per_test = defaultdict(lambda: defaultdict(int))
for name, state, _ in rows:
    counts[state] += 1
    per_test[name.split("[")[0]][state] += 1
states = ("passed", "failed", "error", "skipped")
result = {
    "timm_snapshot": rev,
    "toolkit_commit": ours,
    "host": host(),
    "timm_installed": timm.__version__,
    "torch": torch.__version__,
    "python": platform.python_version(),
    "k": k,
    "pytest_args": extra,
    "seconds": int(secs),
    "total": len(rows),
    **{s: counts[s] for s in states},
    "per_test": {t: dict(c) for t, c in sorted(per_test.items())},
    "cases": [{"test": n, "state": s, "message": m} for n, s, m in rows],
}
with open(f"{out}/result.json", "w") as f:
    json.dump(result, f, indent=1)
command = ("" if k == "t2t_vit" else f"K='{k}' ") + "benchmarks/timm_suite.sh SNAPSHOT" + (f" {extra}" if extra else "")
lines = [
    "# timm's tests/test_models.py on " + ("every t2t_vit* model" if k == "t2t_vit" else f"the models matching `-k {k}`"),
    "",
    f"timm snapshot {rev} (tests only) against installed timm {timm.__version__}, torch {torch.__version__}, "
    f"python {platform.python_version()}, toolkit commit {ours}; {int(secs)} s on {host()}. Command: `{command}`.",
    "",
    f"**{len(rows)} tests: " + ", ".join(f"{counts[s]} {s}" for s in states) + "**",
    "",
    "| test | " + " | ".join(states) + " |",
    "|---|" + "---:|" * len(states),
]
for t, c in sorted(per_test.items()):
    lines.append(f"| {t} | " + " | ".join(str(c.get(s, 0)) for s in states) + " |")
bad = [(n, s, m) for n, s, m in rows if s in ("failed", "error")]
if bad:
    lines += ["", "## Failures", ""] + [f"- `{n}` ({s}): {m}" for n, s, m in bad]
with open(f"{out}/summary.md", "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines[:5]))
PY
exit "$rc"
