"""Tables in README.md and models/EXPERIMENTS.md generated from what they quote: the JSON of the card and the
bench, and the package's own modules.

A block between `<!-- NAME:start -->` and `<!-- NAME:end -->` is written by `python -m pneumo docs`;
tests/test_docs.py fails when a block differs from what its source gives, so a figure or a module list in
the docs is never copied by hand.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pneumo.core.card import ModelCard
from pneumo.core.files import atomic_write_text
from pneumo.core.paths import DEFAULT_MODEL_DIR, PROJECT_ROOT
from pneumo.evaluation.card_figures import by_label_in_words

README = PROJECT_ROOT / "README.md"
EXPERIMENTS = DEFAULT_MODEL_DIR / "EXPERIMENTS.md"


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def model_table(card: ModelCard) -> str:
    """The shipped model's figures: out of fold (all films, trusted positives), with intervals, per
    population, and the label audit, as the card records them."""
    v = card.validation
    point = v.get("operating_point", {})
    ci = point.get("bootstrap_95", {})
    audit = card.extra.get("label_audit", {})
    lines = [
        f"Threshold **{card.threshold:.4f}**: {card.threshold_rule}.",
        "",
        "| figures out of fold (n = {:,}) | value | 95 % interval (patient bootstrap) |".format(v.get("n", 0)),
        "| --- | --- | --- |",
        f"| ROC AUC | {_f(v.get('roc_auc'))} | {_f(v.get('bootstrap_95', {}).get('roc_auc', {}).get('low'))}–"
        f"{_f(v.get('bootstrap_95', {}).get('roc_auc', {}).get('high'))} |",
        f"| sensitivity, trusted pneumonias ({point.get('trusted_positives', '?')}) | "
        f"{_f(point.get('sensitivity_trusted'), 3)} | "
        f"{_f(ci.get('sensitivity_trusted', {}).get('low'), 3)}–"
        f"{_f(ci.get('sensitivity_trusted', {}).get('high'), 3)} |",
        f"| sensitivity, every pneumonia ({point.get('all_positives', '?')}) | {_f(v.get('sensitivity'), 3)} | "
        f"{_f(ci.get('sensitivity', {}).get('low'), 3)}–{_f(ci.get('sensitivity', {}).get('high'), 3)} |",
        f"| specificity | {_f(v.get('specificity'), 3)} | {_f(ci.get('specificity', {}).get('low'), 3)}–"
        f"{_f(ci.get('specificity', {}).get('high'), 3)} |",
        f"| accuracy | {_f(v.get('accuracy'), 3)} | |",
        f"| threshold itself | {_f(card.threshold)} | {_f(ci.get('threshold', {}).get('low'))}–"
        f"{_f(ci.get('threshold', {}).get('high'))} |",
    ]
    pops = card.shift_checks.get("populations", {})
    if pops.get("by_population"):
        lines += ["", "| population (out of fold) | n | figure at the threshold |", "| --- | --- | --- |"]
        for r in pops["by_population"]:
            figure = (
                f"specificity {_f(r['specificity'], 3)}"
                if "specificity" in r
                else f"sensitivity {_f(r['sensitivity'], 3)}"
            )
            lines.append(f"| {r['population']} | {r['n']:,} | {figure} |")
        for key, label in (("band_specificity_range", "specificity"), ("band_sensitivity_range", "sensitivity")):
            if key in pops:
                lines.append(
                    f"| five bands of patient numbers per series | | {label} {_f(pops[key][0], 3)}–"
                    f"{_f(pops[key][1], 3)} |"
                )
    for held in card.shift_checks.get("leave_population_out", []):
        lines += [
            "",
            f"Leave-population-out ({held['held_out']}): one network of the same recipe, trained without that "
            f"population, scored on it: n = {held['n']:,}, ROC AUC {_f(held['roc_auc'])}, "
            f"sensitivity {_f(held['sensitivity'], 3)}, specificity {_f(held['specificity'], 3)} at this threshold.",
        ]
    if audit:
        lines += [
            "",
            f"Label audit: {audit['suspects']} of {audit['n']:,} films ({audit['suspect_share']:.1%}) suspected "
            f"label errors ({by_label_in_words(audit['suspects_by_label'])}).",
        ]
    faith = card.extra.get("explanation")
    if faith:
        lines += [
            "",
            "| map | deletion score (lower: more faithful) | decided PNEUMONIA | decided NORMAL |",
            "| --- | --- | --- | --- |",
        ]
        for r in faith["table"]:
            lines.append(
                f"| {r['map']} | {_f(r['deletion score (all)'])} | {_f(r.get('decided PNEUMONIA'))} | "
                f"{_f(r.get('decided NORMAL'))} |"
            )
    lines += framing_table(card)
    lines += calibration_lines(card)
    members = (faith or {}).get("members") or []
    anatomy = [m["anatomy"] for m in members if m.get("anatomy")]
    if anatomy:
        lines += [
            "",
            "| map (mean over members, held-out films) | heat inside the lung field | peak inside the lung field |",
            "| --- | --- | --- |",
        ]
        for k, row in enumerate(anatomy[0]):
            heat = sum(a[k]["heat inside lungs"] for a in anatomy) / len(anatomy)
            peaks = [a[k]["peak inside lungs"] for a in anatomy if a[k]["peak inside lungs"] is not None]
            lines.append(f"| {row['map']} | {_f(heat, 3)} | {_f(sum(peaks) / len(peaks), 3) if peaks else 'n/a'} |")
    seconds = card.training.get("seconds")
    lines += ["", f"Training: {_f((seconds or 0) / 60, 0)} min in all on {card.training.get('device', '?')}."]
    return "\n".join(lines)


def calibration_lines(card: ModelCard) -> list[str]:
    """The card's probability map (pneumo.evaluation.calibration) and its calibration error, in one paragraph."""
    calib = card.extra.get("probability_calibration")
    if not calib:
        return ["", "Probability: the ensemble's score as it is (no calibration map in the card)."]
    return [
        "",
        f"Probability: the score mapped by Platt scaling (a = {_f(calib['a'])}, b = {_f(calib['b'])}), fitted on "
        f"{calib['fitted_on']}. Expected calibration error, {calib['measured_on']}: score {_f(calib['ece_score_oof'])}"
        f" → probability {_f(calib['ece_oof'])} out of fold; on the later period ({calib['n_later_period']} films) "
        f"{_f(calib['ece_score_later_period'])} → {_f(calib['ece_later_period'])}. It holds at this collection's "
        f"share of pneumonia ({_f(calib['prevalence'], 2)}); the threshold {_f(card.threshold)} on the score is "
        f"probability {_f(card.probability(card.threshold))}. `python -m pneumo calibrate-probability` reproduces it.",
    ]


def framing_table(card: ModelCard) -> list[str]:
    """The framing sweep of the card (shift_checks.framing) as Markdown lines: each zoom's figures at the threshold."""
    framing = card.shift_checks.get("framing") or {}
    rows = [r for r in framing.get("conditions") or [] if r.get("family") == "zoom"]
    if not rows:
        return []

    def iv(r: dict[str, Any], key: str) -> str:
        ci = r.get(f"{key}_95") or {}
        return f"{_f(r.get(key), 3)} ({_f(ci.get('low'), 3)}–{_f(ci.get('high'), 3)})"

    lines = [
        "",
        f"Framing sweep: {framing.get('how', '')}.",
        "",
        "| zoom | sensitivity (95 % interval) | specificity (95 % interval) | share flagged | ROC AUC |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: r["zoom"]):
        lines.append(
            f"| {r['zoom']:g}× | {iv(r, 'sensitivity')} | {iv(r, 'specificity')} | "
            f"{_f(r.get('flagged_fraction'), 3)} | {_f(r.get('roc_auc'))} |"
        )
    cautions = framing.get("cautions") or []
    lines += [
        "",
        "Framing caution: " + "; ".join(cautions)
        if cautions
        else "No framing caution: sensitivity and specificity stay within 0.05 of their clean figures "
        "from 0.85× to 1.3×.",
    ]
    return lines


def _card() -> ModelCard:
    return ModelCard.read(DEFAULT_MODEL_DIR / "card.json")


BENCH = PROJECT_ROOT / "bench" / "results.json"
PACKAGE = PROJECT_ROOT / "pneumo"


def _summary(source: str) -> str:
    """A module docstring's first line as written before wrapping: its first paragraph on one line."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _dotted(package: Path, path: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_map(package: Path = PACKAGE) -> str:
    """Every module of a package with the first line of its docstring, one table per subpackage (the top level
    first, then the subpackages by name; a subpackage's own subpackages sit in its table). Read from the
    source, never imported: the list costs no TensorFlow or Streamlit start-up."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(package.rglob("*.py")):
        name = _dotted(package, path)
        parts = name.split(".")
        nested = len(parts) > 2 or (len(parts) == 2 and (package / parts[1]).is_dir())
        group = ".".join(parts[:2]) if nested else parts[0]
        groups.setdefault(group, []).append((name, _summary(path.read_text(encoding="utf-8"))))
    lines: list[str] = []
    for group in sorted(groups, key=lambda g: (g != package.name, g)):
        lines += ["", f"**`{group}`**" if group != package.name else f"**`{group}`** (top level)", ""]
        lines += ["| module | what it holds |", "| --- | --- |"]
        for name, summary in sorted(groups[group]):
            escaped = summary.replace("|", "\\|")  # a bar in a docstring would end the table cell
            lines.append(f"| `{name}` | {escaped or '(no docstring)'} |")
    return "\n".join(lines[1:])


SCREEN_BENCH = PROJECT_ROOT / "bench" / "screen-results.json"


def _duration(hours: float) -> str:
    """Hours as a reader takes them in: minutes below one hour."""
    return f"{hours:,.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def _nodes(count: float) -> str:
    """A number of nodes in words: a share of one below one, whole nodes from ten."""
    if count < 1:
        return f"{count:.2f} of one node"
    return f"{count:.0f} nodes" if count >= 10 else f"{count:.1f} nodes"


def screen_figures(results: dict[str, Any]) -> str:
    """The README's screening figures and its estimate for a million films, from bench/screen-results.json."""

    def mid(block: dict[str, Any], digits: int = 1) -> str:
        return f"{block['median']:,.{digits}f} [{block['p10']:,.{digits}f}–{block['p90']:,.{digits}f}]"

    rate, steady, ms = results["films_per_s"], results["steady_films_per_s"], results["ms_per_film"]
    loads = results.get("load_average_1min_before_each_round") or [0.0]
    est = results["estimate"]
    full = results["full_size_films"]
    hours = est["hours_on_nodes"]
    limits, reading = est["nodes_until_storage_limit"], est["hours_to_read_at_bandwidth"]
    jpeg, first = est["jpeg"], next(iter(est["nodes_until_storage_limit"]))
    bandwidth = est["assumed_bandwidth_mb_s"]
    return "\n".join(
        [
            f"Measured by `{results['command']}` ({results['when'][:10]}, `bench/screen-results.json`): "
            f"{results['films']:,} films of the {results['film_source']} ({results['film_side_px']} px JPEGs) on "
            f"{results['machine']['cores']} cores, {results['rounds']} interleaved rounds, median [p10–p90]. Other "
            f"work shared the cores (1-minute load average {min(loads):.1f}–{max(loads):.1f} before the rounds), so "
            "the ratios, taken within each round, say more than the rates.",
            "",
            "| run | films/s, whole call | films/s once the actors are up |",
            "| --- | --- | --- |",
            f"| `screen`, 2 actors | {mid(rate['screen_2_actors'])} | {mid(steady['screen_2_actors'])} |",
            f"| `screen`, 1 actor | {mid(rate['screen_1_actor'])} | {mid(steady['screen_1_actor'])} |",
            f"| `evaluate` (probabilities, metrics, drift check) | {mid(rate['evaluate'])} | — |",
            "",
            f"`screen` over `evaluate`: {mid(results['screen_over_evaluate'], 2)}; two actors over one: "
            f"{mid(results['two_actors_over_one'], 2)}; Ray's start-up {mid(results['ray_start_s'], 1)} s a run. "
            f"One film's parts (ms): reading its bytes {ms['read_ms']['median']:.2f} (from the page cache), "
            f"decoding {ms['decode_ms']['median']:.1f}, the network {ms['network_ms']['median']:.1f} (32 films at "
            f"once, one thread, probability and features in one pass), the input check "
            f"{ms['input_check_ms']['median']:.2f}, the driver's part {ms['driver_ms']['median']:.2f}. A full-size "
            f"film ({full['px'][0]:,} × {full['px'][1]:,} px, an uncompressed DICOM of "
            f"{full['bytes']['dicom'] / 1e6:.1f} MB) costs {ms['film_work_full_size_dicom_ms']['median']:.0f} ms of "
            f"hashing, decoding and resizing where a training film costs {ms['film_work_ms']['median']:.1f}.",
            "",
            f"A paper estimate for {est['films']:,} such films: one actor takes "
            f"{est['actor_ms_per_full_size_film']:.0f} ms a film, so a {est['assumed_node_cores']}-core node (one "
            "actor per core, at the "
            f"{est['parallel_efficiency']:.2f} parallel efficiency measured here) reads {est['node_films_per_s']:.0f}"
            f" films/s and asks the archive for {est['node_read_mb_s']:.0f} MB/s. That is "
            + ", ".join(f"{_duration(hours[n])} on {n} node{'s' if n != '1' else ''}" for n in hours)
            + ", as long as the archive keeps up. The films are read where they lie, so the nodes together stop "
            "scaling at the storage's or the PACS's read bandwidth, which must deliver "
            f"{est['films'] * est['film_mb'] / 1e6:,.1f} TB: "
            + "; ".join(
                f"a {link} ({bandwidth[link]:,.0f} MB/s) feeds {_nodes(limits[link])} and takes "
                f"{_duration(reading[link])} however many nodes read"
                for link in limits
            )
            + f". An archive of JPEG exports ({jpeg['film_mb']:.2f} MB a film here) asks "
            f"{jpeg['node_read_mb_s']:.0f} MB/s a node: a {first} then feeds "
            f"{_nodes(jpeg['nodes_until_storage_limit'][first])}. The one driver, which writes every Parquet part, "
            f"keeps up with {est['driver_films_per_s_limit']:,} films/s ({_nodes(est['nodes_until_driver_limit'])}).",
        ]
    )


BLOCKS: dict[str, tuple[Path, Callable[[], str]]] = {
    "model-table": (README, lambda: model_table(_card())),
    "experiments-shipped": (EXPERIMENTS, lambda: model_table(_card())),
    "bench-table": (README, lambda: bench_table(load_json(BENCH))),
    "screen-figures": (README, lambda: screen_figures(load_json(SCREEN_BENCH))),
    "module-map": (README, module_map),
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.S)


def expected(name: str) -> str:
    return BLOCKS[name][1]().rstrip() + "\n"


def current(name: str) -> str | None:
    path = BLOCKS[name][0]
    m = _pattern(name).search(path.read_text()) if path.exists() else None
    return m.group(2) if m else None


def write(names: list[str] | None = None) -> list[Path]:
    """Regenerate the blocks (all by default); returns the files changed."""
    changed = []
    for name in names or list(BLOCKS):
        path = BLOCKS[name][0]
        text = path.read_text()
        m = _pattern(name).search(text)
        if m is None:
            raise ValueError(f"{path}: no <!-- {name}:start --> … <!-- {name}:end --> block")
        new = text[: m.start(2)] + expected(name) + text[m.end(2) :]
        if new != text:
            atomic_write_text(path, new)
            changed.append(path)
    return changed


def bench_table(results: dict[str, Any]) -> str:
    """The README's performance table from bench/results.json: each headline key, its value and spread."""
    spread = results.get("spread", {})
    peak = results.get("peak", {})
    lines = [
        f"`make bench`, {results.get('date', '?')[:10]}, {results.get('cpu', {}).get('model', '?')} "
        f"({results.get('cpu_count', '?')} cores), model {results.get('model_forward_gflops', '?')} GFLOP per film; "
        f"ceiling {peak.get('ceiling_gflops', '?')} GFLOP/s, the larger of the theoretical FMA peak "
        f"{peak.get('gflops', '?')} GFLOP/s ({peak.get('how', '')}) and the best GEMM measured in the run "
        f"{results.get('gemm_best_gflops', '?')} GFLOP/s.",
        "",
        "| key | value | spread [p10, p90] |",
        "| --- | --- | --- |",
    ]
    for key, value in results.get("headline", {}).items():
        lo_hi = spread.get(key)
        lines.append(
            f"| `{key}` | {_f(value, 3)} | {'[' + ', '.join(_f(x, 3) for x in lo_hi) + ']' if lo_hi else '—'} |"
        )
    return "\n".join(lines)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
