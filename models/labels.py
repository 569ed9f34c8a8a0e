"""Class vocabularies: AAMI EC57 beat classes (MIT-BIH) and PTB-XL diagnostic superclasses."""

from __future__ import annotations

__all__ = [
    "AAMI_CLASSES",
    "DS1_RECORDS",
    "DS2_RECORDS",
    "EXCLUDED_FROM_TRAINING",
    "MITDB_SYMBOL_TO_AAMI",
    "MITDB_VAL_RECORDS",
    "PACED_RECORDS",
    "PTBXL_SUPERCLASSES",
    "WFDB_BEAT_SYMBOLS",
    "aami_class",
]

#: AAMI EC57 heartbeat classes, in model output order.
AAMI_CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")

#: MIT-BIH beat annotation symbol -> AAMI class (ANSI/AAMI EC57:1998; de Chazal et al. 2004).
MITDB_SYMBOL_TO_AAMI: dict[str, str] = {
    **dict.fromkeys(["N", "L", "R", "e", "j"], "N"),
    **dict.fromkeys(["A", "a", "J", "S"], "S"),
    **dict.fromkeys(["V", "E"], "V"),
    "F": "F",
    **dict.fromkeys(["/", "f", "Q"], "Q"),
}

#: WFDB annotation symbols that mark a QRS complex (the WFDB library's ``isqrs`` codes). RR
#: intervals run over all of them; symbols such as '+', '~', '|', 'x', '!' or '"' are not beats.
WFDB_BEAT_SYMBOLS: frozenset[str] = frozenset("NLRBaJASVrFejnE/fQ?")

#: Records with paced beats, excluded as AAMI recommends.
PACED_RECORDS: frozenset[str] = frozenset({"102", "104", "107", "217"})

#: de Chazal et al. (2004) inter-patient split: DS1 trains (and validates), DS2 only tests.
DS1_RECORDS: tuple[str, ...] = (
    "101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122",
    "124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230",
)  # fmt: skip
DS2_RECORDS: tuple[str, ...] = (
    "100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210",
    "212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234",
)  # fmt: skip

#: DS1 records held out for validation (the rest of DS1, less 201, trains). Chosen so that
#: validation sees S, V and F beats from several patients while training keeps most of them:
#: 118 (RBBB, 96 S), 124 (RBBB/junctional, 31 S, 47 V, 5 F), 220 (94 S) and 223 (73 S, 473 V,
#: 14 F) give validation 294 of DS1's 816 S beats (201 excluded), 536 of 3,590 V and 19 of 413 F;
#: training keeps S from 209, 207, 114 and others, and 208's 373 F. One split of four patients is
#: noisy for S: select models on patient-grouped folds within DS1 where it matters.
MITDB_VAL_RECORDS: tuple[str, ...] = ("118", "124", "220", "223")

#: Records 201 (DS1) and 202 (DS2) come from the same subject (MIT-BIH directory). 201 is kept
#: out of training and validation so that no patient is on both sides of the test boundary;
#: DS2 stays the standard test set, comparable with the literature.
EXCLUDED_FROM_TRAINING: dict[str, str] = {"201": "same subject as DS2 record 202"}

#: PTB-XL diagnostic superclasses (scp_statements.csv, column diagnostic_class), model order.
PTBXL_SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")


def aami_class(symbol: str) -> str | None:
    """AAMI class of a MIT-BIH beat symbol, or None for non-beat annotations ('+', '~', ...)."""
    return MITDB_SYMBOL_TO_AAMI.get(symbol)
