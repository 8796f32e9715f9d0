"""One task's online adapter: its queue, background worker, probes, rollbacks, checkpoints and swaps.

`serving.online` states the objective and the loop; `OnlineLearning` there holds one learner per
task. The update itself is in `serving.online_policy`, the files in `hub.online`.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError, first_line
from hub.online import CHECKPOINTS, OnlineState, checkpoint_name, online_home, read_state, write_state
from serving.compute_threads import run_parallel
from serving.engine import AdapterInfo, Engine
from serving.judges import Judge
from serving.online_policy import (
    Example,
    RunningBaseline,
    clip_ids,
    load_adapter_weights,
    policy_loss,
    reward_of,
    save_adapter,
    trainable_copy,
)
from tasks import InvalidInput, get_task

logger = logging.getLogger(__name__)

DRIFT_JUDGE = "drift (minus the KL divergence from the base model)"


@dataclass(frozen=True)
class OnlineConfig:
    """How the online adapters learn (the same for every task)."""

    learning_rate: float = 1e-4
    kl_coef: float = 0.05
    """β: weight of the KL penalty to the base model."""
    swap_every: int = 10
    """K: updates between two probes (and swaps into the engine)."""
    margin: float = 0.05
    """A probe score this far (in the judge's units) below the last good one rolls back."""
    lora_rank: int = 8
    lora_alpha: int = 16
    max_batch: int = 4
    """Ratings taken into one update at most when they pile up."""
    probe_tokens: int = 32
    """Length of the greedy probe answers."""
    baseline_decay: float = 0.95
    max_queue: int = 1000
    """Ratings waiting at most; older ones are dropped beyond (they stay in the feedback data)."""
    max_wait: float = 30.0
    """Seconds the worker waits for a moment without generation before training anyway."""
    grad_clip: float = 1.0


def online_key(slug: str) -> str:
    """The engine's adapter key of a task's online adapter."""
    return f"online/{slug}"


def parse_online_tasks(specs: str | Iterable[str]) -> list[str]:
    """`"tweet,detox"` or `["tweet", "detox"]` -> task slugs that take ratings or flags (`InvalidInput` else)."""
    parts = [specs] if isinstance(specs, str) else list(specs)
    slugs: list[str] = []
    for slug in (piece.strip() for part in parts for piece in part.split(",")):
        if not slug:
            continue
        task = get_task(slug)
        if not (task.rating_weights or task.flags):
            raise InvalidInput(f"{slug} takes votes, not ratings or flags: it cannot learn online.")
        slugs += [task.slug] if task.slug not in slugs else []
    return slugs


class Activity:
    """Counts generations in flight, so background training runs in the moments between them."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    @contextmanager
    def generating(self) -> Iterator[None]:
        """Wrap one generation (a whole stream) in this."""
        with self._changed:
            self._count += 1
        try:
            yield
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def wait_idle(self, *, timeout: float, stop: threading.Event) -> bool:
        """Block until no generation is in flight (True), `timeout` passes or `stop` is set (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count == 0 or stop.is_set(), timeout) and not stop.is_set()

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


class OnlineLearner:
    """One task's online adapter: queue, background worker, probes, checkpoints and swaps.

    Args:
        engine: the serving engine; `load_adapter`, `encode`, `tokenizer` and `loaded` are used.
        judge: scores probe answers (higher is better); None: the drift judge.
        home: checkpoint folder (default `FLYWHEEL_HOME/online/<task>`).
        probe_inputs: the fixed probe set (default: the task's examples).
    """

    def __init__(self, engine: Engine, task: str, *, config: OnlineConfig = OnlineConfig(),
                 judge: Judge | None = None, activity: Activity | None = None, home: Path | None = None,
                 probe_inputs: Iterable[dict[str, str]] | None = None) -> None:
        self.task = get_task(parse_online_tasks(task)[0])
        self.engine, self.config, self.judge = engine, config, judge
        self.key = online_key(self.task.slug)
        self.home = home or online_home(self.task.slug)
        self.activity = activity or Activity()
        self.probe_inputs = [self.task.validate(inputs) for inputs in (probe_inputs or self.task.examples)]
        self.error: str | None = None
        """The last failure of the worker (it goes on with the next ratings)."""
        self.dropped = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._changed = threading.Condition()
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._labels: dict[str, int] = {}
        self._rewards: list[float] = []
        self.state: OnlineState | None = None

    @property
    def judge_name(self) -> str:
        return self.judge.name if self.judge is not None else DRIFT_JUDGE

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> OnlineLearner:
        """Resume (or begin) the adapter, serve its checkpoint, start the worker. Call before serving."""
        loaded = getattr(self.engine, "loaded", None)
        if loaded is None:
            raise InvalidInput("Online learning trains in this process: it needs the local backend, which "
                               "holds the model here.")
        if loaded.is_seq2seq:
            raise InvalidInput(f"Online learning needs a causal LM; {loaded.base_id} is seq2seq.")
        state = read_state(self.home) or OnlineState(task=self.task.slug, base_model=loaded.base_id)
        if state.base_model != loaded.base_id:
            raise FlywheelError(f"The online {self.task.slug} adapter in {self.home} was trained on "
                                f"{state.base_model}, not {loaded.base_id}: move that folder away first.")
        if state.judge != self.judge_name:  # another judge's score is in other units: measure again
            state.good_score = None
        state.judge, state.config = self.judge_name, asdict(self.config)
        resume = state.checkpoint(state.latest or state.serving, home=self.home)
        if resume is not None and not resume.is_dir():
            raise FlywheelError(f"Online checkpoint {resume} named in {self.home / 'state.json'} is missing.")
        self.model = trainable_copy(loaded.model, rank=self.config.lora_rank, alpha=self.config.lora_alpha,
                                    checkpoint=resume, base_id=loaded.base_id)
        self.model.eval()  # no dropout: updates are deterministic given the ratings
        self._new_optimizer()
        self.baseline = RunningBaseline.restore(self.task, state.baseline, decay=self.config.baseline_decay)
        self.state = state
        if state.serving is None:
            state.serving = self._checkpoint(0).name
        self._serve(state.checkpoint(state.serving, home=self.home), state.serving_update)
        write_state(state, self.home)
        self._busy = True  # the first probe (the score to beat) runs before any rating
        self._thread = threading.Thread(target=self._run, name=f"flywheel-online-{self.task.slug}", daemon=True)
        self._thread.start()
        logger.info("Online learning for %s: %s", self.task.slug, state.describe())
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the worker and checkpoint its newest weights (training resumes from them)."""
        self._stop.set()
        self.activity.wake()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("Online worker for %s did not stop in %.0f s; not checkpointing.", self.task.slug,
                               timeout)
                return
            self._thread = None
        state = self.state
        if state is None:
            return
        if self._queue:
            logger.info("%d rating(s) of %s were not learned before shutdown (they stay in the feedback data).",
                        len(self._queue), self.task.slug)
        state.latest = self._checkpoint(state.updates).name if state.updates > state.serving_update else None
        state.baseline = self.baseline.to_dict()
        write_state(state, self.home)
        self._prune()

    def observe(self, record: dict[str, Any]) -> bool:
        """Queue a stored feedback record of this task; False if it gives no reward (edits) or is another task's."""
        if record.get("task") != self.task.slug or reward_of(self.task, record) is None:
            return False
        with self._changed:
            if len(self._queue) >= self.config.max_queue:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(record)
            self._changed.notify_all()
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued rating is learned (and any probe done); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue and not self._busy, timeout)

    # -- what the app shows ----------------------------------------------------------------------

    def label(self, info: AdapterInfo | None) -> str | None:
        """"online, update N" for an adapter this learner loaded into the engine, else None."""
        if info is None or info.key != self.key or info.revision not in self._labels:
            return None
        return f"online, update {self._labels[info.revision]}"

    def status(self) -> dict[str, Any]:
        state = self.state or OnlineState(task=self.task.slug, base_model=self.engine.base_id)
        return {"updates": state.updates, "feedback": state.feedback, "pending": len(self._queue),
                "serving": f"online, update {state.serving_update}", "judge": self.judge_name,
                "good_score": state.good_score, "last_probe": state.probes[-1] if state.probes else None,
                "rollbacks": len(state.rollbacks), "last_rollback": state.rollbacks[-1] if state.rollbacks else None,
                "baseline": round(self.baseline.mean, 4) if self.state else None, "dropped": self.dropped,
                "error": self.error, "running": self._thread is not None and self._thread.is_alive()}

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        self._guarded(self._first_probe)
        while not self._stop.is_set():
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._stop.is_set())
                if self._stop.is_set():
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.config.max_batch))]
                self._busy = True
            self._guarded(self._learn, batch)

    def _guarded(self, job: Any, *args: Any) -> None:
        try:
            run_parallel(job, *args)  # a fresh thread per job: no idle OpenMP pool slows the decode loop
        except Exception as error:  # noqa: BLE001 - the worker outlives one bad batch
            logger.exception("Online learning for %s failed", self.task.slug)
            self.error = first_line(error)
        finally:
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    def _first_probe(self) -> None:
        state = self.state
        if state.good_score is None:
            state.good_score = self._probe()
            state.append("probes", {"update": state.serving_update, "score": state.good_score, "accepted": True})
            write_state(state, self.home)

    def _learn(self, batch: list[dict[str, Any]]) -> None:
        import torch

        examples = [example for example in map(self._example, batch) if example is not None]
        if not examples:
            return
        self.optimizer.zero_grad(set_to_none=True)
        for example in examples:
            self.activity.wait_idle(timeout=self.config.max_wait, stop=self._stop)
            if self._stop.is_set():
                return  # the batch is not learned; its records stay in the feedback data
            loss, _ = policy_loss(self.model, example, kl_coef=self.config.kl_coef)
            (loss / len(examples)).backward()
        torch.nn.utils.clip_grad_norm_(self._trainable(), self.config.grad_clip)
        self.optimizer.step()
        for example in examples:
            self.baseline.update(example.reward)
        self._rewards += [example.reward for example in examples]
        state = self.state
        state.updates += 1
        state.feedback += len(examples)
        state.baseline = self.baseline.to_dict()
        if state.updates % self.config.swap_every == 0:
            self._probe_and_publish()

    def _example(self, record: dict[str, Any]) -> Example | None:
        reward = reward_of(self.task, record)
        completion = self.engine.tokenizer(record.get("completion") or "", add_special_tokens=False,
                                           return_tensors="pt")["input_ids"][0]
        if reward is None or completion.numel() == 0:
            return None
        prompt, completion = clip_ids(self.engine.encode(self.task, record["inputs"])["input_ids"][0], completion)
        return Example(prompt_ids=prompt, completion_ids=completion, reward=reward,
                       advantage=self.baseline.advantage(reward))

    def _probe_and_publish(self) -> None:
        state = self.state
        score = self._probe()
        update = state.updates
        if self._rewards:
            state.append("rewards", {"update": update, "mean_reward": round(statistics.fmean(self._rewards), 6),
                                     "count": len(self._rewards)})
            self._rewards = []
        worse = state.good_score is not None and score < state.good_score - self.config.margin
        refusal = None
        if not worse:
            folder = self._checkpoint(update)
            try:
                self._serve(folder, update)
            except FlywheelError as error:  # e.g. non-finite weights: the engine keeps the good ones
                refusal = first_line(error)
        if worse or refusal:
            self._rollback(update, score, refusal)
        else:
            state.serving, state.serving_update, state.good_score = checkpoint_name(update), update, score
            state.append("probes", {"update": update, "score": score, "accepted": True})
        write_state(state, self.home)
        self._prune()

    def _rollback(self, update: int, score: float, refusal: str | None) -> None:
        state = self.state
        load_adapter_weights(self.model, state.checkpoint(state.serving, home=self.home))
        self._new_optimizer()  # the moments of a bad trajectory would lead straight back
        reason = refusal or f"probe score fell more than {self.config.margin}"
        event = {"update": update, "to_update": state.serving_update, "score": score,
                 "good_score": state.good_score, "reason": reason}
        state.append("rollbacks", event)
        state.append("probes", {"update": update, "score": score, "accepted": False})
        logger.warning("Online %s adapter rolled back from update %d to update %d: %s (probe %.4g, last good %s)",
                       self.task.slug, update, state.serving_update, event["reason"], score, state.good_score)

    def _probe(self) -> float:
        """Mean judge score of the adapter's greedy answers to the probe set (drift judge: minus the KL)."""
        import torch

        completions, examples = [], []
        for inputs in self.probe_inputs:
            self.activity.wait_idle(timeout=self.config.max_wait, stop=self._stop)
            encoded = self.engine.encode(self.task, inputs)
            with torch.no_grad():
                output = self.model.generate(**encoded, do_sample=False, max_new_tokens=self.config.probe_tokens,
                                             repetition_penalty=1.1, pad_token_id=self.engine.tokenizer.pad_token_id)
            answer = output[0, encoded["input_ids"].shape[1]:]
            completions.append(self.engine.tokenizer.decode(answer, skip_special_tokens=True))
            examples.append(Example(encoded["input_ids"][0], answer, reward=0.0, advantage=0.0))
        if self.judge is not None:
            scores = self.judge([self.task.text_prompt(inputs) for inputs in self.probe_inputs], completions)
        else:
            with torch.no_grad():
                scores = [-policy_loss(self.model, example, kl_coef=1.0)[1]["kl"]
                          for example in examples if example.completion_ids.numel()]
        return round(statistics.fmean(scores), 6) if scores else 0.0

    # -- files and the engine --------------------------------------------------------------------

    def _checkpoint(self, update: int) -> Path:
        """Save the adapter as `checkpoints/update-N` (written aside, then renamed into place)."""
        return save_adapter(self.model, self.home / CHECKPOINTS / checkpoint_name(update))

    def _serve(self, folder: Path, update: int) -> None:
        info = self.engine.load_adapter(self.key, str(folder))
        self._labels[info.revision] = update

    def _prune(self) -> None:
        keep = {self.state.serving, self.state.latest}
        for folder in sorted((self.home / CHECKPOINTS).glob("*")):
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _trainable(self) -> list[Any]:
        return [parameter for parameter in self.model.parameters() if parameter.requires_grad]

    def _new_optimizer(self) -> None:
        import torch

        self.optimizer = torch.optim.AdamW(self._trainable(), lr=self.config.learning_rate, weight_decay=0.0)
