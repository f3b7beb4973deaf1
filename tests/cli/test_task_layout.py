"""One room per task: outside ``cli/tasks/`` (the task folders and the registry in its
``__init__``) no code names a task or branches on one; everything asks ``tasks.TASKS``."""
import ast
import os
import re

import advnlp.cli
from advnlp.cli.tasks import TASKS

CLI = os.path.dirname(os.path.abspath(advnlp.cli.__file__))


def _is_task(node) -> bool:
    """``x.task``, ``x["task"]`` or ``x.get("task", ...)``: a run's or a plan's task."""
    if isinstance(node, ast.Attribute):
        return node.attr == "task"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "task"
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get" and bool(node.args)
            and isinstance(node.args[0], ast.Constant) and node.args[0].value == "task")


def _names_a_task(text: str, names) -> bool:
    """``text`` is a task's name, says ``--task <name>``, or holds a name that is no English
    word (``token-classification``; "a classification head" is prose, not the task)."""
    for name in names:
        if text == name or re.search(r"--task\s+" + re.escape(name) + r"(?![\w-])", text):
            return True
        if "-" in name and re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", text):
            return True
    return False


def task_mentions(root: str, names) -> list:
    """``(file, line, what)`` for every string that names a task and every comparison with a
    task, in the files under ``root`` outside its ``tasks/`` folder (docstrings aside)."""
    found = []
    for folder, _, files in os.walk(root):
        if os.path.relpath(folder, root).split(os.sep)[0] == "tasks":
            continue
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, root)
            tree = ast.parse(open(path, encoding="utf-8").read())
            docs = {id(n.body[0].value) for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                    and isinstance(n.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and id(node) not in docs and _names_a_task(node.value, names):
                    found.append((rel, node.lineno, f"names a task: {node.value[:60]!r}"))
                elif isinstance(node, ast.Compare) and any(map(_is_task, [node.left, *node.comparators])):
                    found.append((rel, node.lineno, "branches on the task"))
    return found


def test_no_task_name_or_task_branch_outside_the_task_folders():
    assert task_mentions(CLI, list(TASKS)) == []


BAD = '''
def f(cfg, plan):
    """A classification head: prose, in a docstring."""
    if cfg.task == "x" or plan.get("task") != "y":
        return "--task token-classification only"
    return "single_label_classification", "its classification head"
    return cfg.task or "classification"
'''


def test_the_check_sees_a_task_branch_and_a_task_name(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "ok.py").write_text('NAME = "classification"\n')
    (tmp_path / "bad.py").write_text(BAD)
    assert [(f, line) for f, line, _ in task_mentions(str(tmp_path), list(TASKS))] == \
        [("bad.py", 4), ("bad.py", 4), ("bad.py", 5), ("bad.py", 7)]


def test_every_task_module_has_what_the_registry_asks_for():
    for task in TASKS.values():
        parts = task.parts
        for name in ("Run", "evaluate_run", "attack_run", "row", "row_of_saved", "summary",
                     "eval_report", "attack_report"):
            assert callable(getattr(parts, name)), (task.name, name)
