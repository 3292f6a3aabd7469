"""ModelCardGen: a model card per pushed version, for people (HTML) and machines (JSON), in the
version's assets.extra/ (the model contract's MODEL_CARD_HTML / MODEL_CARD_JSON), served by the
gateway at /v1/models/{name}/versions/{v}/card.

Sections (issue 14): intended use and limitations (plainly SYNTHETIC when the training faces
were), training data (spans, faces per class, sources), metrics overall and per class, slices,
calibration, the A/B gate's verdict and numbers, lineage (run id from ML Metadata, the parent
champion, the spans), the edge files' parity, and the run's energy. A template of moodloop's own:
Model Card Toolkit needs a newer TFX stack than 1.16.
"""

import base64
import html
import json
import logging
import os
from pathlib import Path
from typing import List  # noqa: UP035 - TFX's component decorator reads typing.List, not list

from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.ab_gate import BIAS_REPORT_PNG, GATE_REPORT_JSON, GateReport
from components.edge import EdgeModels
from components.energy import EnergyReading, recorded
from components.model_report import REPORT_JSON, TRAINING_SUMMARY, ModelReport
from components.span_resolver import span_of
from moodloop.core.contracts import (
    CURATED_MANIFEST,
    CURATED_SPAN_PREFIX,
    EDGE_METADATA,
    EMOTIONS,
    MODEL_CARD_HTML,
    MODEL_CARD_JSON,
)
from moodloop.core.files import atomic_write_text

log = logging.getLogger(__name__)

SYNTHETIC_SOURCE_PREFIX = "synthetic"  # what the front doors named generated batches before the marker


def _read_json(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def training_data(curated_dir: str, spans: list[int]) -> dict:
    """The spans the candidate learnt from: per span its source batch and faces per class."""
    rows, totals = [], dict.fromkeys(EMOTIONS, 0)
    slice_counts: dict[str, dict[str, int]] = {}
    for span in sorted(set(spans)):
        manifest = _read_json(os.path.join(curated_dir, f"{CURATED_SPAN_PREFIX}{span:05d}", CURATED_MANIFEST))
        counts = manifest.get("class_counts", {})
        for emotion in EMOTIONS:
            totals[emotion] += int(counts.get(emotion, 0))
        for attribute, values in manifest.get("slice_counts", {}).items():
            for value, n in values.items():
                slice_counts.setdefault(attribute, {}).setdefault(value, 0)
                slice_counts[attribute][value] += n
        source = manifest.get("source", "?")
        # Spans curated before batches carried the SYNTHETIC marker: their name says it (synthetic-*).
        synthetic = bool(manifest.get("synthetic", str(source).startswith(SYNTHETIC_SOURCE_PREFIX)))
        row = {"span": span, "source": source, "faces": manifest.get("written"), "class_counts": counts}
        rows.append(row | {"synthetic": synthetic})
    synthetic = [r["source"] for r in rows if r["synthetic"]]
    return {
        "spans": rows,
        "class_counts": totals,
        "slice_counts": slice_counts,  # faces per slice value (moodloop/core/slices.py), over the spans
        "faces": sum(totals.values()),
        "synthetic_sources": synthetic,
    }


def _gate_faces_text(gate: dict) -> str:
    """Which held-out faces the gate's accuracies are on: all, or today's traffic (components/ab_gate.py)."""
    judged = gate.get("judged") or {}
    if judged.get("on") == "current":
        feedback = judged.get("feedback") or 0
        where = f", {feedback} of them with a feedback label" if feedback else ""
        return f"the {judged['faces']} held-out faces of current traffic (of {gate.get('examples')}{where})"
    return f"{gate.get('examples')} faces"


def card_content(
    version: str, data: dict, report: dict, training: dict, gate: dict, edge: dict, energy: dict, run_id: str | None
) -> dict:
    synthetic = bool(data["synthetic_sources"])
    limitations = [
        "Classifies the seven FER2013 emotions of one face at a time: a 48x48 grey crop, eyes level. It reads "
        "expressions, not feelings, intentions or identity; do not use it to judge people.",
        "Faces the training data did not cover (lighting, pose, age, skin tone, occlusion, camera) can be "
        "wrong with high confidence; `uncertain` marks low confidence, not every error.",
    ]
    if synthetic:
        limitations.insert(
            0,
            "TRAINED ON SYNTHETIC FACES (data/synthetic.py: drawn geometric faces, not photographs; sources "
            f"{', '.join(data['synthetic_sources'])}). No figure below says anything about real faces.",
        )
    calibration = report.get("calibration") or training.get("calibration") or {}
    total_energy = sum(energy.values(), EnergyReading())
    return {
        "version": version,
        "intended_use": "Research and product analytics on facial expressions in photos, videos and webcams "
        "(moodloop's faces page, TF Serving, edge devices), with people told that it runs.",
        "limitations": limitations,
        "trained_on_synthetic_faces": synthetic,
        "training_data": data,
        "metrics": {
            "held_out_accuracy": report.get("accuracy"),
            "held_out_faces": report.get("example_count"),
            "per_class_recall": report.get("per_class_recall"),
            "confusion_matrix": report.get("confusion_matrix"),
            "slices": _slices(gate.get("bias")),
            "largest_slice_gap": (gate.get("bias") or {}).get("largest_gap"),
        },
        "calibration": calibration,
        "training": {
            k: training.get(k)
            for k in (
                "epochs",
                "learning_rate",
                "fit_seconds",
                "warm_start",
                "hyperparameters",
                "trained",
                "self_training",
            )
        },
        "gate": {
            k: gate.get(k)
            for k in ("verdict", "reasons", "examples", "judged", "candidate_accuracy", "champion_accuracy", "mcnemar")
        },
        "lineage": {
            "pipeline_run_id": run_id,
            "parent_champion": gate.get("champion"),
            "spans": [s["span"] for s in data["spans"]],
        },
        "edge": {"files": edge.get("files", {}), "not_published": edge.get("not_published", {})},
        "energy": {
            "total": total_energy.as_dict(),
            "per_component": {node: reading.as_dict() for node, reading in energy.items()},
            "note": "the run's components up to the model card",
        },
    }


def _slices(bias: dict | None) -> dict | None:
    """Per slice, the numbers a reader of the card needs (the A/B gate's bias audit has more)."""
    if not bias:
        return None
    shown = ("faces", "accuracy", "recall", "guarded", "champion_accuracy", "change", "regression")
    return {name: {k: row[k] for k in shown if k in row} for name, row in bias["slices"].items()}


def _slice_rows(slices: dict) -> list[list]:
    def change(row: dict) -> str:
        if row.get("change") is None:
            return "no champion"
        return f"{100 * row['change']:+.1f} pts" + (" REGRESSION" if row.get("regression") else "")

    return [
        [name, row["faces"], _percent(row["accuracy"]), _percent(row["recall"]), change(row)]
        + ([] if row["guarded"] else ["too few faces to guard"])
        for name, row in slices.items()
    ]


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _percent(value) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else "n/a"


def _slices_html(metrics: dict, bias_png: bytes | None) -> str:
    if not metrics.get("slices"):
        return "<p>Slices: the held-out faces carried none.</p>"
    gap = metrics.get("largest_slice_gap")
    widest = (
        f"<p>Largest gap between slices: {html.escape(gap['attribute'])}, {100 * gap['accuracy_gap']:.1f} points of "
        f"accuracy ({html.escape(gap['best'])} best, {html.escape(gap['worst'])} worst).</p>"
        if gap
        else ""
    )
    picture = (
        f'<img alt="bias audit: accuracy and recall per slice" style="max-width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(bias_png).decode()}">'
        if bias_png
        else ""
    )
    header = ["slice", "faces", "accuracy", "recall (mean over emotions)", "vs champion"]
    return (
        "<h3>Per slice (the A/B gate's bias audit)</h3>"
        + widest
        + _table(_slice_rows(metrics["slices"]), header)
        + picture
    )


CALIBRATION_LINE = (
    "<p>Temperature {temperature}; expected calibration error {ece_before} before, {ece_after} after.</p>"
)


def _trained_html(trained: dict | None) -> str:
    """Which network this version is and why: moodloop's CNN, or the champion's own fine-tuned."""
    if not trained:
        return ""
    what = "The champion's own network, fine-tuned" if trained.get("from") == "champion" else "moodloop's CNN"
    anchors = ""
    if trained.get("from") == "champion":
        anchors = (
            f" {trained['anchors']} kept live faces kept its own answers while it learned (real-face anchors, "
            f"{trained.get('anchor_weight', 0):g} of the weight)."
            if trained.get("anchors")
            else " No kept live faces anchored it on real faces."
        )
    return f"<p><b>{what}</b>: {html.escape(str(trained.get('why', '')))}.{anchors}</p>"


def _self_training_html(report: dict | None) -> str:
    """components/self_training.py's part in this version, when a retrain after a drift had one."""
    if not report:
        return ""
    return (
        f"<p><b>Self-training</b>: {report['pseudo_labelled']} of {report['unanswered_faces']} kept live faces "
        f"nobody labelled were pseudo-labelled by a first fit (at least {report['threshold']:g} sure) and trained "
        "on; they are in none of the held-out faces this card reports.</p>"
    )


def card_html(card: dict, bias_png: bytes | None = None) -> str:
    """The card as one self-contained page (no script, no external file: the bias audit's
    picture is inlined)."""
    m, d, g, e = card["metrics"], card["training_data"], card["gate"], card["energy"]["total"]
    calibration = {
        k: f"{v:.3f}" if isinstance(v, float) else "n/a"
        for k, v in ((k, card["calibration"].get(k)) for k in ("temperature", "ece_before", "ece_after"))
    }
    sections = [
        ("Intended use", f"<p>{html.escape(card['intended_use'])}</p>"),
        ("Limitations", "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in card["limitations"]) + "</ul>"),
        (
            "Training data",
            _trained_html(card["training"].get("trained"))
            + _self_training_html(card["training"].get("self_training"))
            + f"<p>{d['faces']} faces in {len(d['spans'])} span(s).</p>"
            + _table([[s["span"], s["source"], s["faces"]] for s in d["spans"]], ["span", "source", "faces"])
            + _table([[k, v] for k, v in d["class_counts"].items()], ["emotion", "faces"])
            + _table(
                [[f"{a}={v}", n] for a, values in d.get("slice_counts", {}).items() for v, n in values.items()],
                ["slice", "faces"],
            ),
        ),
        (
            "Metrics",
            f"<p>Held-out accuracy {_percent(m['held_out_accuracy'])} on {int(m['held_out_faces'] or 0)} faces.</p>"
            + _table([[k, _percent(v)] for k, v in (m["per_class_recall"] or {}).items()], ["emotion", "recall"])
            + _slices_html(m, bias_png),
        ),
        (
            "Calibration",
            CALIBRATION_LINE.format(**calibration),
        ),
        (
            "A/B gate",
            f"<p><b>{html.escape(str(g.get('verdict')))}</b>: candidate {_percent(g.get('candidate_accuracy'))}, "
            f"champion {_percent(g.get('champion_accuracy'))} on {_gate_faces_text(g)}.</p>"
            + "<ul>"
            + "".join(f"<li>{html.escape(r)}</li>" for r in g.get("reasons") or [])
            + "</ul>",
        ),
        (
            "Lineage",
            _table(
                [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in card["lineage"].items()],
                ["what", "value"],
            ),
        ),
        (
            "Edge models",
            _table(
                [
                    [
                        name,
                        f"{spec['bytes'] / 1024:.0f} KiB",
                        f"{spec['latency_ms_per_face']} ms",
                        _percent(spec["parity"]["agreement"]),
                    ]
                    for name, spec in card["edge"]["files"].items()
                ],
                ["file", "size", "per face", "agreement with the SavedModel"],
            )
            + "".join(
                f"<p>{html.escape(kind)} not published: {html.escape('; '.join(why))}</p>"
                for kind, why in card["edge"]["not_published"].items()
            ),
        ),
        (
            "Energy",
            f"<p>{e['joules']:.0f} J ({e['kwh']:.2e} kWh, {1000 * e['co2e_kg']:.3f} g CO2e) over the run's components; "
            f"{html.escape(e['method'] or 'not measured')}.</p>"
            + _table(
                [[node, f"{r['joules']:.0f} J"] for node, r in card["energy"]["per_component"].items()],
                ["component", "energy"],
            ),
        ),
    ]
    body = "".join(f"<section><h2>{html.escape(title)}</h2>{content}</section>" for title, content in sections)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:900px;margin:2rem auto;color:#1d2433}"
        "table{border-collapse:collapse;margin:.5rem 0}"
        "td,th{border-bottom:1px solid #d9dee8;padding:.2rem .6rem;text-align:left}"
        "h2{margin-top:1.6rem}li{margin:.2rem 0}"
    )
    warning = (
        '<p style="color:#b42318"><b>Trained on SYNTHETIC faces.</b></p>' if card["trained_on_synthetic_faces"] else ""
    )
    title = f"Model card: emotion, version {html.escape(str(card['version']))}"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title><style>{style}</style></head>"
        f"<body><h1>{title}</h1>{warning}{body}</body></html>"
    )


@component
def ModelCardGen(
    model_run: InputArtifact[standard_artifacts.ModelRun],
    report: InputArtifact[ModelReport],
    gate_report: InputArtifact[GateReport],
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    edge: InputArtifact[EdgeModels],
    examples: InputArtifact[List[standard_artifacts.Examples]],  # noqa: UP006
    curated_dir: Parameter[str],
    pipeline_run_id: Parameter[str],  # TFX fills it in at run time (placeholder)
    pipeline_root: Parameter[str],
) -> None:
    """The pushed version's model card (HTML + JSON) in its assets.extra/."""
    if not pushed_model.get_int_custom_property("pushed"):
        log.info("model card: nothing was pushed in this run")
        return
    version_dir = pushed_model.get_string_custom_property("pushed_destination")
    spans = [span_of(e) for e in examples]
    run_id = pipeline_run_id or None
    card = card_content(
        os.path.basename(version_dir),
        training_data(curated_dir, spans),
        _read_json(os.path.join(report.uri, REPORT_JSON)),
        _read_json(os.path.join(model_run.uri, TRAINING_SUMMARY)),
        _read_json(os.path.join(gate_report.uri, GATE_REPORT_JSON)),
        _read_json(os.path.join(edge.uri, EDGE_METADATA)),
        recorded(pipeline_root, run_id) if run_id else {},
        run_id,
    )
    target = Path(version_dir)
    atomic_write_text(target / MODEL_CARD_JSON, json.dumps(card, indent=1, default=str))
    bias_png = Path(gate_report.uri, BIAS_REPORT_PNG)
    atomic_write_text(target / MODEL_CARD_HTML, card_html(card, bias_png.read_bytes() if bias_png.exists() else None))
    log.info(f"model card: {target / MODEL_CARD_HTML}")
