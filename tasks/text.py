"""An offline character corpus: the English documentation strings that ship with CPython.

`pydoc_data.topics.topics` (a dict of ~80 help pages, ~0.5 MB, part of every CPython install) is joined in
sorted key order, runs of spaces are collapsed (indentation would otherwise dominate), and every character is
mapped to a small vocabulary: lowercase letters (capitals folded), digits, space, newline, common punctuation,
and one token for everything else. Deterministic for a given Python version; nothing is downloaded.
"""
import functools
import re

import numpy as np

VOCAB = "abcdefghijklmnopqrstuvwxyz0123456789 \n.,:;!?'\"()[]{}-_*=+<>/|#"
OTHER = len(VOCAB)            # the id of every character not in VOCAB
VOCAB_SIZE = len(VOCAB) + 1


def encode(text: str) -> np.ndarray:
  """Characters -> token ids (uint8) in [0, VOCAB_SIZE)."""
  table = np.full(0x110000, OTHER, np.uint8)
  table[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB), dtype=np.uint8)
  codes = np.frombuffer(text.lower().encode("utf-32-le"), np.uint32)
  return table[codes]


def decode(ids) -> str:
  return "".join(VOCAB[i] if i < OTHER else "~" for i in np.asarray(ids).tolist())


@functools.lru_cache(maxsize=1)
def corpus() -> np.ndarray:
  """The whole corpus as uint8 token ids (read-only)."""
  from pydoc_data.topics import topics
  text = "\n\n".join(topics[k] for k in sorted(topics))
  ids = encode(re.sub(r"[ \t]+", " ", text))
  ids.setflags(write=False)
  return ids
