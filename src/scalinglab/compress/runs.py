"""What the compression analyses need to know about a training run, read from its directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scalinglab.config import config_hash
from scalinglab.corpus.prepare import CorpusConfig, PreparedCorpus, prepare_corpus
from scalinglab.errors import UserError


@dataclass(frozen=True)
class RunInfo:
    """A run directory's identity and the settings that fix its data stream."""

    run_id: str
    out_dir: Path
    config: dict  # the resolved config (config.json)

    @property
    def train(self) -> dict:
        return self.config["train"]

    @property
    def batch_tokens(self) -> int:
        return int(self.train["batch_size"]) * int(self.train["seq_len"])

    @property
    def first_logged_step(self) -> int:
        """The step the loss log starts at (a branch logs from its trunk step on)."""
        return int(self.config.get("init_from_step") or 0)

    def corpus(self, cache_dir: Path | None = None) -> PreparedCorpus:
        """The run's prepared corpus (found in the cache, or prepared again from its source).

        Refuses a corpus other than the one the run trained on: the run records the prepared
        corpus's key (content hash, tokenizer, split), and a source that changed since training,
        or a run trained on a derived corpus (a probe's subset or junk copy), gives another key.
        """
        prepared = prepare_corpus(CorpusConfig(**self.config["corpus"]), cache_dir)
        recorded = self.config.get("corpus_key")
        if recorded and prepared.key != recorded:
            source = self.config["corpus"].get("source")
            raise UserError(
                f"run {self.run_id} trained on corpus {recorded}, but its corpus config (source {source!r}) now "
                f"prepares corpus {prepared.key}: the source changed since training, or the run trained on a "
                "derived corpus that cannot be rebuilt here; restore the original source or analyse another run"
            )
        return prepared


def run_info(out_dir: str | Path) -> RunInfo:
    """Read a run directory's resolved config; its id is recomputed the way the trainer names runs."""
    out_dir = Path(out_dir)
    path = out_dir / "config.json"
    if not path.exists():
        raise UserError(f"{out_dir} is not a scalinglab run directory (no config.json); give a run's --out folder")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}); the run directory may be damaged") from None
    kind = str(config.get("kind", "train"))
    return RunInfo(run_id=f"{kind.replace(':', '-')}-{config_hash(config)}", out_dir=out_dir, config=config)
