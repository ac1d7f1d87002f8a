"""``medref predict --engine onnx``: a model folder's ONNX export run with onnxruntime, without importing torch.

    medref export models/qata_10pct --format onnx --out models/qata_10pct/model.onnx   # + model.onnx.json
    medref predict models/qata_10pct --images x.png --text "..." --out pred/            # uses model.onnx

``medref predict`` (engine ``auto``, the default) runs this engine when the model folder holds ``model.onnx`` and its
sidecar ``model.onnx.json`` made from the folder's current model.pt (the sidecar's ``model_sha256``), and the
device is not ``cuda``; ``--engine onnx`` requires it, ``--engine torch`` never uses it. Start-up is what it is
for: onnxruntime, numpy and PIL load in a fraction of the time torch + timm + open_clip + MONAI take
(bench/bench_startup.py). The probabilities equal the torch path's within the export's tested parity (<= 1e-4),
so the masks equal too except for a pixel within 1e-4 of the threshold (tests/test_onnx_predict.py).

The CLIP tokenizer is the ``tokenizers`` library's BPE over open_clip's own vocabulary file (found without importing
open_clip), with open_clip's cleaning (ftfy, HTML unescape, whitespace, lower case) and its split pattern, so the
token ids are SimpleTokenizer's (a test compares them on the real report corpus). Towers with tokenizers of their
own (``local-dir:``, ``hf-dir:``/``hf:``) are not handled here: their models predict with the torch engine.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pipeline_src.errors import MedrefError
from pipeline_src.inference.sidecar import read_sidecar, sidecar_of
from pipeline_src.labels.text_parser import flip_text
from pipeline_src.models.folder import ModelFolder

ENGINES = ("auto", "torch", "onnx")
# open_clip.tokenizer.SimpleTokenizer's constants: the vocabulary file, how many merges it reads, its split pattern
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2
SPLIT = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def export_of(model_dir: Path) -> tuple[Path, dict] | None:
    """(model.onnx, its sidecar) when the folder holds both, else None."""
    onnx_file = ModelFolder(model_dir).export_file
    if not (onnx_file.is_file() and sidecar_of(onnx_file).is_file()):
        return None
    return onnx_file, read_sidecar(onnx_file)  # sealed: an edited sidecar or a replaced model.onnx is refused


def usable(model_dir: Path, meta: dict) -> str | None:
    """Why the export cannot stand in for the folder's model.pt (None when it can)."""

    if meta.get("format") != "onnx":
        return f"its sidecar says format {meta.get('format')!r}, not onnx"
    text = meta.get("text")
    if text and not str(text.get("tokenizer", "")).startswith("open_clip.tokenizer.SimpleTokenizer"):
        return f"its text tower has its own tokenizer ({text.get('tokenizer')}), which only the torch engine runs"
    folder = ModelFolder(model_dir)
    # the digest only (the predictor checks it against provenance.json, and loads torch): an export of this very
    # model.pt stands in for it, whatever happened to it since
    if folder.has_weights() and folder.weights_digest() != meta.get("model_sha256"):
        return "it was exported from another model.pt (sha256 differs): re-export it"
    return None


@functools.lru_cache(maxsize=2)
def clip_tokenizer(context_length: int):
    """open_clip's SimpleTokenizer as a ``tokenizers`` BPE: list[str] -> int64 [B, context_length]."""
    import gzip
    import importlib.util

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    spec = importlib.util.find_spec("open_clip")
    bpe = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE if spec else None
    if bpe is None or not bpe.is_file():
        raise MedrefError(f"the CLIP tokenizer's vocabulary ({BPE_FILE}, shipped with open_clip_torch) is missing")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1:N_MERGES + 1]
    merges = [tuple(m.split()) for m in lines]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<start_of_text>", "<end_of_text>"]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges, end_of_word_suffix="</w>",
                               fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    sot, eot = len(vocab) - 2, len(vocab) - 1

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), context_length), np.int64)
        for i, enc in enumerate(tok.encode_batch([_clean(t) for t in texts], add_special_tokens=False)):
            ids = [sot, *enc.ids, eot]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = eot
            out[i, :len(ids)] = ids
        return out

    return encode


def _clean(text: str) -> str:
    """open_clip's ``_clean_lower``: ftfy, HTML entities (twice), whitespace runs, lower case."""
    import html

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character table (open_clip.tokenizer.bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class OnnxPredictor:
    """``Predictor.predict``'s contract on numpy: images float32 [B,1,H,W] in [0,1] -> probabilities [B,C,H,W]."""

    def __init__(self, model_dir: Path, onnx_file: Path, meta: dict, threads: int | None = None, tokenize=None):
        """``tokenize``: list[str] -> int64 [B, L] numpy for a tower with its own tokenizer (exported.py passes it);
        default: the CLIP BPE above."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a damaged file
            raise MedrefError(f"{onnx_file}: onnxruntime cannot load it ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]}); re-export it") from e
        self.meta = meta
        self.uses_text = bool(meta.get("text"))
        self.method = meta.get("method")
        self.sha256 = meta.get("model_sha256")
        self.names = [i.name for i in self.session.get_inputs()]
        self.tokenize = None if not self.uses_text else tokenize or clip_tokenizer(int(meta["text"]["context_length"]))

    def _probs(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        feeds = {"images": np.ascontiguousarray(images, np.float32)}
        if self.uses_text:
            feeds["tokens"] = self.tokenize(list(texts))
        return self.session.run(["probs"], {n: feeds[n] for n in self.names})[0]

    def predict(self, images: np.ndarray, texts: list[str], tta: str | None = None) -> np.ndarray:
        if len(texts) != len(images):
            raise MedrefError(f"predict: {len(images)} images but {len(texts)} texts")
        probs = self._probs(images, texts)
        if tta == "flip":
            flipped = [flip_text(t) for t in texts] if self.uses_text else list(texts)
            probs = (probs + self._probs(images[..., ::-1], flipped)[..., ::-1]) / 2
        elif tta is not None:
            raise MedrefError(f"predict: unknown test-time augmentation {tta!r}; known: flip")
        return probs
