"""``t2t predict``: the top classes of images, from any artifact or checkpoint, through its Predictor.

What the command needs to know about an artifact (its format, the model behind it, the input size,
the class names, the preprocessing) comes from the most authoritative place available:

1. the export folder's ``manifest.json`` entry whose ``file`` is the artifact (an export folder
   itself: its ``--format``, else the first built-ok of :data:`DEFAULT_FORMATS`);
2. what the file records about itself (eager ``.pt``: the model's name and arguments; TorchScript
   and ``.ptl``: ``extra/t2t.json``; ONNX: the input shape and its quantization nodes; TensorRT and
   ExecuTorch: the input shape the loaded program declares);
3. a training checkpoint's ``args`` (model, ``img_size``, the trainer's ``--crop-pct`` and
   ``--interpolation``) and ``classes``.

Images are preprocessed by :func:`t2tvit.data.eval_transform_for`, the same function the trainer's
validation set, calibration and parity checks use. Only argparse is imported at module level.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_FORMATS", "Artifact", "add_parser", "predict_files", "read_class_names", "resolve_artifact"]

DEFAULT_MODEL = "t2t_vit_7"  # whose preprocessing a file that names no model gets (every variant has the same)
# An export folder without --format: the first of these the manifest lists as built ok (the fp32
# reference first, then the runtimes a CPU always has), else its first ok artifact.
DEFAULT_FORMATS = ("torch", "onnx", "torchscript", "ptl", "executorch", "tensorrt")
CHECKPOINT_SUFFIXES = (".pth", ".tar", ".safetensors", ".bin", ".ckpt")

_EXAMPLES = """\
examples:
  t2t predict artifacts/t2t_vit_7 cat.jpg dog.png          # the export folder's torch (else onnx) artifact
  t2t predict artifacts/t2t_vit_7 --format ptl-int8 photos/  # every image under photos/
  t2t predict artifacts/t2t_vit_7/model-onnx.onnx a.jpg --json
  t2t predict runs/train/t2t_vit_7-20250101-120000/best.pth a.jpg --classes data/imagenet
  t2t predict best.pth a.jpg --img-size 384                 # a checkpoint at another input size
  t2t predict model-tensorrt-fp16.engine a.jpg --classes labels.txt   # runs on the GPU

Class names come from --classes, else from the manifest (`t2t export --checkpoint` records the
checkpoint's), else from the checkpoint; without any, class indices are printed. An image that
cannot be read is reported on stderr, the others are still predicted, and the exit status is 1.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-5 classes of images from any exported artifact or checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Predict the top classes of images with any artifact `t2t export` wrote (.pt, TorchScript,\n"
            ".ptl, .onnx, the int8 variants, .pte, .engine), a whole export folder, or a training\n"
            "checkpoint (.pth). The images get exactly the model's eval preprocessing (resize, centre crop\n"
            "with its crop_pct, normalise with its mean/std) at the artifact's input size, as in training,\n"
            "and run in batches through the artifact's own runtime. Probabilities are the softmax of the\n"
            "logits."
        ),
        epilog=_EXAMPLES,
    )
    p.add_argument(
        "artifact",
        metavar="ARTIFACT",
        help="an artifact file, an export folder (holding manifest.json) or a training checkpoint",
    )
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders (every image under them)")
    p.add_argument(
        "--format",
        default=None,
        metavar="NAME",
        help="which artifact of an export folder to run (default: the first built ok of "
        f"{', '.join(DEFAULT_FORMATS)}); for a lone file, its format when the file name does not tell",
    )
    p.add_argument(
        "--classes",
        default=None,
        metavar="SOURCE",
        help="class names: a text file (one name per line, in class-index order), a dataset folder (its "
        "train/ sub-folder names, or its own, sorted as the trainer sorts them) or 'digits' (the bundled "
        "dataset); default: the names the manifest or checkpoint records, else indices",
    )
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default: 5)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="where to run (default: cpu, or cuda for formats that need a GPU, e.g. TensorRT)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="variant name, only for a checkpoint that does not record it (e.g. an official .pth.tar)",
    )
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="input size, for a checkpoint (default: the one it was trained at) or a file that records "
        "none; an exported artifact has a fixed input size",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON (predictions and unreadable images)")
    out.add_argument("--plain", action="store_true", help="one plain line per image instead of a table")
    p.set_defaults(func=_cmd_predict)


@dataclass
class Artifact:
    """What :func:`resolve_artifact` found out about the thing to run."""

    path: Path
    fmt: Any  # deploy.base.Format, or None for a training checkpoint (run by PyTorch eager)
    source: str  # where the facts below come from: "manifest", "file" or "checkpoint"
    model: str | None = None  # registered model name (its preprocessing)
    img_size: tuple[int, int] | None = None  # (H, W)
    classes: list[str] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)  # overrides of the model's cfg
    batch: tuple[int, int, int] | None = None  # min, opt, max batch the artifact was built for
    status: str | None = None  # the manifest's status of the artifact
    reason: str | None = None  # and why, when it is not ok


def resolve_artifact(
    path: str | Path, format_name: str | None = None, *, model: str | None = None, img_size: int | None = None
) -> Artifact:
    """Find out what ``path`` is (see the module docstring); raises ConfigError in one sentence."""
    from deploy.base import get_format
    from t2tvit.errors import ConfigError

    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"artifact {path} does not exist; pass an exported file, an export folder or a training checkpoint"
        )
    art = _resolve(path, get_format(format_name) if format_name else None, model)
    if img_size is not None:
        if art.fmt is not None and art.img_size not in (None, (img_size, img_size)):
            raise ConfigError(
                f"{path} takes {art.img_size[0]}x{art.img_size[1]} images, not {img_size}; drop --img-size"
            )
        art.img_size = (img_size, img_size)
    return art


def _resolve(path: Path, want: Any, model: str | None) -> Artifact:
    from deploy.export import MANIFEST, read_manifest
    from t2tvit.errors import ConfigError

    if path.is_dir():
        manifest = read_manifest(path)
        return _from_manifest(path, manifest, _pick_entry(path, manifest, want))
    if (path.parent / MANIFEST).is_file():
        manifest = read_manifest(path.parent)
        entry = next((a for a in manifest.get("artifacts", []) if a.get("file") == path.name), None)
        if entry is not None:
            if want is not None and want.name != entry.get("format"):
                raise ConfigError(
                    f"{path} is the {entry.get('format')} artifact of its manifest, not {want.name}; drop --format"
                )
            return _from_manifest(path.parent, manifest, entry)
    return _from_file(path, want, model)


def _pick_entry(folder: Path, manifest: dict[str, Any], want: Any) -> dict[str, Any]:
    from t2tvit.errors import ConfigError

    arts = manifest.get("artifacts", [])
    ok = [a for a in arts if a.get("status") == "ok" and a.get("file")]
    if want is not None:
        entry = next((a for a in arts if a.get("format") == want.name), None)
        if entry is None or not entry.get("file"):
            state = "not in" if entry is None else f"{entry.get('status')} ({entry.get('reason')}) in"
            choose = f"; choose one of: {', '.join(a['format'] for a in ok)}" if ok else ""
            raise ConfigError(f"{want.name} is {state} {folder}/manifest.json{choose}")
        return entry
    if not ok:
        raise ConfigError(f"{folder}/manifest.json lists no artifact that was built ok; run `t2t export` again")
    by_name = {a["format"]: a for a in ok}
    return next((by_name[n] for n in DEFAULT_FORMATS if n in by_name), ok[0])


def _from_manifest(folder: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> Artifact:
    from deploy.base import get_format
    from deploy.export import manifest_preprocessing

    m = manifest.get("model") or {}
    shape = entry.get("input_shape") or (manifest.get("input") or {}).get("shape") or []
    size = tuple(int(s) for s in shape[2:4]) if len(shape) == 4 else tuple(m.get("img_size") or ()) or None
    classes = manifest.get("classes")
    return Artifact(
        path=folder / entry["file"],
        fmt=get_format(entry["format"]),
        source="manifest",
        model=m.get("model"),
        img_size=size,
        classes=[str(c) for c in classes] if isinstance(classes, list) else None,
        preprocessing=manifest_preprocessing(manifest),
        batch=tuple(entry["batch"]) if len(entry.get("batch") or ()) == 3 else None,
        status=entry.get("status"),
        reason=entry.get("reason"),
    )


def _from_file(path: Path, want: Any, model: str | None) -> Artifact:
    """An artifact with no manifest entry: what its name, suffix and contents say."""
    from deploy.base import FORMATS
    from t2tvit.errors import ConfigError

    suffix = path.suffix.lower()
    if want is None and (suffix in CHECKPOINT_SUFFIXES or path.name.lower().endswith(".pth.tar")):
        return _from_checkpoint(path, None, model)
    fmt = want or next((f for f in FORMATS.values() if f.filename == path.name), None)
    if fmt is None or fmt.module in ("deploy.torch_eager", "deploy.torchscript", "deploy.ptl", "deploy.onnx"):
        if suffix in (".pt", ".ptl") or (fmt is not None and fmt.suffix in (".pt", ".ptl")):
            return _from_torch_file(path, fmt, model)
        if suffix == ".onnx" or (fmt is not None and fmt.module == "deploy.onnx"):
            name, size = _onnx_info(path)
            return Artifact(path, fmt or FORMATS[name], "file", model, size)
    rows = [f for f in FORMATS.values() if f.suffix == suffix]
    if fmt is None and rows:  # a TensorRT engine's sidecar names its precision; else the suffix's fp32 row
        precision = _sidecar_precision(path)
        fmt = next((f for f in rows if f.precision == precision), rows[0])
    if fmt is None:
        suffixes = sorted({f.suffix for f in FORMATS.values()} | set(CHECKPOINT_SUFFIXES))
        raise ConfigError(
            f"cannot tell what {path.name} is from its suffix; pass a file ending in {', '.join(suffixes)}, "
            "an export folder, or --format NAME"
        )
    return Artifact(path, fmt, "file", model)  # input size: read from the loaded program


def _sidecar_precision(path: Path) -> str | None:
    import json

    from deploy.tensorrt import sidecar_path

    try:
        return json.loads(sidecar_path(path).read_text()).get("precision")
    except (OSError, ValueError, AttributeError):
        return None


def _from_torch_file(path: Path, fmt: Any, model: str | None) -> Artifact:
    """A ``.pt`` / ``.ptl``: TorchScript archive (its extra/t2t.json), eager artifact, or a checkpoint."""
    import zipfile

    from deploy.base import FORMATS, get_format
    from deploy.torchscript import read_extra
    from t2tvit.errors import ConfigError

    names = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    if path.suffix.lower() == ".ptl" or any("/code/" in n or n.endswith("bytecode.pkl") for n in names):
        extra = read_extra(path)
        if fmt is None:
            base = "ptl" if path.suffix.lower() == ".ptl" else "torchscript"
            recorded = extra.get("format")
            fmt = FORMATS.get(recorded) or FORMATS[f"{base}-int8" if extra.get("qengine") else base]
        spec = extra.get("args") or {}
        return Artifact(path, fmt, "file", spec.get("model") or model, _size(spec.get("img_size")))
    from deploy.torch_eager import _KIND
    from t2tvit.checkpoint import read_checkpoint

    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("kind") == _KIND:
        eager = get_format("torch-int8" if "int8_state_dict" in obj else "torch")
        if fmt is not None and fmt.module != "deploy.torch_eager":
            raise ConfigError(f"{path} is a {eager.name} artifact, not {fmt.name}; drop --format")
        spec = obj.get("args") or {}
        return Artifact(path, eager, "file", spec.get("model") or model, _size(spec.get("img_size")))
    if fmt is not None and fmt.name != "torch":
        raise ConfigError(f"{path} is not a {fmt.name} artifact (it holds no TorchScript program); drop --format")
    return _from_checkpoint(path, obj, model)


def _from_checkpoint(path: Path, obj: Any, model: str | None) -> Artifact:
    from t2tvit.checkpoint import read_checkpoint, read_state_dict
    from t2tvit.errors import ConfigError
    from t2tvit.models import guess_variant

    obj = read_checkpoint(path) if obj is None else obj
    args = obj.get("args") if isinstance(obj, dict) else None
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    name = model or (args.get("model") if isinstance(args.get("model"), str) else None)
    if name is None:
        name = guess_variant(read_state_dict(obj)[0])
    if name is None:
        raise ConfigError(f"cannot tell which T2T-ViT variant {path} holds; pass --model NAME")
    classes = obj.get("classes") if isinstance(obj, dict) else None
    return Artifact(
        path,
        None,
        "checkpoint",
        name,
        _size(args.get("img_size")),
        [str(c) for c in classes] if isinstance(classes, list) and classes else None,
        # the trainer's --crop-pct / --interpolation (falsy: the model's own, as the trainer reads them)
        {k: args[k] for k in ("crop_pct", "interpolation") if args.get(k)},
    )


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _onnx_info(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The ONNX format row (from its quantization nodes) and input (H, W) of a file with no manifest."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a bad file: the ONNX loader says why when it is loaded
        return "onnx", None
    ops = {n.op_type for n in graph.node}
    name = "onnx-int8-static" if "QuantizeLinear" in ops else "onnx"
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}:
        name = "onnx-int8-dynamic"
    inits = {i.name for i in graph.initializer}
    inp = next((i for i in graph.input if i.name not in inits), None)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim] if inp is not None else []
    return name, (dims[2], dims[3]) if len(dims) == 4 and dims[2] > 0 and dims[3] > 0 else None


def read_class_names(spec: str) -> list[str]:
    """Class names from a text file (one per line), a dataset folder, or ``digits``."""
    from t2tvit.data import bundled_dataset_path
    from t2tvit.errors import ConfigError

    path = Path(spec)
    if not path.exists() and spec == "digits":
        path = bundled_dataset_path()
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read class names from {path} ({e}); pass a UTF-8 text file") from None
        while names and not names[-1]:
            names.pop()
        if not names:
            raise ConfigError(f"class-name file {path} is empty; write one class name per line")
        return names
    if path.is_dir():
        # the trainer's classes: the train split's sub-folders (SafeImageFolder sorts them so)
        root = next((path / s for s in ("train", "training") if (path / s).is_dir()), path)
        names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise ConfigError(f"{root} has no class sub-folders; pass a dataset folder laid out as train/<class>/")
        return names
    raise ConfigError(
        f"--classes {spec} is neither a file, a folder nor 'digits'; pass a text file with one name per line"
    )


def _read_image(path: Path) -> tuple[Any, str | None]:
    """The RGB image, or None and why (the toolkit's one tolerant reader, its warning turned into the reason)."""
    import warnings

    from t2tvit.data import open_rgb

    if not path.is_file():
        return None, "no such file"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = open_rgb(path)
    if img is not None:
        return img, None
    msg = next((str(w.message) for w in caught if "unreadable image" in str(w.message)), "")
    return None, msg.split(f"{path}: ", 1)[-1] or "cannot be decoded"


def predict_files(
    predictor: Any,
    transform: Any,
    files: list[Path],
    *,
    topk: int = 5,
    batch_size: int = 32,
    min_batch: int = 1,
    on_error: Any = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Top-``topk`` (index, probability) of each readable file, in batches; and the unreadable ones.

    Each result is ``{"image", "top": [(index, probability), ...], "num_classes"}``.
    A batch smaller than ``min_batch`` (an artifact built for a fixed batch) is padded with zeros
    whose outputs are dropped. ``on_error(record)`` is called as each unreadable file is met.
    """
    import numpy as np

    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for start in range(0, len(files), batch_size):
        arrays, good = [], []
        for f in files[start : start + batch_size]:
            img, why = _read_image(f)
            if img is None:
                errors.append({"image": str(f), "error": why or "cannot be decoded"})
                if on_error is not None:
                    on_error(errors[-1])
                continue
            arrays.append(np.asarray(transform(img), dtype=np.float32))
            good.append(f)
        if not arrays:
            continue
        x = np.stack(arrays)
        if len(x) < min_batch:
            x = np.concatenate([x, np.zeros((min_batch - len(x), *x.shape[1:]), np.float32)])
        logits = np.asarray(predictor(x), dtype=np.float64)[: len(good)]
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        k = min(topk, probs.shape[1])
        for f, p in zip(good, probs, strict=True):
            top = np.argsort(-p, kind="stable")[:k]
            results.append({"image": str(f), "top": [(int(i), float(p[i])) for i in top], "num_classes": len(p)})
    return results, errors


def _expand(images: list[str]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files in the order given (a folder: every image under it, sorted); missing paths as errors."""
    from t2tvit.data import list_images

    files: list[Path] = []
    errors: list[dict[str, str]] = []
    for raw in images:
        p = Path(raw)
        if p.is_dir():
            found = list_images(p)
            if not found:
                errors.append({"image": raw, "error": "folder holds no images"})
            files += found
        else:
            files.append(p)  # a missing file is reported where it is read, in order
    return files, errors


def _cmd_predict(args: argparse.Namespace) -> int:
    import sys

    from t2tvit.errors import ConfigError, T2TError

    if args.topk < 1 or args.batch_size < 1:
        raise ConfigError("--topk and --batch-size must be at least 1")
    art = resolve_artifact(args.artifact, args.format, model=args.model, img_size=args.img_size)
    names = read_class_names(args.classes) if args.classes else art.classes
    names_from = args.classes if args.classes else (f"the {art.source}" if art.classes else None)
    if art.status not in (None, "ok"):
        print(f"t2t predict: warning: the manifest marks {art.path.name} {art.status}: {art.reason}", file=sys.stderr)

    from t2tvit.data import eval_transform_for

    device = args.device or ("cpu" if art.fmt is None or art.fmt.cpu else "cuda")
    files, errors = _expand(args.images)

    def report(err: dict[str, str]) -> None:
        print(f"t2t predict: cannot read {err['image']}: {err['error']}", file=sys.stderr)

    for err in errors:
        report(err)
    with _quiet_runtimes():
        try:
            predictor, cfg = _load(art, device)
        except T2TError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one sentence, not a traceback
            what = art.fmt.name if art.fmt is not None else "a checkpoint"
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"{art.path} could not be loaded as {what} ({type(e).__name__}: {first})") from None
        declared = _declared_size(predictor)
        if declared is not None and art.img_size not in (None, declared):
            raise ConfigError(f"{art.path.name} takes {declared[0]}x{declared[1]} images; drop --img-size")
        art.img_size = art.img_size or declared
        if art.img_size is None:
            raise ConfigError(f"cannot tell the input size of {art.path.name} (no manifest beside it); pass --img-size")
        transform = eval_transform_for(cfg, art.img_size, **art.preprocessing)
        batch = min(args.batch_size, art.batch[2]) if art.batch else args.batch_size
        min_batch = max(art.batch[0] if art.batch else 1, int(getattr(predictor, "min_batch", 1)))
        results, bad = predict_files(
            predictor,
            transform,
            files,
            topk=args.topk,
            batch_size=max(batch, min_batch),
            min_batch=min_batch,
            on_error=report,
        )
    errors += bad
    if results and args.classes and len(names) > results[0]["num_classes"]:
        outputs = results[0]["num_classes"]
        raise ConfigError(
            f"{args.classes} names {len(names)} classes but {art.path.name} predicts {outputs}; "
            "pass the class names of the dataset it was trained on"
        )

    def label(i: int) -> str | None:
        return names[i] if names is not None and i < len(names) and names[i] else None

    info = {
        "artifact": str(art.path),
        "format": predictor.format if art.fmt is not None else "checkpoint",
        "precision": predictor.precision,
        "device": predictor.device,
        "model": art.model,
        "input_size": list(art.img_size),
        "classes_from": names_from,
    }
    try:
        _print_results(args, info, results, errors, label)
    except BrokenPipeError:  # `t2t predict ... --plain | head`: stop quietly, as other tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if errors else 0


def _print_results(args: argparse.Namespace, info: dict[str, Any], results: list, errors: list, label: Any) -> None:
    import json

    if args.json:
        preds = [
            {"image": r["image"], "top": [{"index": i, "class": label(i), "probability": p} for i, p in r["top"]]}
            for r in results
        ]
        print(json.dumps(info | {"predictions": preds, "errors": errors}, indent=2))
    elif args.plain:
        for r in results:
            tops = "  ".join(f"{label(i) or i} {p:.4f}" for i, p in r["top"])
            print(f"{r['image']}  {tops}")
    else:
        _print_table(info, results, label)


def _quiet_runtimes() -> Any:
    """Hide the runtimes' own deprecation notices (TorchScript, the lite interpreter, quantized
    tensors): they concern PyTorch's roadmap, not the user's images."""
    import contextlib
    import warnings

    @contextlib.contextmanager
    def quiet() -> Any:
        with warnings.catch_warnings():
            for category in (UserWarning, FutureWarning, DeprecationWarning):
                warnings.simplefilter("ignore", category)
            yield

    return quiet()


def _declared_size(predictor: Any) -> tuple[int, int] | None:
    """The (H, W) a loaded program declares (TensorRT's profile, ExecuTorch's planned input), if any."""
    chw = getattr(predictor, "input_chw", None) or tuple(getattr(predictor, "max_shape", None) or ())[1:]
    return (int(chw[1]), int(chw[2])) if len(chw) == 3 else None


def _load(art: Artifact, device: str) -> tuple[Any, Any]:
    """The Predictor, and the cfg whose preprocessing its images get (a model name or a model)."""
    if art.fmt is not None:
        return art.fmt.impl().load(art.path, art.fmt, device=device), art.model or DEFAULT_MODEL
    import t2tvit
    from deploy.base import FORMATS
    from deploy.torch_eager import TorchPredictor

    model = t2tvit.create_model(art.model, checkpoint=art.path, img_size=art.img_size).eval()
    art.img_size = tuple(int(s) for s in model.img_size)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise t2tvit.ConfigError("--device cuda but no CUDA GPU is visible on this machine")
    return TorchPredictor(model.to(device), FORMATS["torch"], art.path, device), model


def _print_table(info: dict[str, Any], results: list[dict[str, Any]], label: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    if not results:
        console.print("no image could be read")
        return
    h, w = info["input_size"]
    title = f"{Path(info['artifact']).name}: {info['format']} ({info['precision']}, {info['device']}), {h}x{w}"
    if info["model"]:
        title += f", {info['model']}"
    named = info["classes_from"] is not None
    table = Table(title=escape(title), caption=f"classes from {escape(info['classes_from'])}" if named else None)
    table.add_column("image")
    table.add_column("#", justify="right")
    table.add_column("class" if named else "class index")
    if named:
        table.add_column("index", justify="right")
    table.add_column("probability", justify="right")
    for r in results:
        for rank, (i, p) in enumerate(r["top"], 1):
            cells = [escape(r["image"]) if rank == 1 else "", str(rank)]
            cells += [escape(label(i) or "-"), str(i)] if named else [str(i)]
            table.add_row(*cells, f"{p:.4f}", end_section=rank == len(r["top"]))
    console.print(table)
