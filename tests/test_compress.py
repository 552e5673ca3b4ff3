"""LM compression: integer CDFs, exact round trips, determinism, overhead, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from scalinglab.compress import coder, lm
from scalinglab.compress.archive import (
    compress_bytes,
    compress_file,
    decompress_bytes,
    decompress_file,
    load_compressor,
)
from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from scalinglab.corpus import CorpusConfig, prepare_corpus
from scalinglab.errors import UserError
from scalinglab.model import GPT, ModelConfig
from scalinglab.store import open_store
from scalinglab.train import plan_run, train_run
from scalinglab.train.checkpoint import save_checkpoint

CONTEXT = 64  # the tiny models' training sequence length, so the default chunk size


def save_random_model(path: Path, seed: int, vocab_size: int = 256, tokenizer: dict | None = None) -> Path:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=2, vocab_size=vocab_size))
    save_checkpoint(path, model=model, optimizer=torch.optim.AdamW(model.parameters()), step=0,
                    config={"model": model.cfg.to_dict(), "train": {"seq_len": CONTEXT}},
                    tokenizer=tokenizer or {"spec": {"kind": "byte", "vocab_size": 256}, "json": None})
    return path


@pytest.fixture(scope="module")
def trained(text_corpus, tmp_path_factory) -> Path:
    """A briefly trained byte model (fixed seed): peaked distributions, as real use has."""
    root = tmp_path_factory.mktemp("compress-model")
    cfg = RunConfig(corpus=CorpusConfig(source=str(text_corpus)),
                    model=ModelSpec(size=None, n_layer=1, d_model=32, n_head=2),
                    optim=OptimConfig(lr=3e-3),
                    train=TrainConfig(tokens=30_000, batch_size=4, seq_len=CONTEXT, eval_points=2, eval_tokens=1024))
    corpus = prepare_corpus(cfg.corpus)
    train_run(plan_run(cfg, corpus), corpus, open_store(root / "s.db"), root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def comp(trained):
    return load_compressor(trained)


@pytest.fixture(scope="module")
def text(text_corpus) -> bytes:
    return Path(text_corpus).read_bytes()[:6000]


# --- integer CDFs and the coder --------------------------------------------------------------------

def test_quantised_frequencies_are_integers_summing_to_2_24_with_every_symbol_at_least_one():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(50, 256)) * 8)
    logits[0] = -1e4
    logits[0, 3] = 0.0  # all mass on one symbol
    probs = torch.softmax(logits, dim=-1)
    probs[1] = 0.0
    probs[1, 7] = 1.0  # exact zeros elsewhere
    spare = coder.quantize(probs)
    freq = spare + 1
    assert torch.equal(freq, freq.round())
    assert (freq >= 1).all()
    assert (freq.sum(dim=1) == coder.TOTAL).all()
    # quantisation tracks the distribution: each frequency within one count of p x (2^24 - V),
    # except the most likely symbol, which takes the rounding remainder (< V counts)
    scaled = probs * (coder.TOTAL - 256)
    off = (spare - scaled).abs()
    off[torch.arange(50), spare.argmax(dim=1)] = 0
    assert off.max() <= 1.0


def test_the_range_coder_codes_exactly_the_quantised_frequencies():
    rng = np.random.default_rng(1)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(4000, 256)) * 3), dim=-1)
    symbols = torch.from_numpy(np.array([rng.choice(256, p=p) for p in probs.numpy()]))
    spare = coder.quantize(probs)
    enc = coder.Encoder()
    enc.encode(symbols.numpy(), spare.numpy())
    words = enc.finish()
    model_bits = coder.code_lengths(spare.numpy(), symbols.numpy()).sum()
    # a range coder's total overhead is a few words at the end, whatever the length
    assert model_bits <= 32 * len(words) <= model_bits + 64
    decoded = coder.Decoder(words).decode(spare.numpy())
    assert np.array_equal(decoded, symbols.numpy())
    # and the quantised code is within 0.01% of the float model's ideal length here
    assert model_bits == pytest.approx(coder.ideal_bits(torch.log(probs), symbols), rel=1e-4)


# --- exact round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["empty", "one byte", "random bytes", "text", "one chunk exactly",
                                  "chunk boundary + 1", "batch boundary", "text and noise"])
def test_round_trips_are_exact(comp, text, case):
    rng = np.random.default_rng(2)
    data = {
        "empty": b"",
        "one byte": b"\x00",
        "random bytes": rng.integers(0, 256, 1500, dtype=np.uint8).tobytes(),
        "text": text[:2500],
        "one chunk exactly": text[:CONTEXT],
        "chunk boundary + 1": text[: 3 * CONTEXT + 1],
        "batch boundary": text[: 2 * 3 * CONTEXT],  # two full batches of 3 chunks
        "text and noise": text[:300] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes() + text[300:600],
    }[case]
    packed, enc = compress_bytes(comp, data, batch_size=3)
    restored, dec = decompress_bytes(comp, packed)
    assert restored == data
    assert enc.header.original_bytes == len(data) and enc.header.n_tokens == len(data)
    assert enc.header.content_sha256 == hashlib.sha256(data).digest()
    assert dec.stats.ideal_bits == enc.stats.ideal_bits  # the decoder saw the same probabilities
    assert dec.stats.raw_chunks == enc.stats.raw_chunks


def test_data_the_model_cannot_predict_is_stored_not_expanded(comp, text):
    """Noise costs the model ~9+ bits/byte; those chunks go raw at 8 bits/byte (+ a 6-bit flag)."""
    noise = np.random.default_rng(4).integers(0, 256, 4 * CONTEXT, dtype=np.uint8).tobytes()
    data = text[: 4 * CONTEXT] + noise
    packed, result = compress_bytes(comp, data, batch_size=8)
    assert result.stats.quantized_bits > 8 * len(noise) + 4 * CONTEXT  # the model alone would expand it
    assert result.stats.raw_chunks == 4  # exactly the noise chunks
    text_bits = compress_bytes(comp, text[: 4 * CONTEXT], batch_size=8)[1].stats.coded_bits
    assert result.stats.coded_bits == pytest.approx(text_bits + 8 * len(noise) + 4 * 6, abs=0.5)
    assert decompress_bytes(comp, packed)[0] == data


def test_encoder_and_decoder_compute_bit_identical_probabilities(comp, text, monkeypatch):
    """Every distribution the decoder uses is, bit for bit, the one the encoder used."""
    seen: dict[str, list[bytes]] = {"encode": [], "decode": []}
    encode, decode = coder.Encoder.encode, coder.Decoder.decode

    def spy_encode(self, symbols, spare):
        seen["encode"].append(np.asarray(spare, dtype=np.float64).tobytes())
        return encode(self, symbols, spare)

    def spy_decode(self, spare):
        seen["decode"].append(np.asarray(spare, dtype=np.float64).tobytes())
        return decode(self, spare)

    monkeypatch.setattr(coder.Encoder, "encode", spy_encode)
    monkeypatch.setattr(coder.Decoder, "decode", spy_decode)
    data = text[: 5 * CONTEXT + 17]
    packed, _ = compress_bytes(comp, data, batch_size=2)
    assert decompress_bytes(comp, packed)[0] == data
    assert len(seen["encode"]) == len(seen["decode"]) == 3 * (1 + CONTEXT)  # 3 batches x (flags + 64 positions)
    assert seen["encode"] == seen["decode"]


def test_coded_length_matches_the_plain_forward_and_the_overhead_is_bounded(comp, text):
    """On a fixed, briefly trained model: the incremental path's ideal code length equals the full
    forward's, quantisation costs < 0.05%, and the coder adds a few words, not a fraction."""
    packed, result = compress_bytes(comp, text, batch_size=16)
    stats = result.stats
    forward_bits = lm.ideal_code_length(comp.model, comp.tokenize(text), CONTEXT, comp.prefix_token)
    assert stats.ideal_bits == pytest.approx(forward_bits, rel=1e-5)
    assert stats.ideal_bits / len(text) < 4.0  # it is a trained model: well under 8 bits/byte
    assert stats.quantized_bits == pytest.approx(stats.ideal_bits, rel=5e-4)
    chunks = math.ceil(len(text) / CONTEXT)
    flag_bits = chunks * -math.log2(1 - 2**-6)  # a clear "raw" flag per chunk
    assert stats.raw_chunks == 0 and stats.coded_bits == pytest.approx(stats.quantized_bits + flag_bits)
    payload_bits = 32 * result.header.payload_words
    assert stats.coded_bits <= payload_bits <= stats.coded_bits + 64
    header_bytes = len(packed) - 4 * result.header.payload_words
    assert header_bytes <= 128
    assert result.overhead == pytest.approx((payload_bits + 8 * header_bytes) / stats.ideal_bits - 1)


def test_a_bpe_model_round_trips_any_bytes_or_refuses(text_corpus, tmp_path, monkeypatch):
    corpus = prepare_corpus(CorpusConfig(source=str(text_corpus), tokenizer="bpe", vocab_size=300))
    tokenizer = {"spec": corpus.meta["tokenizer"], "json": corpus.tokenizer_json()}
    bpe = load_compressor(save_random_model(tmp_path / "bpe.pt", seed=3, vocab_size=corpus.vocab_size,
                                            tokenizer=tokenizer))
    assert bpe.tokenizer_name == "bpe-300"
    for data in (Path(text_corpus).read_bytes()[:1500], b"caf\xc3\xa9 \xff\xfe not utf-8 \x80", b""):
        packed, result = compress_bytes(bpe, data, batch_size=4)
        assert result.header.n_tokens <= len(data)
        assert decompress_bytes(bpe, packed)[0] == data
    # a tokenizer that cannot reproduce its input is refused, not silently lossy
    monkeypatch.setattr(type(bpe.tokenizer), "decode", lambda self, tokens: b"something else")
    with pytest.raises(UserError, match="does not reproduce the input"):
        compress_bytes(bpe, b"hello", batch_size=4)


# --- bad input ---------------------------------------------------------------------------------------

def test_the_wrong_model_is_refused(comp, text, tmp_path):
    packed, _ = compress_bytes(comp, text[:500], batch_size=4)
    other = load_compressor(save_random_model(tmp_path / "other.pt", seed=1))
    with pytest.raises(UserError, match="another model"):
        decompress_bytes(other, packed)


def test_corruption_is_detected(comp, text):
    packed, result = compress_bytes(comp, text[:2000], batch_size=4)
    header_size = len(packed) - 4 * result.header.payload_words

    def damaged(at: int) -> bytes:
        b = bytearray(packed)
        b[at] ^= 0x10
        return bytes(b)

    with pytest.raises(UserError, match="not a scalinglab archive"):
        decompress_bytes(comp, damaged(0))
    with pytest.raises(UserError, match="header is corrupted"):
        decompress_bytes(comp, damaged(30))
    with pytest.raises(UserError, match="truncated"):
        decompress_bytes(comp, packed[:-4])
    with pytest.raises(UserError, match="truncated"):
        decompress_bytes(comp, packed[:20])
    for at in (header_size, header_size + len(packed) // 3, len(packed) - 2):
        with pytest.raises(UserError, match="payload is corrupted"):
            decompress_bytes(comp, damaged(at))
    # damage that the payload CRC cannot see (its CRC re-stamped) is caught by the content hash
    payload = bytearray(packed[header_size:])
    payload[len(payload) // 2] ^= 0x01
    forged = dataclasses.replace(result.header, payload_crc32=zlib.crc32(bytes(payload))).pack() + bytes(payload)
    with pytest.raises(UserError, match="corrupted"):
        decompress_bytes(comp, forged)


def test_a_thread_count_the_header_cannot_hold_is_refused_before_coding(comp, monkeypatch):
    """The header keeps the thread count in one byte: 256 is refused up front, not after coding."""
    monkeypatch.setattr(lm.LMCoder, "encode", lambda *a, **k: pytest.fail("coded before validating"))
    for threads in (0, 256, 1000):
        with pytest.raises(UserError, match="between 1 and 255"):
            compress_bytes(comp, b"some text", threads=threads)


def test_files_appear_only_complete(trained, text, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(text[:1000])
    out = tmp_path / "out" / "a.slz"
    with pytest.raises(UserError, match="does not exist"):
        compress_file(trained, source, out)
    out.parent.mkdir()

    def interrupt(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_file(trained, source, out, progress=interrupt)
    assert list(out.parent.iterdir()) == []  # no output, no temporary file left behind
    compress_file(trained, source, out)
    with pytest.raises(UserError, match="already exists"):
        compress_file(trained, source, out)
    restored = tmp_path / "restored.txt"
    decompress_file(trained, out, restored)
    assert restored.read_bytes() == source.read_bytes()
    with pytest.raises(UserError, match="is the input"):
        compress_file(trained, source, source, force=True)


# --- the command line ----------------------------------------------------------------------------

def test_cli_round_trip_and_one_line_errors(run_cli, trained, tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(np.random.default_rng(5).integers(0, 256, 700, dtype=np.uint8).tobytes() + b"tail text\n" * 20)
    packed, restored = tmp_path / "data.slz", tmp_path / "data.out"
    code, out, err = run_cli("compress", trained, source, packed, "--quiet")
    assert code == 0, err
    assert "bits/byte" in out
    code, out, err = run_cli("decompress", trained, packed, restored, "--quiet")
    assert code == 0, err
    assert restored.read_bytes() == source.read_bytes()

    other = save_random_model(tmp_path / "other.pt", seed=9)
    broken = tmp_path / "broken.slz"
    broken.write_bytes(packed.read_bytes()[:-8])
    cases = [
        (("decompress", other, packed, tmp_path / "x1"), "another model"),
        (("decompress", trained, broken, tmp_path / "x2"), "truncated"),
        (("decompress", trained, tmp_path / "missing.slz", tmp_path / "x3"), "not found"),
        (("compress", trained, tmp_path / "missing.txt", tmp_path / "x4"), "not found"),
        (("compress", trained, source, tmp_path / "no" / "such" / "dir.slz"), "does not exist"),
        (("compress", trained, source, packed), "already exists"),
        (("compress", tmp_path / "nomodel", source, tmp_path / "x5"), "checkpoint"),
        (("compress", trained, source, tmp_path / "x6", "--chunk-size", "100000"), "context"),
        (("compress", trained, source, tmp_path / "x7", "--threads", "256"), "between 1 and 255"),
        (("compress", trained, source, tmp_path / "x8", "--threads", "0"), "between 1 and 255"),
        (("compress-bench", trained, source, "--threads", "300", "--db", tmp_path / "x9.db"), "between 1 and 255"),
    ]
    for args, message in cases:
        code, out, err = run_cli(*args)
        assert code == 2, (args, out, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    # the failed commands left nothing behind (other.pt's weights are its own safetensors file)
    assert leftovers == ["broken.slz", "data.bin", "data.out", "data.slz", "other.pt", "other.step0.safetensors"]


def test_an_archive_decodes_in_a_fresh_process(comp, trained, text, tmp_path):
    """Encoder and decoder in different processes compute the same probabilities."""
    import subprocess
    import sys

    packed = tmp_path / "a.slz"
    packed.write_bytes(compress_bytes(comp, text[:3000], batch_size=8)[0])
    restored = tmp_path / "a.out"
    proc = subprocess.run([sys.executable, "-m", "scalinglab", "decompress", str(trained), str(packed), str(restored),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert restored.read_bytes() == text[:3000]


def test_an_archive_on_a_full_disk_is_one_line_and_leaves_nothing(run_cli, trained, tmp_path, full_disk):
    source = tmp_path / "text.txt"
    source.write_text("def f(x):\n    return x + 1\n" * 40)
    full_disk.append("text.slz")
    code, _, err = run_cli("compress", trained, source, tmp_path / "text.slz", "--quiet")
    assert code == 2 and "no space left to write" in err and "Traceback" not in err
    assert not [p.name for p in tmp_path.iterdir() if "slz" in p.name]  # no partial archive
