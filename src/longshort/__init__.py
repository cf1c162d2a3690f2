"""longshort: efficient LLM reasoning with a long-thought and a short-thought model.

A reimplementation of Long⊗Short ("Not All Thoughts are Generated Equal", arXiv 2505.11827).
See DESIGN.md for the architecture; every stage is a library function over plain records,
and `longshort.cli` is a thin layer over them.
"""

__version__ = "0.1.0"
