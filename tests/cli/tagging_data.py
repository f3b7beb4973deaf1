"""A trivially learnable tagging (capitalised words are entities) as CoNLL files."""
import random

LOWER = "the a of runs met said in today with and visits likes from".split()
CAPS = "Alice Bob Paris London Google Acme Berlin Carol".split()


def sentences(n, seed):
    """Capitalised words are entities (one or two words, B-ENT I-ENT), never adjacent to
    another entity: a trivially learnable tagging."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 7)):
            tokens.append(rng.choice(LOWER))
            tags.append("O")
            if rng.random() < 0.4:
                tokens.append(rng.choice(CAPS))
                tags.append("B-ENT")
                if rng.random() < 0.3:
                    tokens.append(rng.choice(CAPS))
                    tags.append("I-ENT")
        out.append((tokens, tags))
    return out


def conll(path, sentences):
    path.write_text("-DOCSTART- O\n\n" + "".join(
        "\n".join(f"{w} {t}" for w, t in zip(*s)) + "\n\n" for s in sentences), encoding="utf-8")
    return str(path)
