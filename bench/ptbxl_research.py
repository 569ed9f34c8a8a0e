"""Heart-disease model research on the local PTB-XL subset (issue 11): candidates, then a final.

Two steps:

``select``
    Trains the named candidates on folds 1-8 and scores them on fold 9 only (macro-AUC over the
    five superclasses; 12 leads, and also the 6 limb leads and lead I alone). Each candidate is an
    MLflow run (per-epoch metrics, time per epoch, parameters) in the sqlite store
    ``bench/results/ptbxl_research.db``; its weights go to
    ``bench/results/ptbxl_candidates/<name>.pt``. Fold 10 is not loaded.
``final``
    For the chosen candidate: fits a temperature and a heart-disease threshold (Youden's J on
    ``1 - P(NORM)``) per lead subset on fold 9, then reads fold 10 ONCE and reports macro-AUC for
    12 / limb-6 / lead-I, with and without age and sex, per-superclass AUCs with 95% patient
    bootstrap intervals, the heart-disease decision's accuracy / precision / recall /
    specificity and the calibration error (ECE) before and after scaling. Logs an MLflow run
    with the model (:func:`models.record_predictor.log_record_model`) and saves the weights,
    config and calibration to ``bench/results/ptbxl_final/``.

Usage (one torch thread; ``data/processed/ptb-xl`` from ``ecg prepare ptb-xl``)::

    python -m bench.ptbxl_research select --data-dir data baseline-gru crnn-gru crnn-lstm
    python -m bench.ptbxl_research final --data-dir data crnn-gru-mask-demo
    python -m bench.ptbxl_research report      # markdown tables of both
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.labels import PTBXL_SUPERCLASSES
from models.record_model import LEAD_SUBSETS, RecordModel, RecordModelConfig
from models.recurrent import RecurrentClassifier, RecurrentClassifierConfig
from pipeline.record_training import (
    RecordData,
    RecordTrainConfig,
    fit,
    load_record_data,
    macro_auc,
    predict_logits,
)

logger = logging.getLogger("bench.ptbxl_research")

RESULTS = Path("bench/results")
TRACKING_URI = f"sqlite:///{RESULTS / 'ptbxl_research.db'}"
EXPERIMENT = "ptbxl-research"
TABLE = Path("/work/shared/physionet/ptb-xl/1.0.1/ptbxl_database.csv")


class SignalOnly(nn.Module):
    """The current champion's network behind the record model's ``forward`` signature.

    Absent leads are zeroed; the mask and demographics are otherwise ignored.
    """

    def __init__(self, config: RecurrentClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = RecurrentClassifier(config)

    def forward(
        self,
        x: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        demographics: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if lead_mask is not None:
            x = x * lead_mask[:, None, :]
        return self.inner(x)


@dataclass(frozen=True)
class Candidate:
    """One configuration to train and score on fold 9."""

    kind: str  # "baseline" (RecurrentClassifier) or "crnn" (RecordModel)
    arch: dict[str, Any]
    train: RecordTrainConfig

    def build(self) -> nn.Module:
        if self.kind == "baseline":
            return SignalOnly(RecurrentClassifierConfig(**self.arch))
        return RecordModel(RecordModelConfig.from_dict(self.arch))


#: The current champion's recipe (pipeline.train_config.RECOMMENDED["ptb-xl"]): constant lr 2e-3,
#: batch 64, 30 epochs, patience 6, pos_weight power 0.5 capped at 10; no masking, no demographics.
_BASELINE_TRAIN = RecordTrainConfig(
    epochs=30, patience=6, schedule="constant", lead_masking=False, demographics_dropout=0.0
)
#: CRNN trainings: one-cycle schedule over 20 epochs, patience 5.
_CRNN_TRAIN = RecordTrainConfig(epochs=20, patience=5, schedule="onecycle")
_PLAIN = replace(_CRNN_TRAIN, lead_masking=False, demographics_dropout=0.0)


def _crnn(cell: str, demographics: bool) -> dict[str, Any]:
    return RecordModelConfig(cell=cell, demographics=demographics).to_dict()  # type: ignore[arg-type]


CANDIDATES: dict[str, Candidate] = {
    "baseline-gru": Candidate(
        "baseline",
        {"n_inputs": 12, "n_classes": 5, "cell": "gru", "hidden_size": 64, "patch_size": 5},
        _BASELINE_TRAIN,
    ),
    "crnn-gru": Candidate("crnn", _crnn("gru", False), _PLAIN),
    "crnn-lstm": Candidate("crnn", _crnn("lstm", False), _PLAIN),
    "crnn-gru-demo": Candidate(
        "crnn", _crnn("gru", True), replace(_PLAIN, demographics_dropout=0.3)
    ),
    "crnn-gru-mask": Candidate("crnn", _crnn("gru", False), _CRNN_TRAIN),
    "crnn-lstm-mask": Candidate("crnn", _crnn("lstm", False), _CRNN_TRAIN),
    "crnn-gru-mask-demo": Candidate("crnn", _crnn("gru", True), _CRNN_TRAIN),
    "crnn-lstm-mask-demo": Candidate("crnn", _crnn("lstm", True), _CRNN_TRAIN),
}


def _uses_demographics(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "demographics", False))


def _subset_aucs(model: nn.Module, data: RecordData, prefix: str) -> dict[str, float]:
    """``<prefix>macro_auc_<subset>[_nodemo]`` for every named lead subset."""
    out = {}
    for name, leads in LEAD_SUBSETS.items():
        out[f"{prefix}macro_auc_{name}"] = macro_auc(
            data.y, predict_logits(model, data, leads, demographics=_uses_demographics(model))
        )
        if _uses_demographics(model):
            out[f"{prefix}macro_auc_{name}_nodemo"] = macro_auc(
                data.y, predict_logits(model, data, leads, demographics=False)
            )
    return out


# --------------------------------------------------------------------------- select
def select(names: list[str], data_dir: Path) -> list[dict[str, Any]]:
    """Train each named candidate on folds 1-8; score on fold 9; log MLflow runs."""
    import mlflow

    data = load_record_data(data_dir / "processed" / "ptb-xl", TABLE, ("train", "val"))
    train, val = data["train"], data["val"]
    mlflow.set_tracking_uri(TRACKING_URI)
    mlflow.set_experiment(EXPERIMENT)
    out_dir = RESULTS / "ptbxl_candidates"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        cand = CANDIDATES[name]
        torch.manual_seed(cand.train.seed)
        model = cand.build()
        n_params = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        with mlflow.start_run(run_name=name) as run:
            mlflow.set_tags({"ecg.task": "heart-disease", "bench.candidate": name})
            mlflow.log_params(
                {
                    "candidate": name,
                    "kind": cand.kind,
                    **{f"arch.{k}": str(v) for k, v in cand.arch.items()},
                    **{f"train.{k}": str(v) for k, v in cand.train.to_dict().items()},
                    "n_train": len(train),
                    "n_val": len(val),
                    "num_threads": torch.get_num_threads(),
                    "host": platform.node(),
                }
            )

            def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
                mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=epoch)

            res = fit(model, train, val, cand.train, on_epoch=log_epoch)
            seconds = time.perf_counter() - t0
            final = _subset_aucs(model, val, "val_")
            summary = {
                "best_val_macro_auc": res.best_val_macro_auc,
                "best_epoch": res.best_epoch,
                "epochs_run": len(res.epoch_seconds),
                "mean_epoch_time_s": float(np.mean(res.epoch_seconds)),
                "training_time_s": seconds,
                "n_parameters": n_params,
                **final,
            }
            mlflow.log_metrics(summary)
            torch.save(
                {"kind": cand.kind, "arch": cand.arch, "state_dict": model.state_dict()},
                out_dir / f"{name}.pt",
            )
            row = {"candidate": name, "run_id": run.info.run_id, **summary}
        logger.info("%s: %s", name, json.dumps(row))
        with (RESULTS / "ptbxl_research.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report
def report() -> str:
    """Markdown tables of the candidates (fold 9) and, if run, the final model (fold 10)."""
    rows = {}
    path = RESULTS / "ptbxl_research.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        r = json.loads(line)
        rows[r["candidate"]] = r  # the latest run of each candidate
    out = [
        "| candidate | fold-9 macro-AUC 12 leads | limb-6 | lead I | best / run epochs "
        "| s / epoch | training | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        out.append(
            f"| {name} | {r['best_val_macro_auc']:.4f} | {r['val_macro_auc_limb-6']:.4f} "
            f"| {r['val_macro_auc_lead-I']:.4f} | {r['best_epoch']} / {r['epochs_run']} "
            f"| {r['mean_epoch_time_s']:.0f} | {r['training_time_s'] / 60:.1f} min "
            f"| {r['n_parameters']:,} |"
        )
    final_path = RESULTS / "ptbxl_final" / "report.json"
    if final_path.is_file():
        fin = json.loads(final_path.read_text())
        out += ["", f"Final: {fin['candidate']} (fold 10, {fin['n_test']} records, "
                f"{fin['n_test_patients']} patients; 95% patient-bootstrap intervals)", "",
                "| leads / age-sex | macro-AUC | " + " | ".join(PTBXL_SUPERCLASSES)
                + " | heart disease AUC | acc | prec | recall | spec | threshold (fold 9) "
                "| T | ECE raw -> scaled |",
                "|---" * (10 + len(PTBXL_SUPERCLASSES)) + "|"]  # fmt: skip
        for key, e in fin["test"].items():
            m, hd, d = e["macro_auc"], e["heart_disease_auc"], e["decision"]
            per = " | ".join(
                f"{v['auc']:.3f}" + (f" [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" if "ci_low" in v
                                     else "")
                for v in e["per_class_auc"].values()
            )  # fmt: skip
            out.append(
                f"| {key} | {m['auc']:.4f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] | {per} "
                f"| {hd['auc']:.3f} [{hd['ci_low']:.3f}, {hd['ci_high']:.3f}] "
                f"| {d['accuracy']:.3f} | {d['precision']:.3f} | {d['recall']:.3f} "
                f"| {d['specificity']:.3f} | {d['threshold']:.3f} | {e['temperature']:.2f} "
                f"| {e['ece_classes']['uncalibrated']:.3f} -> "
                f"{e['ece_classes']['calibrated']:.3f} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["select", "final", "report"])
    parser.add_argument("candidates", nargs="*", help=f"some of {sorted(CANDIDATES)}")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_intermixed_args(argv)
    unknown = sorted(set(args.candidates) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose among {sorted(CANDIDATES)}")
    if args.step != "report" and not args.candidates:
        parser.error(f"{args.step} needs candidates")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.step == "report":
        print(report())
    elif args.step == "select":
        select(args.candidates, args.data_dir)
    else:
        if len(args.candidates) != 1:
            parser.error("final takes exactly one candidate")
        from bench.ptbxl_final import final

        final(args.candidates[0], args.data_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
