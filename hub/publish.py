"""Publishing trained adapters: a model card with YAML front matter, pushed to a folder or a Hub repo.

Only what a server needs to load the adapter safely is published: `*.safetensors`,
`adapter_config.json`, the card (`README.md`) and the training-curve plot. Pickled weights,
optimizer state, logs and tokenizer files stay behind.

    card = AdapterCard(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", task="tweet", method="sft",
                       datasets=[DatasetRef("me/flywheel-feedback", revision="3f2a...", rows=120)])
    result = push_adapter("out/tweet-sft", repo="me/flywheel-tweet-sft", card=card)
    print(result.revision, result.url)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError, first_line
from hub.paths import flywheel_home
from hub.repos import is_local_ref, latest_revision
from tasks.base import redact

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
PLOT_FILE = "training_curves.png"
LEDGER_FILE = "ledger.jsonl"
"""One JSON line per training round of `trainers/loop.py` (see `hub.ledger`)."""
LEDGER_PLOT = "ledger.png"
"""The main metric of champion and challenger across rounds, shown in the card."""
PUBLISHED_PATTERNS = ("*.safetensors", "adapter_config.json", CARD_FILE, PLOT_FILE, LEDGER_FILE, LEDGER_PLOT)
"""Glob patterns of the files `push_adapter` publishes (top level of the adapter folder only)."""


@dataclass
class DatasetRef:
    """One data source an adapter was trained on, as recorded in its card."""

    ref: str
    """Hub dataset id, local folder/file, or a short label."""
    revision: str | None = None
    """Commit sha (Hub) or content hash (local) that was read; None if unknown."""
    rows: int = 0
    """Training rows taken from this source."""
    kind: str = "feedback"
    """`feedback` (collected in the demos) or `seed` (an existing data set)."""

    @property
    def is_hub(self) -> bool:
        return not is_local_ref(self.ref)


@dataclass
class AdapterCard:
    """What a model card says about an adapter; `render()` gives the README text."""

    base_model: str
    """Base model id (written as `base_model` in the front matter)."""
    task: str
    """Flywheel task slug."""
    method: str
    """Training method: sft, dpo, kto, reward, ppo, ..."""
    datasets: list[DatasetRef] = field(default_factory=list)
    """Training data sources with the revisions used."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """The trainer config (flags / recipe YAML values) that produced the adapter."""
    evaluation_table: str | None = None
    """Markdown table of the before/after evaluation (see `trainers.eval_report.compare_table`)."""
    metrics_before: dict[str, float] | None = None
    """Base model's evaluation metrics."""
    metrics_after: dict[str, float] | None = None
    """Adapter's evaluation metrics."""
    main_metric: str | None = None
    """The metric that decides whether the adapter beats the base model."""
    plot: str | None = PLOT_FILE
    """File name of the training-curve plot inside the adapter folder (None: no plot)."""
    notes: list[str] = field(default_factory=list)
    """Extra sentences (e.g. "pushed with --force although it scores worse")."""
    sections: dict[str, str] = field(default_factory=dict)
    """Extra sections, title -> markdown (e.g. the rounds of `trainers/loop.py`), after the notes."""
    library_name: str = "peft"
    """The library that loads this repo."""
    pipeline_tag: str = "text-generation"
    """Hub pipeline tag."""

    def front_matter(self) -> dict[str, Any]:
        """The YAML metadata block as a dict (Hub model-card conventions)."""
        hub_datasets = [d.ref for d in self.datasets if d.is_hub]
        data: dict[str, Any] = {
            "base_model": self.base_model,
            "library_name": self.library_name,
            "pipeline_tag": self.pipeline_tag,
            "tags": ["flywheel", f"flywheel-{self.task}", self.method, "lora", "peft", "trl"],
        }
        if hub_datasets:
            data["datasets"] = hub_datasets
        data["flywheel"] = {
            "task": self.task,
            "method": self.method,
            "datasets": [{"id": _public_ref(d), "revision": d.revision, "rows": d.rows, "kind": d.kind}
                         for d in self.datasets],
        }
        if self.main_metric and self.metrics_after is not None:
            data["flywheel"]["main_metric"] = self.main_metric
            data["flywheel"]["before"] = _round(self.metrics_before or {})
            data["flywheel"]["after"] = _round(self.metrics_after)
        return data

    def render(self) -> str:
        """README.md text: YAML front matter, description, data, evaluation, curves, recipe, usage."""
        from huggingface_hub import ModelCardData

        metadata = ModelCardData(**self.front_matter()).to_yaml()
        base = self.base_model if is_local_ref(self.base_model) else \
            f"[{self.base_model}](https://huggingface.co/{self.base_model})"
        lines = [f"---\n{metadata}\n---", "",
                 f"# Flywheel `{self.task}` adapter ({self.method.upper()})", "",
                 f"A LoRA adapter for {base} trained with Flywheel's `{self.method}` trainer "
                 f"on feedback collected in the `{self.task}` demo.", ""]
        lines += ["## Training data", "", "| source | kind | revision | rows |", "|---|---|---|---|"]
        lines += [f"| {_public_ref(d)} | {d.kind} | {(d.revision or 'unknown')[:12]} | {d.rows} |"
                  for d in self.datasets] or ["| (none recorded) | | | |"]
        lines.append("")
        if self.evaluation_table:
            lines += ["## Evaluation (before → after)", "", self.evaluation_table.strip(), ""]
            if self.main_metric:
                lines += [f"Main metric: `{self.main_metric}`.", ""]
        lines += [f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        for title, body in self.sections.items():
            lines += [f"## {title}", "", body.strip(), ""]
        if self.plot:
            lines += ["## Training curves", "", f"![training curves]({self.plot})", ""]
        if self.recipe:
            import yaml

            recipe = yaml.safe_dump(_scrub(self.recipe), sort_keys=False).strip()
            lines += ["## Recipe", "", "```yaml", recipe, "```", ""]
        auto = _AUTO_CLASSES.get(self.pipeline_tag, "AutoModelForCausalLM")
        lines += ["## Usage", "", "```python", "from peft import PeftModel",
                  f"from transformers import {auto}", "",
                  f'base = {auto}.from_pretrained("{self.base_model}")',
                  'model = PeftModel.from_pretrained(base, "<this repo or folder>")', "```", ""]
        return _redact("\n".join(lines))


_AUTO_CLASSES = {"text-generation": "AutoModelForCausalLM", "text2text-generation": "AutoModelForSeq2SeqLM",
                 "text-classification": "AutoModelForSequenceClassification"}


@dataclass
class PushResult:
    """Where an adapter was published."""

    repo: str
    """Hub repo id or absolute local folder."""
    revision: str
    """Hub commit sha, or content hash of the weights for a folder."""
    url: str
    """Commit URL on the Hub, or `file://` URL of the folder."""
    local: bool
    """True if published into a local folder."""


def default_repo(task: str, method: str, *, token: str | None = None) -> str:
    """`<user>/flywheel-<task>-<method>` when a Hub token is available, else a folder in FLYWHEEL_HOME."""
    from huggingface_hub import HfApi, get_token

    name = f"flywheel-{task.replace('_', '-')}-{method}"
    token = token or get_token()
    if token:
        try:
            user = HfApi(token=token).whoami()["name"]
            return f"{user}/{name}"
        except Exception as error:  # any failure means "no usable account"
            logger.warning("Cannot ask the Hub who you are (%s); publishing locally.", type(error).__name__)
    return str(flywheel_home() / "published" / name)


def write_card(folder: str | Path, card: AdapterCard) -> Path:
    """Write `card` as `README.md` into `folder`; return its path."""
    path = Path(folder) / CARD_FILE
    path.write_text(card.render(), encoding="utf-8")
    return path


def push_adapter(folder: str | Path, *, repo: str, card: AdapterCard | None = None, token: str | None = None,
                 private: bool = True, commit_message: str | None = None) -> PushResult:
    """Publish the adapter in `folder` to `repo` (Hub repo id or local folder).

    Writes the card first if one is given, then publishes only `PUBLISHED_PATTERNS` files.

    Raises:
        FlywheelError: no safetensors weights or no adapter_config.json in `folder`, pickled
            weights present, or the Hub refused the upload.
    """
    source = Path(folder)
    files = _publishable(source)
    if card is not None:
        write_card(source, card)
        files = _publishable(source)
    message = commit_message or f"Flywheel: upload {card.method if card else 'adapter'} adapter"
    return publish_files(files, repo=repo, token=token, private=private, commit_message=message)


def publish_files(files: list[Path], *, repo: str, token: str | None = None, private: bool = True,
                  commit_message: str = "Flywheel: update") -> PushResult:
    """Put `files` at the top level of `repo` (Hub model repo id or local folder) in one commit.

    Raises:
        FlywheelError: the Hub refused the upload.
    """
    if is_local_ref(repo):
        return _push_local(files, Path(repo).expanduser().resolve())
    return _push_hub(files, repo, token=token, private=private, message=commit_message)


def _publishable(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FlywheelError(f"Adapter folder {folder} does not exist.")
    if not (folder / "adapter_config.json").exists():
        raise FlywheelError(f"{folder} holds no adapter_config.json: nothing to publish.")
    if not list(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
        hint = f" (found pickled {', '.join(pickled)}; only safetensors are published)" if pickled else ""
        raise FlywheelError(f"{folder} holds no safetensors weights{hint}.")
    chosen: list[Path] = []
    for pattern in PUBLISHED_PATTERNS:
        chosen += [p for p in sorted(folder.glob(pattern)) if p.is_file() and p not in chosen]
    return chosen


def _push_local(files: list[Path], target: Path) -> PushResult:
    target.mkdir(parents=True, exist_ok=True)
    for file in files:
        # Copy then rename so a demo reloading the folder never sees a half-written file.
        staging = target / f".{file.name}.partial"
        shutil.copyfile(file, staging)
        os.replace(staging, target / file.name)
    revision = latest_revision(str(target))
    logger.info("Published adapter into %s (revision %s)", target, revision[:12])
    return PushResult(repo=str(target), revision=revision, url=target.as_uri(), local=True)


def _push_hub(files: list[Path], repo: str, *, token: str | None, private: bool, message: str) -> PushResult:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="flywheel-push-") as staging:
        for file in files:
            shutil.copyfile(file, Path(staging) / file.name)
        try:
            api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo, folder_path=staging, repo_type="model",
                                     commit_message=message)
        except Exception as error:  # HTTP errors, refused connections, timeouts: one clear line
            text = first_line(error)
            raise FlywheelError(f"Pushing the adapter to {repo} failed: {_redact(text)}") from error
    logger.info("Pushed adapter to %s (commit %s)", repo, info.oid[:12])
    return PushResult(repo=repo, revision=info.oid, url=info.commit_url, local=False)


def _public_ref(source: DatasetRef) -> str:
    """Hub ids as they are; local paths reduced to their last component (no home paths in cards)."""
    if source.is_hub:
        return source.ref
    return f"local:{Path(source.ref).name or source.ref}"


def _round(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


_SECRET_KEYS = ("token", "password", "secret", "api_key")


def _scrub(recipe: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in recipe.items():
        if any(word in key.lower() for word in _SECRET_KEYS):
            continue
        plain = isinstance(value, (str, int, float, bool, type(None), list, dict))
        clean[key] = value if plain else str(value)
    return clean


def _redact(text: str) -> str:
    """Remove the value of HF_TOKEN (or any hf_ token we know of) from text bound for a card or log."""
    from huggingface_hub import get_token

    return redact(text, get_token())
