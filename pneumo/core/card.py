"""The model card: what a model is, how its operating point was chosen, and what is known of it.

One type, built in one place for single runs and ensembles, read and validated on load. Its sections
keep apart what was measured where: ``validation`` (the run's own held-out split, named by kind),
``shift_checks`` (stress suite, bootstrap spread, other held-out populations), ``explanation_trust``
and ``external_evaluations`` (labelled collections evaluated later with ``evaluate --record``).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pneumo.core.files import atomic_write_json, atomic_write_text, check_writable, file_lock, json_text
from pneumo.core.paths import CLASS_NAMES

# Below this many validation films, or above this width of the AUC interval, a model carries a caution.
MIN_VALIDATION_FILMS = 200
MAX_AUC_INTERVAL = 0.05


class CardError(ValueError):
    """A card that cannot be used for inference; the message names the card and the problem."""


# The card's probability map (pneumo.evaluation.calibration): the served score's logit mapped by a and b.
PROBABILITY_CALIBRATION = "probability_calibration"


def platt(score: Any, a: float, b: float) -> Any:
    """sigmoid(a * logit(score) + b), elementwise; a > 0 keeps the order of scores, so a decision at threshold
    t on the score is the same decision at platt(t) on the probability."""
    import numpy as np

    q = np.clip(np.asarray(score, dtype=np.float64), 1e-6, 1 - 1e-6)
    return 1.0 / (1.0 + np.exp(-(a * np.log(q / (1 - q)) + b)))


def _check_calibration(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise CardError(f"{where}: {PROBABILITY_CALIBRATION} must be a JSON object, got {type(value).__name__}")
    a, b, prevalence = value.get("a"), value.get("b"), value.get("prevalence")
    numbers = all(_is_number(x) and math.isfinite(float(x or 0)) for x in (a, b, prevalence))
    if value.get("method") != "platt" or not numbers or not float(a or 0) > 0 or not 0 <= float(prevalence or 0) <= 1:
        # a <= 0 would reverse the order of scores; every page says at which share of pneumonia the map holds.
        raise CardError(
            f"{where}: {PROBABILITY_CALIBRATION} must be a Platt map: finite a > 0 and b, and its prevalence"
        )


def check_threshold(value: Any, where: str) -> float:
    """A threshold as a float in [0, 1], or CardError naming where it came from."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CardError(f"{where}: threshold must be a number in [0, 1], got {str(value)[:40]!r}")
    try:
        number = float(value)
    except OverflowError:  # a 400-digit integer: no float holds it, and math.isfinite would raise
        raise CardError(
            f"{where}: threshold must be a number in [0, 1], got an integer of about "
            f"{int(int(value).bit_length() * 0.30103) + 1} digits"
        ) from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise CardError(f"{where}: threshold must be a number in [0, 1], got {number:.6g}")
    return number


# What the pages, the PDF and the CSV format as numbers: in the sections holding figures, a key of these
# names holds a number, null, or (for bootstrap intervals and worst conditions) an object of them.
_FIGURE_KEYS = frozenset(
    {
        "threshold",
        "roc_auc",
        "pr_auc",
        "accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "npv",
        "f1",
        "flagged_fraction",
        "mean_auc",
        "worst_auc",
        "mean_specificity",
        "worst_specificity",
        "low",
        "high",
        "sd",
        "outside_chest_mean",
        "outside_chest_p90",
        "val_roc_auc",
        "oof_roc_auc",
        "seconds",
    }
)
_COUNT_KEYS = frozenset({"n", "tn", "fp", "fn", "tp"})
_FIGURE_SECTIONS = frozenset(
    {"validation", "shift_checks", "explanation_trust", "external_evaluations", "threshold_history", "training"}
)
_FREE_SUBTREES = frozenset({("training", "config"), ("training", "library_versions")})  # written by other code
MAX_DEPTH = 32  # the shipped card nests 5 levels; st.json, deepcopy and json.dumps recurse


def _name(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


def _check_values(values: dict[str, Any], where: str) -> None:
    """Depth everywhere, and the type of every figure and count in the figure sections (iteratively: a
    crafted card must not exhaust the stack of the check meant to stop it)."""
    stack: list[tuple[Any, tuple[Any, ...], bool]] = [(v, (k,), k in _FIGURE_SECTIONS) for k, v in values.items()]
    while stack:
        item, path, figures = stack.pop()
        if len(path) > MAX_DEPTH:
            raise CardError(f"{where}: {_name(path[:3])}… is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            children = list(item.items())
        elif isinstance(item, list):
            children = list(enumerate(item))
        else:
            continue
        for key, value in children:
            here = (*path, key)
            inside = figures and here[:2] not in _FREE_SUBTREES
            if inside and isinstance(item, dict) and key in _FIGURE_KEYS:
                if not (value is None or isinstance(value, dict) or _is_number(value)):
                    raise CardError(f"{where}: {_name(here)} must be a number, got {type(value).__name__}")
            if inside and isinstance(item, dict) and key in _COUNT_KEYS:
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**12
                ):
                    raise CardError(f"{where}: {_name(here)} must be a count, got {str(value)[:20]!r}")
            stack.append((value, here, inside))


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not isinstance(value, int) or abs(value) < 10**15


def _check_shapes(values: dict[str, Any], where: str) -> None:
    """The objects and arrays the pages index into, where present."""

    def need(value: Any, kind: type, name: str) -> Any:
        if not isinstance(value, kind):
            raise CardError(
                f"{where}: {name} must be a JSON {'object' if kind is dict else 'array'}, got {type(value).__name__}"
            )
        return value

    def items(value: Any, name: str) -> None:
        for i, entry in enumerate(need(value, list, name)):
            need(entry, dict, f"{name}[{i}]")

    shift = values.get("shift_checks") or {}
    if shift.get("stress") is not None:
        stress = need(shift["stress"], dict, "shift_checks.stress")
        for key in ("conditions", "folds"):
            if stress.get(key) is not None:
                items(stress[key], f"shift_checks.stress.{key}")
        for key in ("worst_auc", "worst_specificity"):
            if isinstance(stress.get(key), dict) and not isinstance(stress[key].get("condition", ""), str):
                raise CardError(f"{where}: shift_checks.stress.{key}.condition must be text")
        for i, row in enumerate(stress.get("conditions") or []):
            if not isinstance(row.get("condition", ""), str):
                raise CardError(f"{where}: shift_checks.stress.conditions[{i}].condition must be text")
    if shift.get("framing") is not None:
        framing = need(shift["framing"], dict, "shift_checks.framing")
        for key in ("conditions", "stress"):
            if framing.get(key) is not None:
                items(framing[key], f"shift_checks.framing.{key}")
        if not all(
            isinstance(c, str) for c in need(framing.get("cautions") or [], list, "shift_checks.framing.cautions")
        ):
            raise CardError(f"{where}: shift_checks.framing.cautions must be a list of texts")
    for section in ("shift_checks", "validation"):
        block = values.get(section) or {}
        if block.get("bootstrap_95") is not None:
            for key, interval in need(block["bootstrap_95"], dict, f"{section}.bootstrap_95").items():
                need(interval, dict, f"{section}.bootstrap_95.{key}")
    if (values.get("validation") or {}).get("confusion") is not None:
        need(values["validation"]["confusion"], dict, "validation.confusion")
    for section in ("external_evaluations", "threshold_history"):
        if values.get(section) is not None:
            items(values[section], section)
    for i, entry in enumerate(values.get("external_evaluations") or []):
        for key in ("name", "date", "data", "threshold_source", "file_list_sha256_16"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise CardError(
                    f"{where}: external_evaluations[{i}].{key} must be text, got {type(entry[key]).__name__}"
                )
        if entry.get("confusion") is not None:
            need(entry["confusion"], dict, f"external_evaluations[{i}].confusion")
    if (values.get("training") or {}).get("members") is not None:
        items(values["training"]["members"], "training.members")


# ---------------------------------------------------------------------- site operating point names

SHIPPED_POINT = "shipped"  # the card's own operating point: never a site point's name
MAX_SITE_NAME = 64  # characters, for a new name
MAX_STORED_SITE_NAME = 100  # what earlier versions let calibrate write: a card holding longer names is refused
SITE_NAME_PUNCTUATION = frozenset(" -_.()'&+,")

# Letters that look like Latin ones (Unicode TS 39's confusables, the ones that matter for short names), by the
# Latin letter they pass for. Both cases are listed: the table is applied before case folding, as a capital
# Cyrillic EN (Н) passes for H but folds to н, which does not pass for h.
_LOOKALIKES = str.maketrans(
    {
        **dict.fromkeys("аɑαⱥ", "a"),
        **dict.fromkeys("АΑᎪ", "A"),
        **dict.fromkeys("ВΒᏴ", "B"),
        **dict.fromkeys("сϲⅽ", "c"),
        **dict.fromkeys("СϹᏟ", "C"),
        **dict.fromkeys("ԁɗᑯꓒ", "d"),
        **dict.fromkeys("ᎠꓓⅮ", "D"),
        **dict.fromkeys("еҽєꬲ", "e"),
        **dict.fromkeys("ЕΕᎬⴹ", "E"),
        **dict.fromkeys("ɡ", "g"),
        **dict.fromkeys("һհᏂ", "h"),
        **dict.fromkeys("НΗᎻꓧ", "H"),
        **dict.fromkeys("іıɩιӏǀɪꙇ", "i"),
        **dict.fromkeys("ІΙӀᎥⅠ", "I"),
        **dict.fromkeys("јϳ", "j"),
        **dict.fromkeys("ЈᎫ", "J"),
        **dict.fromkeys("κк", "k"),
        **dict.fromkeys("КΚᏦ", "K"),
        **dict.fromkeys("МΜᎷ", "M"),
        **dict.fromkeys("ΝᏁ", "N"),
        **dict.fromkeys("оοօσ", "o"),
        **dict.fromkeys("ОΟՕ", "O"),
        **dict.fromkeys("рρϱ", "p"),
        **dict.fromkeys("РΡᏢ", "P"),
        **dict.fromkeys("ԛ", "q"),
        **dict.fromkeys("ѕꜱʂ", "s"),
        **dict.fromkeys("ЅᏚՏ", "S"),
        **dict.fromkeys("ТΤᎢ", "T"),
        **dict.fromkeys("υսʋ", "u"),
        **dict.fromkeys("νѵ", "v"),
        **dict.fromkeys("ԝѡ", "w"),
        **dict.fromkeys("хχ", "x"),
        **dict.fromkeys("ХΧ", "X"),
        **dict.fromkeys("уγ", "y"),
        **dict.fromkeys("УΥ", "Y"),
        **dict.fromkeys("ΖᏃ", "Z"),
    }
)
# Then the ASCII look-alikes of one another (l, 1 and I; 0 and O; rn and m; cl and d; vv and w), folded on both
# sides of a comparison.
_ASCII_FOLDS = (("rn", "m"), ("cl", "d"), ("vv", "w"), ("1", "l"), ("i", "l"), ("|", "l"), ("0", "o"))
# Scripts whose letters pass for Latin ones: a word mixing two of them is how a look-alike name is made, and no
# place or ward is written that way (a name may still mix scripts across words: "Klinik Москва").
_LATIN_LOOKALIKE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC", "LISU"})


def site_name_skeleton(name: str) -> str:
    """What a name looks like, for comparison: NFKC, look-alike letters as the Latin ones they pass for, case
    folded, accents dropped, ASCII look-alikes folded, spaces collapsed. Two names with one skeleton cannot be
    told apart on a screen (or hardly), so they are one name."""
    text = unicodedata.normalize("NFKC", name).translate(_LOOKALIKES).casefold()
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = text.translate(_LOOKALIKES)  # a letter its accent hid (ї is і with a diaeresis)
    for seen, folded in _ASCII_FOLDS:
        text = text.replace(seen, folded)
    return " ".join(text.split())


def _shown(name: str) -> str:
    """A name in a message: the first 40 characters, anything outside ASCII escaped (a look-alike shows as one)."""
    return ascii(name[:40]) + ("…" if len(name) > 40 else "")


def check_site_name(name: Any, where: str = "--name") -> str:
    """A new site operating point's name, normalised (NFKC, single spaces), or ValueError saying why not.

    The rule: at most MAX_SITE_NAME characters, each a letter, combining mark or digit of any script, a space
    or one of SITE_NAME_PUNCTUATION, with at least one letter or digit; no word mixing Latin with Cyrillic,
    Greek or another script whose letters pass for Latin ones; and not the card's own point's name, nor
    anything that looks like it (site_name_skeleton). The character set keeps out what no name needs and
    what harms where names are shown (control and format characters, bidirectional overrides, zero-width
    joiners, emoji, quotes that end a CSV field); the look-alike rules keep the sidebar's choice honest: a
    point that reads "shipped" but is not the card's own must not exist.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: a site operating point needs a name")
    if len(name) > 4 * MAX_SITE_NAME:  # refused before any work on it (a 200 KB name is not normalised)
        raise ValueError(f"{where}: a site operating point's name has at most {MAX_SITE_NAME} characters")
    text = unicodedata.normalize("NFKC", name)
    bad = [c for c in text if not (c in SITE_NAME_PUNCTUATION or unicodedata.category(c)[0] in "LM" or c.isdigit())]
    if bad:
        raise ValueError(
            f"{where}: {_shown(name)} holds {ascii(bad[0])} ({unicodedata.name(bad[0], 'a control character')}); "
            "a site operating point's name holds letters, digits, spaces and - _ . ( ) ' & + , only"
        )
    text = " ".join(part for part in text.split(" ") if part)  # spaces collapsed: "ward  A" is "ward A"
    if len(text) > MAX_SITE_NAME:
        raise ValueError(f"{where}: a site operating point's name has at most {MAX_SITE_NAME} characters")
    if not any(c.isalnum() for c in text):
        raise ValueError(f"{where}: {_shown(text)} holds no letter or digit")
    for word in re.split(r"[^\w]+|_", text):
        scripts = {
            unicodedata.name(c, "?").split(" ")[0] for c in word if unicodedata.category(c)[0] == "L"
        } & _LATIN_LOOKALIKE_SCRIPTS
        if len(scripts) > 1:
            raise ValueError(
                f"{where}: {_shown(text)} mixes {' and '.join(sorted(s.title() for s in scripts))} letters in one "
                "word, which is how a look-alike of another name is made; write each word in one script"
            )
    if site_name_skeleton(text) == site_name_skeleton(SHIPPED_POINT):
        raise ValueError(
            f"{where}: {_shown(text)} is, or looks like, '{SHIPPED_POINT}', the card's own operating point; "
            "choose another name"
        )
    return text


def _check_site_points(points: Any, where: str) -> None:
    """Site operating points are read for inference: each a named object with a usable threshold, names unique
    and unlike one another and the card's own point's (a hand-edited point named "shipped" would be offered
    beside the card's own, under the same name). Names are held to what earlier versions wrote (printable, at
    most MAX_STORED_SITE_NAME characters), not to check_site_name's newer rules: a card those wrote is read."""
    if not isinstance(points, list):
        raise CardError(f"{where}: site_operating_points must be a JSON array")
    names: dict[str, str] = {}  # skeleton -> name
    for point in points:
        if not isinstance(point, dict) or not isinstance(point.get("name"), str) or not point["name"].strip():
            raise CardError(f"{where}: every site operating point needs a name")
        name = point["name"]
        if len(name) > MAX_STORED_SITE_NAME or not name.isprintable():
            raise CardError(
                f"{where}: site operating point {_shown(name)}: a name is at most {MAX_STORED_SITE_NAME} "
                "printable characters"
            )
        if site_name_skeleton(name) == site_name_skeleton(SHIPPED_POINT):
            raise CardError(
                f"{where}: a site operating point is named {_shown(name)}, which is, or looks like, "
                f"'{SHIPPED_POINT}', the card's own operating point; rename or remove it in the card"
            )
        check_threshold(point.get("threshold"), f"{where}: site operating point '{name}'")
        key = site_name_skeleton(name)
        if key in names:
            if names[key] == name:
                raise CardError(f"{where}: two site operating points are named '{name}'")
            raise CardError(
                f"{where}: two site operating points look alike, {_shown(names[key])} and {_shown(name)}; "
                "rename or remove one in the card"
            )
        names[key] = name


@dataclass
class ModelCard:
    name: str
    architecture: str
    threshold: float
    threshold_rule: str = "not recorded"
    input_size: int | None = None
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    gradcam_layer: str | None = None
    description: str = ""
    preprocessing: str = ""
    parameters: int | None = None
    training_data: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    shift_checks: dict[str, Any] = field(default_factory=dict)
    explanation_trust: dict[str, Any] = field(default_factory=dict)
    external_evaluations: list[dict[str, Any]] = field(default_factory=list)
    # Named operating points set on a site's own labelled films (pneumo.evaluation.site); the card's own threshold
    # stays the default ("shipped"), a site point is put in force by name.
    site_operating_points: list[dict[str, Any]] = field(default_factory=list)
    threshold_history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    data_attribution: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls, name: str) -> ModelCard:
        return cls(name=name, architecture="unknown", threshold=0.5, threshold_rule="no card: default 0.5")

    @classmethod
    def from_dict(cls, obj: Any, where: str = "card") -> ModelCard:
        if not isinstance(obj, dict):
            raise CardError(f"{where}: a card must be a JSON object, got {type(obj).__name__}")
        values = dict(obj)
        if "validation_metrics" in values and "validation" not in values:  # cards written before sections
            values["validation"] = values.pop("validation_metrics")
        _check_values(values, where)  # before anything below recurses into or formats what the card holds
        if "threshold" not in values:
            raise CardError(f"{where}: no threshold; inference needs the operating threshold")
        values["threshold"] = check_threshold(values["threshold"], where)
        names = values.get("class_names", list(CLASS_NAMES))
        if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) for n in names)):
            raise CardError(f"{where}: class_names must be two names, got {names!r}")
        size = values.get("input_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
            raise CardError(f"{where}: input_size must be a positive integer, got {size!r}")
        known = {f.name for f in fields(cls)} - {"extra"}
        given_extra = values.pop("extra", None)
        if given_extra is not None and not isinstance(given_extra, dict):
            raise CardError(f"{where}: extra must be a JSON object, got {type(given_extra).__name__}")
        clash = sorted(set(given_extra or {}) & (known | {"extra"}))
        if clash:  # to_dict() spreads extra over the card: it would overwrite the card's own fields
            raise CardError(f"{where}: extra holds {', '.join(clash[:3])}, the name of a card field")
        extra = {**(given_extra or {}), **{k: values.pop(k) for k in list(values) if k not in known}}
        for key in ("input_check", "serving", "label_audit"):
            if extra.get(key) is not None and not isinstance(extra[key], dict):
                raise CardError(f"{where}: {key} must be a JSON object, got {type(extra[key]).__name__}")
        if extra.get(PROBABILITY_CALIBRATION) is not None:
            _check_calibration(extra[PROBABILITY_CALIBRATION], where)
        for key, kind in (
            ("training_data", dict),
            ("validation", dict),
            ("shift_checks", dict),
            ("explanation_trust", dict),
            ("external_evaluations", list),
            ("threshold_history", list),
            ("training", dict),
        ):
            if key in values and values[key] is None:
                values.pop(key)  # null: the section was not recorded
            elif key in values and not isinstance(values[key], kind):
                raise CardError(
                    f"{where}: {key} must be a JSON {'object' if kind is dict else 'array'}, "
                    f"got {type(values[key]).__name__}"
                )
        _check_shapes(values, where)
        parameters = values.get("parameters")
        if parameters is not None and (
            isinstance(parameters, bool) or not isinstance(parameters, int) or not 0 <= parameters <= 10**13
        ):
            raise CardError(f"{where}: parameters must be a whole number, got {str(parameters)[:20]!r}")
        layer = values.get("gradcam_layer")
        if layer is not None and not isinstance(layer, str):
            raise CardError(f"{where}: gradcam_layer must be a layer name, got {type(layer).__name__}")
        _check_site_points(values.get("site_operating_points", []), where)
        values.setdefault("name", Path(where).parent.name or "model")
        values.setdefault("architecture", "unknown")
        for key in (
            "name",
            "architecture",
            "threshold_rule",
            "description",
            "preprocessing",
            "data_attribution",
            "created",
        ):
            if key in values and values[key] is not None:
                values[key] = str(values[key])
            elif key in values:
                values.pop(key)
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """The card at path; CardError when it is unreadable or unusable."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except OSError as exc:
            raise CardError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        except ValueError as exc:
            raise CardError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(obj, str(path))

    def write(self, path: str | Path) -> None:
        """Replace the card at path whole. A change to a card that exists goes through update_card instead,
        which holds the card's lock across the read, the change and this write."""
        atomic_write_json(path, self.to_dict())

    def probability(self, score: float) -> float:
        """The probability of pneumonia a score stands for: the card's out-of-fold calibration map where it
        has one (pneumo.evaluation.calibration), else the score itself (an older card)."""
        calib = self.extra.get(PROBABILITY_CALIBRATION)
        if not calib:
            return float(score)
        return float(platt(score, float(calib["a"]), float(calib["b"])))

    @property
    def calibrated(self) -> bool:
        """Whether probability() maps scores (else it returns them as they are)."""
        return bool(self.extra.get(PROBABILITY_CALIBRATION))

    def cautions(self) -> list[str]:
        """What a reader of any figure or decision of this model must know first: validated on few films,
        with a wide interval, or with poor figures at its own threshold. Shown wherever the model is used
        (Predict, Overview, every PDF, predict --json), not only where it was trained."""
        v = self.validation
        if not v:
            return ["no validation recorded: nothing is known of its figures"]
        out: list[str] = []
        n_raw = v.get("n")
        n = n_raw if isinstance(n_raw, int) else 0
        ci = (v.get("bootstrap_95") or self.shift_checks.get("bootstrap_95") or {}).get("roc_auc") or {}
        low, high = ci.get("low"), ci.get("high")
        width = high - low if isinstance(low, (int, float)) and isinstance(high, (int, float)) else None
        if n < MIN_VALIDATION_FILMS:
            out.append(
                f"validated on only {n} films (fewer than {MIN_VALIDATION_FILMS}): its figures and its threshold "
                "are not established"
            )
        if width is not None and width > MAX_AUC_INTERVAL:
            out.append(f"wide uncertainty: ROC AUC 95 % interval {ci['low']:.3f}–{ci['high']:.3f}")
        for key, floor in (("sensitivity", 0.8), ("specificity", 0.5)):
            value = v.get(key)
            if isinstance(value, (int, float)) and value < floor:
                out.append(f"{key} {value:.2f} at its own threshold on its validation films")
        framing = self.shift_checks.get("framing") or {}
        out += [c for c in framing.get("cautions") or [] if isinstance(c, str)]
        return out

    @property
    def validation_kind(self) -> str:
        return str(self.validation.get("kind", "patient"))

    @property
    def in_distribution(self) -> bool:
        """True when the validation images were a random patient draw of the training collection."""
        return self.validation_kind in ("patient", "fold", "out-of-fold")


# ---------------------------------------------------------------------- changing a card on disk

CARD_MAX_BYTES = 8 * 2**20  # the shipped card is 9 KB (pneumo.model.loading refuses larger ones on load too)
CARD_LOCK_TIMEOUT_S = 10.0  # an update holds the lock for milliseconds; ten seconds is another process stuck


def update_card(
    path: str | Path,
    change: Callable[[ModelCard], object],
    *,
    timeout: float | None = None,
    create: bool = True,
) -> ModelCard:
    """Read the card at path, apply change to it, and write it back, one writer at a time; the changed card.

    Every process that changes a card does it here (calibrate, evaluate --record, drift-reference, sweep
    --record, the app's threshold and site saves), so the card's lock (pneumo.core.files.file_lock) is held
    across the read, the change and the write: two updates at once are applied one after the other, and
    neither is lost. Read and written without the lock, six calibrations at once kept four or five points.

    Refused, with nothing written: a read-only card or folder (ReadOnlyError, before the lock is taken); a
    lock held by another process for longer than timeout seconds (CARD_LOCK_TIMEOUT_S, read at each call,
    when None): pneumo.core.files.LockTimeout, "…/card.json is being updated by another process; tried for
    N s"; a card that is unreadable or unusable (CardError); an exception raised by change; and a changed
    card that would no longer read back (CardError). A missing card is the default one (threshold 0.5) with
    create=True, a CardError without.
    """
    path = Path(path)
    check_writable(path)
    if not path.parent.is_dir():  # the lock's sidecar lives beside the card
        if not create:
            raise CardError(f"{path}: no card to record in")
        path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path, CARD_LOCK_TIMEOUT_S if timeout is None else timeout):
        card = _read_for_update(path, create)
        change(card)
        text = json_text(card.to_dict())
        ModelCard.from_dict(json.loads(text), str(path))  # what is written must read back, or nothing is written
        atomic_write_text(path, text)
    return card


def _read_for_update(path: Path, create: bool) -> ModelCard:
    """The card at path, read within bounds (as pneumo.model.loading.read_card), or the default when missing."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if create:
            return ModelCard.default(path.parent.name)
        raise CardError(f"{path}: no card to record in") from None
    except OSError as exc:
        raise CardError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size > CARD_MAX_BYTES:
        raise CardError(
            f"{path}: {size / 2**20:.0f} MB, larger than a model card can be ({CARD_MAX_BYTES // 2**20} MB)"
        )
    try:
        return ModelCard.read(path)
    except RecursionError:  # JSON nested beyond the parser's stack
        raise CardError(f"{path}: nested too deeply to be a model card") from None
