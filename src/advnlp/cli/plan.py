"""What a compare plan (``compare-config.json``) says, and the keys of its rows' scores:
shared by ``commands`` and every task's scores."""
from __future__ import annotations

from typing import Sequence

from advnlp.attacks import random_typos

TYPO_SEED = 0  # one typo'd copy of a test split for every method and seed of a compare
# full: every score on the validation split too (what to choose settings by); clean: only the
# clean metrics training computed there anyway
VALIDATION_SCORES = ("full", "clean")


def attacks_validation(plan: dict) -> bool:
    """Whether a compare scores the validation split under its attacks too (plans written
    before the option: yes)."""
    return plan.get("validation_scores", "full") == "full"


def run_title(plan: dict, method: str, seed: int) -> str:
    """The log line a compare's run starts with."""
    return f"== {method}" + (f", seed {seed}" if plan["seeds"] > 1 else "")


def robust_key(epsilon: float, score: str = "accuracy") -> str:
    """The row key of the score (accuracy; entity_f1) under the embedding attack at ``epsilon``."""
    return f"robust_{score}@{epsilon:g}"


def attack_epsilons(plan: dict) -> list:
    eps = plan["attack_epsilon"]  # one number in plans written before several radii
    return [eps] if isinstance(eps, (int, float)) else list(eps)


def attack_key(attack: str, score: str = "accuracy") -> str:
    """The row key of the score under the discrete attack ``attack`` (char / word)."""
    return f"attacked_{score}@{attack}"


def success_key(attack: str) -> str:
    """The row key of the discrete attack's success rate (over originally-correct examples)."""
    return f"attack_success_rate@{attack}"


def discrete_attacks(plan: dict) -> list:
    attack = plan["attack"]  # None or one name in plans written before several attacks
    return [] if attack is None else [attack] if isinstance(attack, str) else list(attack)


def typo_copy(texts: Sequence[tuple], rate: float) -> list:
    """The typo'd copy of a split's texts: each text column gets its own random typos."""
    columns = list(zip(*texts)) if texts else []
    noisy = [random_typos(col, rate, seed=TYPO_SEED + k) for k, col in enumerate(columns)]
    return list(zip(*noisy))
