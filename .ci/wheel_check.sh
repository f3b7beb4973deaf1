#!/usr/bin/env bash
# The package as users get it: build the sdist and, from it, the wheel; install the wheel into
# a fresh virtualenv (no test extras, run from outside the source tree) and use it: the library
# with torch alone, then the CLI with [cli] alone, then [hf], [tag] and [llm] each on their own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute: the checks run elsewhere
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}  # the Makefile's pin: the CPU wheel, not a CUDA build
PIP=(-m pip install -q --disable-pip-version-check)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --no-isolation: the venv's setuptools builds it, so no build environment is downloaded.
"$PY" -m build --no-isolation --outdir "$work/dist" . >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/advnlp-*.whl)
ls "$work"/dist/advnlp-*.tar.gz >/dev/null
"$PY" - "$wheel" <<'PYEOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert "advnlp/py.typed" in names, "py.typed is not in the wheel"
assert not any(n.startswith(("tests/", "benchmarks/")) for n in names), "test code in the wheel"
PYEOF

# torch once, into a folder that every virtualenv below sees through a .pth file: installing it
# per environment would cost minutes, and pip counts it as installed all the same.
"$PY" "${PIP[@]}" --target "$work/torch" "$TORCH_PIN"
fresh() {  # fresh NAME [EXTRA]: a new virtualenv with the wheel (and that one extra) installed
    local env="$work/env-$1"
    "$PY" -m venv "$env"
    echo "$work/torch" >"$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_torch.pth"
    "$env/bin/python" "${PIP[@]}" "$wheel${2:+[$2]}"
}
cd "$work"  # nothing from the checkout on sys.path from here on

fresh core
"$work/env-core/bin/python" - <<'PYEOF'
import importlib.resources
import torch
from torch import nn
import advnlp

assert "site-packages" in advnlp.__file__, advnlp.__file__
assert importlib.resources.files("advnlp").joinpath("py.typed").is_file()
advnlp.FGM
# One training step with FGM on a tiny embedding classifier: the library needs torch alone.
torch.manual_seed(0)
model = nn.Sequential(nn.Embedding(30, 8), nn.Flatten(), nn.Linear(8 * 5, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
ids, labels = torch.randint(0, 30, (4, 5)), torch.tensor([0, 1, 0, 1])
adv = advnlp.FGM(model, epsilon=1.0)
before = model[2].weight.detach().clone()
loss = adv.backward(lambda: nn.functional.cross_entropy(model(ids), labels))
opt.step()
assert torch.isfinite(loss) and not torch.equal(before, model[2].weight), "no training step"
print(f"core: FGM step ok (clean loss {loss.item():.3f}), torch {torch.__version__}")
PYEOF

fresh cli cli
"$work/env-cli/bin/advnlp" --help >/dev/null
"$work/env-cli/bin/advnlp" train --help >/dev/null
echo "[cli]: advnlp --help, advnlp train --help ok"

check() {  # check EXTRA CODE: the extra alone, in its own virtualenv, imports what it is for
    fresh "$1" "$1"
    "$work/env-$1/bin/python" -c "$2"
    echo "[$1]: ok"
}
check hf 'from advnlp.integrations.transformers import AdversarialTrainer'
check tag 'from advnlp.cli.tasks.tagging.tag import tag_metrics
assert tag_metrics([["B-X", "O"]], [["B-X", "O"]])["entity_f1"] == 1.0'
check llm 'from advnlp.integrations.trl import AdversarialSFTTrainer'
