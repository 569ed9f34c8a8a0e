"""Rebuild the web page's bundled example records from the PhysioNet mirror.

Run from the repository root: ``python service/static/examples/make_examples.py [PHYSIONET_DIR]``
(default ``../shared/physionet``). Writes, next to this file:

- ``mitdb119.hea/.dat/.atr``: 10 s of MIT-BIH record 119 from sample 68,400 (ventricular
  bigeminy: 5 N and 6 V beats annotated), both leads, digital samples copied unchanged (format
  212), reference beat annotations;
- ``mitdb208.edf``: 10 s of MIT-BIH record 208 from sample 68,400 (5 N, 6 V, 6 F annotated), both
  leads in mV as an EDF file (EDF's 16-bit samples, physical range of the excerpt);
- ``ptbxl00008_lr.hea/.dat``: PTB-XL record 8 (inferior myocardial infarction, IMI), 12 leads,
  10 s at 100 Hz, copied unchanged.

Sources and licences: see ``README.md`` beside this file.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import wfdb

from pipeline.records import write_excerpt

HERE = Path(__file__).resolve().parent
START, LENGTH = 68_400, 3_600


def _mitdb_edf(src: Path, name: str, out_name: str) -> None:
    import edfio

    rec = wfdb.rdrecord(str(src / name), sampfrom=START, sampto=START + LENGTH)
    signals = [
        edfio.EdfSignal(
            rec.p_signal[:, i].astype(np.float64),
            sampling_frequency=float(rec.fs),
            label=f"ECG {lead}",
            physical_dimension="mV",
        )
        for i, lead in enumerate(rec.sig_name)
    ]
    edfio.Edf(signals).write(HERE / f"{out_name}.edf")


def main(physionet: Path) -> None:
    mitdb = physionet / "mitdb" / "1.0.0"
    write_excerpt(mitdb, "119", START, LENGTH, HERE, "mitdb119")
    _mitdb_edf(mitdb, "208", "mitdb208")
    ptbxl = physionet / "ptb-xl" / "1.0.1" / "records100" / "00000"
    for ext in ("hea", "dat"):
        shutil.copyfile(ptbxl / f"00008_lr.{ext}", HERE / f"ptbxl00008_lr.{ext}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/physionet"))
