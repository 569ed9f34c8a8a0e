"""Beat positions from an uploaded WFDB annotation file (MIT format, e.g. ``.atr``).

``wfdb.rdann`` is not used on uploads: on some malformed files it never returns (measured: a
90-byte ``.atr`` with two flipped bytes kept it looping in ``interpret_defintion_annotations``).
This reader walks the file once, each step consuming at least one 16-bit word, so it ends on any
input, and it raises :class:`~service.formats.RecordFormatError`-compatible ``ValueError`` on
anything it cannot follow. Format: WFDB ``annot(5)`` (MIT format): little-endian 16-bit words,
annotation code in the top 6 bits, time increment (or a length) in the low 10 bits; code 59 (SKIP)
carries a 32-bit increment in the next two words (high word first), 60-62 (NUM, SUB, CHN) modify
the previous annotation, 63 (AUX) is followed by that many bytes (padded to even), and a zero word
ends the file.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

import numpy as np

__all__ = ["read_mit_annotations"]

_SKIP: Final = 59
_NUM_SUB_CHN: Final = (60, 61, 62)
_AUX: Final = 63
#: Most annotations accepted from one file (a 1-hour record at 300 bpm has 18,000 beats).
MAX_ANNOTATIONS: Final = 200_000


@lru_cache(maxsize=1)
def _symbols() -> dict[int, str]:
    from wfdb.io.annotation import ann_labels

    return {int(label.label_store): str(label.symbol) for label in ann_labels}


def read_mit_annotations(data: bytes) -> tuple[np.ndarray, list[str]]:
    """Sample positions and symbols of every annotation in a MIT-format annotation file.

    Parameters
    ----------
    data : bytes
        The whole file.

    Returns
    -------
    samples : np.ndarray
        int64 ``(n_annotations,)`` sample indices, in file order.
    symbols : list of str
        The annotation symbols (``"N"``, ``"V"``, ``"+"``...); ``"?code"`` for unknown codes.

    Raises
    ------
    ValueError
        When the file is not MIT-format annotations (odd length, a field running past the end,
        negative times, too many annotations).
    """
    if len(data) % 2:
        raise ValueError("not a MIT-format annotation file (odd number of bytes)")
    words = np.frombuffer(data, dtype="<u2")
    symbols_of = _symbols()
    samples: list[int] = []
    symbols: list[str] = []
    time = 0
    i = 0
    n = len(words)
    while i < n:
        word = int(words[i])
        code, value = word >> 10, word & 0x3FF
        i += 1
        if word == 0:
            break
        if code == _SKIP:
            if i + 2 > n:
                raise ValueError("annotation file ends inside a SKIP field")
            skip = (int(words[i]) << 16) | int(words[i + 1])
            if skip >= 1 << 31:
                skip -= 1 << 32
            time += skip
            i += 2
        elif code in _NUM_SUB_CHN:
            continue
        elif code == _AUX:
            i += (value + 1) // 2
            if i > n:
                raise ValueError("annotation file ends inside an AUX field")
        else:
            time += value
            if time < 0:
                raise ValueError("annotation times go below zero")
            samples.append(time)
            symbols.append(symbols_of.get(code, f"?{code}"))
            if len(samples) > MAX_ANNOTATIONS:
                raise ValueError(f"more than {MAX_ANNOTATIONS} annotations")
    return np.asarray(samples, dtype=np.int64), symbols
