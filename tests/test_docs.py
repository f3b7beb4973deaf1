"""Every fenced code block in README.md and docs/ runs, so the documentation cannot rot silently.

* ```python blocks are executed, in order, one namespace per file (a page reads top to bottom),
  on tiny stand-ins for the names a snippet uses without defining them (``model``, ``loader``,
  ``tokenizer``, ...: a 2-layer BERT with hidden size 32, a 2-batch loader).
* ```bash blocks are not run (training takes minutes): each ``advnlp`` command line goes through
  the command's own argument parser, abbreviations off, so a renamed or removed flag fails here;
  ``make`` targets must exist in the Makefile, scripts on disk.
* ```text blocks (output, diagrams) are not run. A block preceded by ``<!-- not run: why -->``
  is skipped (the LLM example, which tests/integrations/test_llm_doc.py runs on a tiny Llama).
  A fence with no language is an error: every block says which of these it is.
"""
import contextlib
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
LANGUAGES = ("python", "bash", "text")
NOT_RUN = re.compile(r"<!--\s*not run\b[^>]*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skipped: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path):
    text = page.read_text(encoding="utf-8")
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        yield Block(page, text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2),
                    bool(NOT_RUN.search(before)))


ALL = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in ALL if b.lang == "python" and not b.skipped]
BASH = [b for b in ALL if b.lang == "bash" and not b.skipped]


def test_every_block_says_whether_it_runs():
    unlabelled = [b.where for b in ALL if b.lang not in LANGUAGES]
    assert not unlabelled, (f"fence these as one of {LANGUAGES} (text: output, not code): "
                            f"{unlabelled}")


def test_the_block_tests_are_not_empty():
    # Today: 11 Python blocks, 43 advnlp command lines. A parser that finds nothing must fail.
    assert len(PYTHON) >= 10, [b.where for b in PYTHON]
    assert sum(1 for b in BASH for argv in _commands(b.code) if _advnlp_args(argv) is not None) >= 40
    skipped = [b.where for b in ALL if b.skipped]
    assert [w.split(":")[0] for w in skipped] == ["docs/llm.md"], f"a new skipped block: {skipped}"


# --- Python blocks ------------------------------------------------------------------------------

WORDS = "the film was good bad great awful and a plot story really very it".split()
TEXTS = ["the film was really good", "an awful plot and a bad story", "great film very good",
         "the story was awful"]


def _tokenizer():
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz")
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))})


def _model(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64, num_labels=2))


def _namespace(code: str, tmp_path: Path) -> dict:
    """The names a page's snippets use without defining them, bound to tiny objects; built
    only when the page mentions them (an Accelerator or TrainingArguments costs seconds)."""
    tokenizer = _tokenizer()
    model = _model(tokenizer)
    labels = torch.tensor([1, 0, 1, 0])
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    examples = [{**{k: v[i] for k, v in encoded.items()}, "labels": labels[i]} for i in range(4)]
    loader = torch.utils.data.DataLoader(examples, batch_size=2)
    batch = next(iter(loader))
    lazy = {
        "args": lambda: __import__("transformers").TrainingArguments(
            output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=2,
            report_to=[], use_cpu=True, save_strategy="no"),
        "accelerator": lambda: __import__("accelerate").Accelerator(cpu=True),
    }
    scope = {"torch": torch, "tokenizer": tokenizer, "model": model, "loader": loader,
             "batch": batch, "texts": TEXTS, "labels": labels, "label_names": ["neg", "pos"],
             "train_ds": examples, "criterion": torch.nn.CrossEntropyLoss(),
             "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
             "closure": lambda: model(**batch).loss,
             "batches": [({k: v for k, v in b.items() if k != "labels"}, b["labels"])
                         for b in loader]}
    scope.update({name: make() for name, make in lazy.items() if re.search(rf"\b{name}\b", code)})
    return scope


def _reset_accelerate():
    # Accelerate keeps one process-wide state; a page's Accelerator must not leak into the
    # next page or into the other test files.
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(True)


@pytest.mark.parametrize("page", sorted({b.page for b in PYTHON}, key=str),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets write their CSVs and runs here
    mine = [b for b in PYTHON if b.page == page]
    scope = _namespace("".join(b.code for b in mine), tmp_path)
    try:
        for b in mine:
            # Padded so that a traceback's line numbers are the page's own.
            code = compile("\n" * b.line + b.code, str(b.page.relative_to(ROOT)), "exec")
            try:
                exec(code, scope)
            except Exception as e:
                raise AssertionError(f"the block at {b.where} no longer runs: {e!r}") from e
    finally:
        _reset_accelerate()


# --- bash blocks --------------------------------------------------------------------------------

def _commands(code: str):
    for line in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            yield [a for a in argv if a != "..."]  # "..." stands for "the rest of your options"


def _advnlp_args(argv):
    """The arguments of an advnlp command line (also under torchrun), else None."""
    if argv[0] == "advnlp":
        return argv[1:]
    if argv[0] == "torchrun":
        for i, a in enumerate(argv):
            if a in ("advnlp.cli", "advnlp)"):  # -m advnlp.cli, or $(which advnlp)
                return argv[i + 1:]
    return None


def _strict_parser():
    import argparse

    from advnlp.cli.parser import build_parser

    parser = build_parser()
    todo = [parser]
    while todo:  # abbreviations off, so "--epsilon" does not pass once the flag is "--epsilons"
        p = todo.pop()
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return parser


def _problem(argv, parser, make_targets):
    args = _advnlp_args(argv)
    if args is not None:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args(args)
        except SystemExit:
            return err.getvalue().strip() or "exits"
        return None
    if argv[0] == "make":
        missing = [t for t in argv[1:] if t not in make_targets]
        return f"no make target {missing}" if missing else None
    if argv[0] == "python" and argv[1:2] != ["-c"]:
        return None if (ROOT / argv[1]).is_file() else f"no script {argv[1]}"
    if argv[0] == "pip" or re.match(r"^\w+=", argv[0]):  # an install, a variable
        return None
    return "not a command this test knows: fence the block as text, or teach tests/test_docs.py"


def test_command_lines_parse():
    parser = _strict_parser()
    make_targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    problems = [f"{b.where}: {' '.join(argv)}\n    {problem}"
                for b in BASH for argv in _commands(b.code)
                if (problem := _problem(argv, parser, make_targets))]
    assert not problems, "\n".join(problems)


def test_a_renamed_flag_fails_the_parse():
    parser = _strict_parser()
    assert _problem(["advnlp", "train", "--epsilon", "1"], parser, set()) is None
    assert "unrecognized" in _problem(["advnlp", "train", "--epsilo", "1"], parser, set())
    assert "unrecognized" in _problem(["advnlp", "eval", "runs/x", "--epsilon", "1"], parser, set())


# --- links and layout ---------------------------------------------------------------------------

def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading (mkdocs.yml makes the site's the same)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_readme_links_resolve():
    # mkdocs --strict checks the links inside docs/; the README is not part of the site.
    readme = ROOT / "README.md"
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", readme.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / path if path else readme
        if not page.exists() or (anchor and anchor not in _anchors(page)):
            broken.append(target)
    assert not broken, broken


def test_readme_stays_a_first_screen_plus_links():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, "the README is a first screen plus links: long material goes to docs/"


def test_every_method_has_an_api_page_in_the_nav():
    import advnlp.methods

    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for name in advnlp.methods.__all__:
        page = f"api/{name.lower()}.md"
        module = getattr(advnlp.methods, name).__module__
        assert f"::: {module}" in (ROOT / "docs" / page).read_text(encoding="utf-8"), page
        assert f": {page}" in nav, f"{page} is not in mkdocs.yml's nav"


def test_the_api_pages_read_the_docstrings_rest_as_markdown():
    pytest.importorskip("griffe")  # the [docs] extra
    import importlib.util

    spec = importlib.util.spec_from_file_location("rst", ROOT / "docs" / "_ext" / "rst.py")
    rst = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rst)
    assert rst.markdown("See :class:`advnlp.PGD` and :func:`~x.y`.") == "See `advnlp.PGD` and `x.y`."
    assert rst.markdown("Example::\n\n    adv = FGM(model)\n") == "Example:\n\n    adv = FGM(model)\n"
    assert rst.markdown("the step ::\n\n    x\n") == "the step:\n\n    x\n"
    assert rst.markdown("::\n\n    x\n") == "\n\n    x\n"
    assert rst.markdown("a::b stays") == "a::b stays"
