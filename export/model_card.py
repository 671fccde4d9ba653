"""The model card of a bundle, written from its manifest so that its figures cannot drift from the model.

`python -m export.model_card BUNDLE --eval-stream REPORT` records the eval-stream report's figures in the
manifest (`evaluation`), renders MODEL_CARD.md from the manifest and hashes both into the bundle again.
scripts/ship-model.sh makes the shipped model (qlung_edge/bundles/sprsound-edge) this way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qlung_edge.bundle import MANIFEST, load_bundle, write_manifest

CARD_FILE = "MODEL_CARD.md"

SPRSOUND_CITATION = (
    "Q. Zhang, J. Zhang, J. Yuan, H. Huang, Y. Zhang, B. Zhang, G. Lv, S. Lin, N. Wang, X. Liu, M. Tang, Y. Wang,"
    " H. Ma, L. Liu, S. Yuan, H. Zhou, J. Zhao, Y. Li, Y. Yin, L. Zhao, G. Wang, Y. Lian. SPRSound: Open-Source"
    " SJTU Paediatric Respiratory Sound Database. IEEE Transactions on Biomedical Circuits and Systems 16(5),"
    " 867-881, 2022."
)


def evaluation_record(report: dict[str, Any], command: str) -> dict[str, Any]:
    """The figures of an eval-stream report a card needs, with the command that produced them."""
    records = report.get("records", {})
    record: dict[str, Any] = {
        "command": command,
        "split": report["split"],
        "recordings": report["recordings"],
        "window_seconds": report["window_seconds"],
        "hop_seconds": report["hop_seconds"],
        "windows": report["windows"],
        "coverage": report["coverage"],
        "windows_accepted": report["accepted"],
        "windows_ungated": report["ungated"],
        "task_2_1": {k: records["task_2_1"][k] for k in ("specificity", "sensitivity", "score")}
        if "task_2_1" in records
        else None,
        "task_2_2": {k: records["task_2_2"][k] for k in ("specificity", "sensitivity", "score")}
        if "task_2_2" in records
        else None,
        "quality_estimate": report.get("quality_estimate"),
        "good_records_gated": report.get("other_records"),
        "poor_records_gated": report.get("poor_quality_records"),
    }
    return record


def out_of_domain_record(bundle_path: Path, folder: Path, command: str) -> dict[str, Any]:
    """What the model does with recordings from elsewhere (other stethoscopes, adults): windows classified,
    gated and why, and the verdicts, through `Classifier` (the daemon's pipeline)."""
    from collections import Counter

    from qlung_edge.classifier import Classifier

    files = sorted(folder.glob("*.wav"))
    windows = classified = 0
    reasons: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    with Classifier.from_bundle(bundle_path) as classifier:
        for path in files:
            result = classifier.predict(path)
            quality = result.quality
            windows += quality.windows
            classified += quality.accepted
            reasons.update(quality.gated_by_reason)
            verdicts.update(v.task_2_2 for v in result.verdicts)
    return {
        "command": command,
        "folder": folder.name,
        "recordings": len(files),
        "windows": windows,
        "classified": classified,
        "gated_by_reason": dict(reasons),
        "verdicts": dict(verdicts),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _budget(estimate: dict[str, Any]) -> str:
    """How the gate's threshold was set, where the manifest says: its out-of-fold budget and why."""
    figures = estimate.get("figures") or {}
    if "budget_asked" not in figures:  # fitted before the later patients' check: nothing more to say
        return ""
    text = f", fitted to refuse {100 * figures['budget']:.2f} % of good training windows out of fold"
    later = figures.get("later") or {}
    if "budget_for_later" in later and figures["budget"] < figures["budget_asked"]:
        text += (f" (lowered from {100 * figures['budget_asked']:g} %: fitted without the latest"
                 f" {later['patients']} training patients by recording order, the gate refused"
                 f" {100 * later['refused_at_budget_asked']:.1f} % of their good windows at"
                 f" {100 * figures['budget_asked']:g} %; ")  # fmt: skip
        text += (f"at the lowered budget it refuses at most {100 * later['later_budget']:g} % of theirs in 97.5 % of"
                 " resamples of them)" if later.get("reachable", True) else
                 f"the AQS reasons alone refuse more than {100 * later['later_budget']:g} % of theirs, so the"
                 " estimate is left refusing next to nothing)")  # fmt: skip
    return text


def _source(source: dict[str, Any] | None) -> str:
    """The commit the checkpoint was trained at, where the manifest records it."""
    if not source:
        return ""
    return f" at commit {source['commit'][:12]}" + (" with uncommitted changes" if source.get("dirty") else "")


def render_card(manifest: dict[str, Any]) -> str:
    """MODEL_CARD.md from the manifest alone (its file list and hash excepted, which include the card)."""
    model = manifest["model"]
    evaluation = manifest.get("evaluation")
    validation = manifest.get("metrics", {}).get("validation", {})
    estimate = manifest.get("quality_estimate") or {}
    rule = manifest.get("verdict", {})
    lines = [
        f"# Model card: {manifest['name']}",
        "",
        "## Intended use",
        "",
        "Research on respiratory-sound classification and development of stethoscope devices and software:"
        " trying qlung-edge end to end, integration tests, a baseline to compare new models with.",
        "**This model is not a medical device.** It is not cleared or approved for diagnosis, screening or any"
        " clinical decision, and its answers must not be used for one.",
        "",
        "## Model",
        "",
        f"- {model['backbone']} with the {model['head']} head, {model['parameters']:,} parameters;"
        f" classes {', '.join(manifest['classes'])}.",
        f"- Input: {manifest['window_seconds']:g} s windows at {manifest['sample_rate']} Hz, one every"
        f" {manifest['hop_seconds']:g} s (the daemon follows these); trained on {manifest.get('training_unit')}"
        " units; best epoch chosen on validation patients"
        + (
            f" (window-level validation Sp {_pct(validation.get('specificity'))}, Se"
            f" {_pct(validation.get('sensitivity'))}, Score {_pct(validation.get('score'))})."
            if validation
            else "."
        ),
        f"- Examination verdict: {rule.get('statistic')} evidence, DAS >= {rule.get('das_threshold')}, CAS >="
        f" {rule.get('cas_threshold')}; calibrated on {rule.get('calibrated_on')}.",
        "- Quality: the Audio Quality Score gate"
        + (
            f" and a learned estimate P(poor) (gate threshold {estimate['threshold']:.3f}){_budget(estimate)}."
            if estimate.get("threshold") is not None
            else " (no learned estimate in this bundle)."
        ),
        "",
        "## Training data and licence",
        "",
        "SPRSound (SJTU Paediatric Respiratory Sound Database), the 2022 training recordings, used under the"
        " Creative Commons Attribution 4.0 licence (CC BY 4.0). Cite:",
        "",
        f"> {SPRSOUND_CITATION}",
        "",
        "The model's weights are distributed with qlung-edge under its MIT licence; the attribution above"
        " travels with them.",
        "",
        "## Measured figures",
        "",
    ]
    if evaluation is None:
        lines.append("No evaluation recorded in this bundle.")
    else:
        lines += [
            f"Streamed through the daemon's pipeline (`{evaluation['command']}`): the {evaluation['split']} split,"
            f" {evaluation['recordings']} recordings, {evaluation['windows']['windows']} windows, of which"
            f" {_pct(evaluation['coverage'])} % passed the gate.",
            "",
            "| | Sp | Se | Score |",
            "| --- | --- | --- | --- |",
        ]
        rows = [
            ("records, Task 2-1 (Normal / Adventitious / Poor Quality)", evaluation.get("task_2_1")),
            ("records, Task 2-2 (Normal / CAS / DAS / CAS & DAS / Poor Quality)", evaluation.get("task_2_2")),
            ("windows the gate accepted (ICBHI-style)", evaluation.get("windows_accepted")),
            ("all windows, gate ignored", evaluation.get("windows_ungated")),
        ]
        for label, scores in rows:
            if scores:
                lines.append(
                    f"| {label} | {_pct(scores['specificity'])} | {_pct(scores['sensitivity'])} |"
                    f" {_pct(scores['score'])} |"
                )
        good, poor = evaluation.get("good_records_gated"), evaluation.get("poor_records_gated")
        if good and good.get("windows"):
            spread = good.get("gated_fraction_patients_95")
            lines += [
                "",
                f"The gate refused {_pct(good['gated_fraction'])} % of the {good['windows']} windows of records not"
                " labelled Poor Quality"
                + (
                    f" (95 % interval over resamples of the patients {_pct(spread[0])}-{_pct(spread[1])} %)"
                    if spread
                    else ""
                )
                + (
                    f" and {_pct(poor['gated_fraction'])} % of the {poor['windows']} windows of Poor Quality records"
                    if poor and poor.get("windows")
                    else ""
                )
                + ".",
            ]
        quality = evaluation.get("quality_estimate")
        if quality:
            low, high = quality["record_auroc_95"]
            lines += [
                "",
                f"The learned quality estimate tells SPRSound's {quality['poor_records']} Poor Quality records from"
                f" the other {quality['records'] - quality['poor_records']} with AUROC {quality['record_auroc']:.3f}"
                f" (95 % bootstrap interval {low:.3f}-{high:.3f}).",
            ]
        lines += [
            "",
            "Records are scored as SPRSound defines it (`training.metrics.record_scores`: SE over the non-normal"
            " records, Poor Quality included, SP over the normal ones, Score = (AS + HS) / 2); the official"
            " scorer is not public. Windows are scored as ICBHI scores cycles (Score = (Sp + Se) / 2).",
        ]
    if manifest.get("model_choice"):
        lines += ["", f"How this model was chosen: {manifest['model_choice']}"]
    lines += [
        "",
        "## Known limits",
        "",
        "- Paediatric recordings (SPRSound: children at one hospital in Shanghai); adults are not represented.",
        "- One stethoscope model, recorded at 8 kHz: nothing above 4 kHz was ever seen; other stethoscopes,"
        " rates and chest-piece handling shift the input.",
        "- Small, CPU-trained model: crackle and wheeze sensitivity is well below what a clinician needs.",
        "- Record labels are SPRSound's; Rhonchi and Stridor events were left out of training.",
    ]
    other = manifest.get("out_of_domain")
    if other:
        gated = ", ".join(f"{k} {n}" for k, n in sorted(other["gated_by_reason"].items())) or "none"
        verdicts = ", ".join(f"{k} {n}" for k, n in sorted(other["verdicts"].items()))
        lines.append(
            f"- Other stethoscopes and adults are outside what the quality estimate knows: on {other['recordings']}"
            f" real ICBHI 2017 recordings ({other['folder']}; `{other['command']}`) it classified"
            f" {other['classified']} of {other['windows']} windows (gated: {gated}); verdicts: {verdicts}."
            " Retrain or recalibrate on your own device's recordings before relying on the gate there."
        )
    lines += [
        "",
        "## Reproduce",
        "",
        "`bash scripts/ship-model.sh` (train, export, eval-stream, this card); trained with torch"
        f" {manifest.get('versions', {}).get('torch', '?')}{_source(manifest.get('source'))}, exported with ONNX"
        f" opset {manifest['opset']}.",
        "",
    ]
    return "\n".join(lines)


def write_card(
    bundle_path: Path,
    report_path: Path | None,
    command: str,
    other: Path | None = None,
    other_command: str = "",
    model_choice: str | None = None,
) -> Path:
    """Record the evaluation (and the out-of-domain check on `other`) in the manifest, write MODEL_CARD.md,
    rehash the bundle; returns the card. `model_choice` says how the model was picked among runs (the manifest's
    `selection` is how its epoch was): a reader needs it to know whether the card's figures are unbiased."""
    bundle = load_bundle(bundle_path)
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "manifest_sha256")}
    if model_choice is not None:
        manifest["model_choice"] = model_choice
    if report_path is not None:
        manifest["evaluation"] = evaluation_record(json.loads(report_path.read_text()), command)
    if other is not None:
        manifest["out_of_domain"] = out_of_domain_record(bundle_path, other, other_command)
    card = bundle_path / CARD_FILE
    card.write_text(render_card(manifest))
    write_manifest(bundle_path, manifest)
    load_bundle(bundle_path)  # verifies again
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.model_card", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--eval-stream", type=Path, help="eval_stream.json of `qlung-edge eval-stream BUNDLE`")
    parser.add_argument("--command", default="qlung-edge eval-stream BUNDLE --data ../shared/data/sprsound")
    parser.add_argument("--out-of-domain", type=Path, help="a folder of recordings from other stethoscopes")
    parser.add_argument("--model-choice", help="how the model was chosen among runs (kept in the manifest)")
    args = parser.parse_args(argv)
    other_command = f"qlung-edge predict {args.out_of_domain} --bundle {args.bundle}" if args.out_of_domain else ""
    card = write_card(args.bundle, args.eval_stream, args.command, args.out_of_domain, other_command, args.model_choice)
    print(f"wrote {card} and {args.bundle / MANIFEST}")


if __name__ == "__main__":
    main()
