"""A griffe extension for the API pages: the docstrings are written in a light reST (``x``,
``Example::`` before an indented block, :class:`name`), which Markdown mostly reads already.
This rewrites the two spellings it does not: the ``::`` that opens a literal block (Markdown
renders the indented block as code by itself) and the cross-reference roles (to code spans)."""
import re

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")
LITERAL = re.compile(r"(\S)[ \t]*::[ \t]*$|^[ \t]*::[ \t]*$", re.M)


def markdown(text: str) -> str:
    text = ROLE.sub(r"`\1`", text)
    return LITERAL.sub(lambda m: f"{m.group(1)}:" if m.group(1) else "", text)


class ReSTToMarkdown(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
