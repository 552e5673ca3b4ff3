"""A trained model as an exact lossless compressor, and compression as a measure of learning.

- `archive`: `compress_file` / `decompress_file` (and the `_bytes` forms), the archive format;
- `lm`: coding a token sequence with a model, identically in both directions;
- `coder`: integer CDFs and the range coder;
- `baselines`: gzip, bzip2, xz, zstd, brotli, whole and chunked;
- `bench`: the model against them, file by file (`compress_bench`);
- `vsdata`: the test split's code length at every D of a study (`compression_vs_data`);
- `prequential`: the online code length of a training run (`prequential_code_length`);
- their plots are in `scalinglab.report.compress`.

This module imports nothing heavy, so the CLI can read the defaults below cheaply.
"""

DEFAULT_BATCH = 256  # chunks per forward batch: big batches amortise per-step overhead (docs/compress.md)
