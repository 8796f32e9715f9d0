"""The Flywheel Space: its configuration (Space variables) and `python -m hub space deploy`.

A Space runs `app.py` at its repo root with `tasks/`, `hub/` and `demos/` beside it; this
module reads the variables that configure it and uploads that layout.

| variable | meaning | default |
|---|---|---|
| `FLYWHEEL_MODEL` | base model: Hub id, folder or `bundled` | `bundled`; on a Space SmolLM2's Hub id |
| `FLYWHEEL_ADAPTERS` | `slug=repo[@rev]` pairs, comma separated: the tabs' adapters (`@rev` pins) | none (base model) |
| `FLYWHEEL_FEEDBACK_REPO` | Hub dataset repo receiving feedback | none (stays local) |
| `FLYWHEEL_FEEDBACK_MINUTES` | minutes between feedback commits | 5 |
| `FLYWHEEL_POLL_SECONDS` | seconds between checks for new adapter revisions (0: never) | 60 |
| `FLYWHEEL_ARENA` | the arena's two sides, `A,B`: adapter keys or `base` | `base,arena` |
| `FLYWHEEL_HUB_TIMEOUT` | seconds an adapter repo may take to answer one request | 10 |
| `FLYWHEEL_ADAPTER_MAX_MB` | largest adapter download accepted, in MiB | 512 |
| `FLYWHEEL_REQUIRE_LOGIN` | `true`: feedback only from people signed in with Hugging Face | `false` |
| `FLYWHEEL_LIMITS` | quotas: `name=N/WINDOW` pairs, see `demos.quotas` | the app's defaults |
| `FLYWHEEL_QUEUE_SIZE` | requests waiting in the queue at most | 64 |
| `FLYWHEEL_PROXY_HOPS` | proxies in front of the app appending to `X-Forwarded-For` | 1 on a Space, else 0 |
| `FLYWHEEL_BACKEND` | where answers are generated: `local`, or `openai=URL` (e.g. a vLLM server) | `local` |
| `FLYWHEEL_LORA_SOURCE` | with `openai=URL`, the server reads adapters from: `cache` (shared path), `hub` | `cache` |
| `FLYWHEEL_ONLINE` | tabs that learn from their ratings and flags while serving (`serving.online`) | none |
| `FLYWHEEL_GUARD` | `toxicity[=THRESHOLD]`: every output is checked before it is served, or `off` | `toxicity` |

`HF_TOKEN` is a Space *secret* that you set yourself (Space settings -> Variables and
secrets); deploy never uploads a token. So is `FLYWHEEL_SECRET`, the key that signs outputs
so feedback can only judge real ones (without it a key is created per home, and a restart
without persistent storage makes outputs served before it unratable).

Example:
    >>> config = SpaceConfig.from_env({"FLYWHEEL_ADAPTERS": "tweet=me/flywheel-tweet-sft",
    ...                                "FLYWHEEL_POLL_SECONDS": "30"})
    >>> config.adapters, config.poll_seconds, config.arena
    ({'tweet': AdapterSpec(ref='me/flywheel-tweet-sft', revision=None)}, 30.0, (None, 'arena'))
    >>> SpaceConfig(adapters={"tweet": "me/a@v1", "arena": "me/b"}).to_variables()["FLYWHEEL_ADAPTERS"]
    'tweet=me/a@v1,arena=me/b'
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hub.errors import FlywheelError, first_line
from hub.repos import BUNDLED, BUNDLED_HUB_ID, DEFAULT_LIMITS, MIB, AdapterSpec, HubLimits, parse_adapter_specs

MODEL, ADAPTERS, FEEDBACK_REPO = "FLYWHEEL_MODEL", "FLYWHEEL_ADAPTERS", "FLYWHEEL_FEEDBACK_REPO"
FEEDBACK_MINUTES, POLL_SECONDS, ARENA = "FLYWHEEL_FEEDBACK_MINUTES", "FLYWHEEL_POLL_SECONDS", "FLYWHEEL_ARENA"
HUB_TIMEOUT, ADAPTER_MAX_MB = "FLYWHEEL_HUB_TIMEOUT", "FLYWHEEL_ADAPTER_MAX_MB"
REQUIRE_LOGIN, LIMITS = "FLYWHEEL_REQUIRE_LOGIN", "FLYWHEEL_LIMITS"
QUEUE_SIZE, PROXY_HOPS = "FLYWHEEL_QUEUE_SIZE", "FLYWHEEL_PROXY_HOPS"
BACKEND, LORA_SOURCE = "FLYWHEEL_BACKEND", "FLYWHEEL_LORA_SOURCE"
ONLINE, GUARD, DEFAULT_GUARD = "FLYWHEEL_ONLINE", "FLYWHEEL_GUARD", "toxicity"
VARIABLES = (MODEL, ADAPTERS, FEEDBACK_REPO, FEEDBACK_MINUTES, POLL_SECONDS, ARENA, HUB_TIMEOUT, ADAPTER_MAX_MB,
             REQUIRE_LOGIN, LIMITS, QUEUE_SIZE, PROXY_HOPS, BACKEND, LORA_SOURCE, ONLINE, GUARD)
DESCRIPTIONS = {
    MODEL: "Base model (Hub id)",
    ADAPTERS: "slug=adapter repo pairs, comma separated; polled for new revisions unless pinned (repo@rev)",
    FEEDBACK_REPO: "Hub dataset repo receiving feedback (needs the HF_TOKEN secret)",
    FEEDBACK_MINUTES: "Minutes between feedback commits",
    POLL_SECONDS: "Seconds between checks for new adapter revisions (0 = never)",
    ARENA: "Arena sides A,B: adapter keys or 'base'",
    HUB_TIMEOUT: "Seconds an adapter repo may take to answer one request",
    ADAPTER_MAX_MB: "Largest adapter download accepted, in MiB",
    REQUIRE_LOGIN: "true: feedback only from people signed in with Hugging Face",
    LIMITS: "Quotas: name=N/WINDOW pairs (generation, generation-per-ip, feedback, feedback-per-ip)",
    QUEUE_SIZE: "Requests waiting in the queue at most",
    PROXY_HOPS: "Proxies in front of the app appending to X-Forwarded-For",
    BACKEND: "Where answers are generated: local, or openai=URL (an OpenAI-compatible server such as vLLM)",
    LORA_SOURCE: "With openai=URL, where the server reads adapters: cache (a path it shares) or hub (repo ids)",
    ONLINE: "Tabs that learn online from their ratings and flags, comma separated (e.g. tweet,detox)",
    GUARD: "toxicity[=THRESHOLD]: withhold outputs scored toxic (default toxicity=0.5), or off",
}
SECRET_NOTE = ("Secret FLYWHEEL_SECRET: set it (32+ random characters) so the key that signs outputs for "
               "feedback survives restarts; without it a key is made per FLYWHEEL_HOME.")
PACKAGES = ("tasks", "hub", "serving", "demos")
"""Our packages a Space needs beside app.py (trainers and tests stay behind)."""
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
"""Files of `spaces/` that go to the Space repo root."""
DATA_SUFFIXES = {".py", ".json", ".jsonl", ".yaml", ".yml", ".txt", ".csv", ".jinja"}
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class SpaceConfig:
    """How a Space (or `python spaces/app.py`) is configured; see the module docstring."""

    model: str = BUNDLED
    adapters: dict[str, AdapterSpec] = field(default_factory=dict)
    """Adapter key -> spec; text (`user/repo@rev`) is accepted and parsed."""
    feedback_repo: str | None = None
    feedback_minutes: float = 5.0
    poll_seconds: float = 60.0
    arena: tuple[str | None, str | None] = (None, "arena")
    hub_limits: HubLimits = DEFAULT_LIMITS
    """Timeout and size limits of the adapter watcher's Hub calls."""
    require_login: bool = False
    limits: str = ""
    """Quota overrides, `name=N/WINDOW` pairs; the app checks them (`demos.quotas.Limits.parse`)."""
    queue_size: int | None = None
    """None: the app's default."""
    proxy_hops: int | None = None
    """None: 1 on a Space (its proxy appends the client's address), else 0."""
    backend: str | None = None
    """`openai=URL` to generate on an OpenAI-compatible server (None: local); the app checks it
    (`serving.backends.BackendSpec`)."""
    lora_source: str | None = None
    """With `openai=URL`: `cache` or `hub` (None: cache; see `serving.openai_backend`)."""
    online: str = ""
    """Comma-separated task slugs learning online; the app checks them (`serving.online.parse_online_tasks`)."""
    guard: str = DEFAULT_GUARD
    """`toxicity[=THRESHOLD]` or `off`: on by default, a public Space must not serve toxic text (`serving.guard`)."""

    def __post_init__(self) -> None:
        self.adapters = {key: AdapterSpec.of(spec) for key, spec in self.adapters.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SpaceConfig:
        """Read the `FLYWHEEL_*` variables; on a Space (`SPACE_ID` set) the model defaults to the Hub id."""
        env = os.environ if environ is None else environ
        default_model = BUNDLED_HUB_ID if env.get("SPACE_ID") else BUNDLED
        arena = parse_arena(env.get(ARENA) or "base,arena")
        config = cls(model=env.get(MODEL) or default_model,
                     adapters=parse_adapter_specs(env.get(ADAPTERS) or "", arena_sides=arena),
                     feedback_repo=env.get(FEEDBACK_REPO) or None,
                     feedback_minutes=_number(env, FEEDBACK_MINUTES, 5.0, minimum=0.01),
                     poll_seconds=_number(env, POLL_SECONDS, 60.0, minimum=0.0), arena=arena,
                     hub_limits=HubLimits(
                         timeout=_number(env, HUB_TIMEOUT, DEFAULT_LIMITS.timeout, minimum=0.1),
                         max_bytes=round(_number(env, ADAPTER_MAX_MB, DEFAULT_LIMITS.max_bytes / MIB,
                                                 minimum=0.01) * MIB)))
        config.require_login = _flag(env, REQUIRE_LOGIN)
        config.limits = env.get(LIMITS) or ""
        config.queue_size = int(_number(env, QUEUE_SIZE, 1, minimum=1)) if env.get(QUEUE_SIZE) else None
        config.proxy_hops = int(_number(env, PROXY_HOPS, 0, minimum=0)) if env.get(PROXY_HOPS) else None
        config.backend, config.lora_source = env.get(BACKEND) or None, env.get(LORA_SOURCE) or None
        config.online, config.guard = env.get(ONLINE) or "", env.get(GUARD) or DEFAULT_GUARD
        return config

    def to_variables(self) -> dict[str, str]:
        """The Space variables that reproduce this configuration (unset ones are left out)."""
        variables = {MODEL: BUNDLED_HUB_ID if self.model in (BUNDLED, "default", "") else self.model}
        if self.adapters:
            variables[ADAPTERS] = ",".join(f"{key}={spec}" for key, spec in self.adapters.items())
        if self.feedback_repo:
            variables[FEEDBACK_REPO] = self.feedback_repo
        variables[FEEDBACK_MINUTES] = _plain(self.feedback_minutes)
        variables[POLL_SECONDS] = _plain(self.poll_seconds)
        variables[ARENA] = ",".join(side or "base" for side in self.arena)
        if self.hub_limits.timeout != DEFAULT_LIMITS.timeout:
            variables[HUB_TIMEOUT] = _plain(self.hub_limits.timeout)
        if self.hub_limits.max_bytes != DEFAULT_LIMITS.max_bytes:
            variables[ADAPTER_MAX_MB] = _plain(self.hub_limits.max_bytes / MIB)
        if self.require_login:
            variables[REQUIRE_LOGIN] = "true"
        if self.limits:
            variables[LIMITS] = self.limits
        if self.queue_size is not None:
            variables[QUEUE_SIZE] = str(self.queue_size)
        if self.proxy_hops is not None:
            variables[PROXY_HOPS] = str(self.proxy_hops)
        if self.backend:
            variables[BACKEND] = self.backend
        if self.lora_source:
            variables[LORA_SOURCE] = self.lora_source
        if self.online:
            variables[ONLINE] = self.online
        if self.guard != DEFAULT_GUARD:
            variables[GUARD] = self.guard
        return variables


def parse_arena(text: str) -> tuple[str | None, str | None]:
    """`"base,arena"` -> `(None, "arena")`: the adapter keys answering on each side."""
    sides = [part.strip() for part in text.split(",")]
    if len(sides) != 2 or not all(_KEY.match(side) for side in sides):
        raise FlywheelError(f"{ARENA} must be two adapter keys or 'base' separated by a comma, got {text!r}.")
    a, b = (None if side == "base" else side for side in sides)
    return a, b


# -- deploy -------------------------------------------------------------------------------------

@dataclass
class DeployPlan:
    """What `deploy` uploads and sets."""

    repo: str
    files: dict[str, Path]
    """Path in the Space repo -> local file."""
    variables: dict[str, str]
    private: bool = False

    def describe(self) -> str:
        """Human-readable listing, as `--dry-run` prints it."""
        lines = [f"Space {self.repo} (sdk gradio, {'private' if self.private else 'public'}): "
                 f"{len(self.files)} files"]
        lines += [f"  {path}  ({file.stat().st_size:,} bytes)" for path, file in sorted(self.files.items())]
        lines.append("Space variables:")
        lines += [f"  {key}={value}" for key, value in self.variables.items()]
        lines += [TOKEN_NOTE, SECRET_NOTE]
        return "\n".join(lines)


TOKEN_NOTE = ("Secret HF_TOKEN: set it yourself in the Space settings (Variables and secrets), with "
              "write access to the feedback repo and read access to private adapter repos; "
              "deploy never uploads it.")


def project_root() -> Path:
    """The checkout holding `spaces/`, `tasks/`, `hub/` and `demos/` (this file's grandparent)."""
    return Path(__file__).resolve().parent.parent


def plan_deploy(repo: str, config: SpaceConfig, *, private: bool = False,
                root: Path | None = None) -> DeployPlan:
    """Check the inputs and list the files and variables, without touching the network.

    Example:
        >>> plan = plan_deploy("me/flywheel", SpaceConfig(adapters={"tweet": "me/flywheel-tweet-sft"}))
        >>> sorted(p for p in plan.files if "/" not in p)
        ['README.md', 'app.py', 'requirements.txt']
        >>> plan.variables["FLYWHEEL_MODEL"]
        'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    _check_hub_id(repo, "--repo")
    for key, spec in config.adapters.items():
        _check_hub_id(spec.ref, f"adapter {key}")
    if config.feedback_repo:
        _check_hub_id(config.feedback_repo, "--feedback-repo")
    if Path(config.model).expanduser().exists() or config.model.startswith((".", "/", "~")):
        raise FlywheelError(f"Model {config.model} is a local folder; a Space needs a Hub id (or `bundled`).")
    root = root or project_root()
    files = {name: root / "spaces" / name for name in SPACE_FILES}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FlywheelError(f"Space sources missing: {', '.join(missing)}.")
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and path.suffix in DATA_SUFFIXES and not any(
                    part.startswith((".", "__pycache__")) for part in relative.parts):
                files[relative.as_posix()] = path
    return DeployPlan(repo=repo, files=files, variables=config.to_variables(), private=private)


def deploy(plan: DeployPlan, *, token: str | None = None) -> str:
    """Create the Space if needed, set its variables, upload its files; return the commit URL.

    Variables of ours that the plan leaves unset are deleted, so the Space runs exactly the plan.
    Stale files under `tasks/`, `hub/` and `demos/` are removed by the same commit.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = token or get_token()
    if not token:
        raise FlywheelError("Deploying needs a Hub token: run `hf auth login` or set HF_TOKEN.")
    api = HfApi(token=token)
    try:
        api.create_repo(plan.repo, repo_type="space", space_sdk="gradio", private=plan.private, exist_ok=True)
        existing = api.get_space_variables(plan.repo)
        for key in VARIABLES:
            if key in existing and key not in plan.variables:
                api.delete_space_variable(plan.repo, key)
        for key, value in plan.variables.items():
            if key not in existing or existing[key].value != value:
                api.add_space_variable(plan.repo, key, value, description=DESCRIPTIONS.get(key))
        with tempfile.TemporaryDirectory(prefix="flywheel-space-") as staging:
            for path, source in plan.files.items():
                target = Path(staging) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            info = api.upload_folder(repo_id=plan.repo, repo_type="space", folder_path=staging,
                                     commit_message="Flywheel: deploy the Space",
                                     delete_patterns=[f"{package}/**" for package in PACKAGES])
        secrets = api.get_space_secrets(plan.repo)
        has_secret = "HF_TOKEN" in secrets
    except (HfHubHTTPError, OSError, ValueError) as error:
        text = first_line(error)
        text = text.replace(token, "***")
        raise FlywheelError(f"Deploying the Space {plan.repo} failed: {text}") from error
    if not has_secret and (plan.variables.get(FEEDBACK_REPO) or plan.variables.get(ADAPTERS)):
        print(f"note: {TOKEN_NOTE}", file=sys.stderr)
    if "FLYWHEEL_SECRET" not in secrets:
        print(f"note: {SECRET_NOTE}", file=sys.stderr)
    return info.commit_url


def _check_hub_id(ref: str, what: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise FlywheelError(f"{what} must be a Hub repo id like user/name (a Space cannot read "
                            f"folders on this machine), got {ref!r}.")
    try:
        validate_repo_id(ref)
    except HFValidationError as error:
        raise FlywheelError(f"{what} {ref!r} is not a valid Hub repo id: {error}") from None


def _number(env: Mapping[str, str], key: str, default: float, *, minimum: float) -> float:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise FlywheelError(f"{key} must be a number, got {raw!r}.") from None
    if value < minimum:
        raise FlywheelError(f"{key} must be at least {minimum}, got {raw!r}.")
    return value


def _flag(env: Mapping[str, str], key: str) -> bool:
    raw = (env.get(key) or "false").strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise FlywheelError(f"{key} must be true or false, got {raw!r}.")
    return raw in ("true", "1", "yes")


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# -- CLI: python -m hub space deploy --------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `space deploy` to a `python -m hub` argparse dispatcher; the handler is `args.func`."""
    space = subparsers.add_parser("space", help="Deploy the Flywheel Space to the Hub.",
                                  description="Manage the Flywheel Hugging Face Space.")
    actions = space.add_subparsers(dest="space_command", required=True, metavar="deploy")
    parser = actions.add_parser(
        "deploy", help="Upload the Space (code and configuration).",
        description="Upload app.py, README.md, requirements.txt and the tasks/hub/demos packages to a "
                    "Gradio Space and set its variables. " + TOKEN_NOTE)
    parser.add_argument("--repo", required=True, metavar="USER/SPACE", help="The Space repo id.")
    parser.add_argument("--feedback-repo", metavar="USER/DATASET",
                        help="Hub dataset repo receiving feedback (sets FLYWHEEL_FEEDBACK_REPO).")
    parser.add_argument("--adapter", action="append", default=[], metavar="SLUG=REPO[@REV]",
                        help="A tab's adapter repo, polled for new revisions; REPO@REV pins one revision "
                             "(commit, tag or branch). Repeatable.")
    parser.add_argument("--model", default=BUNDLED,
                        help=f"Base model Hub id (default: {BUNDLED_HUB_ID}, the bundled model's Hub twin).")
    parser.add_argument("--poll-seconds", type=float, default=60.0,
                        help="Seconds between checks for new adapter revisions (0: never; default 60).")
    parser.add_argument("--feedback-minutes", type=float, default=5.0,
                        help="Minutes between feedback commits (default 5).")
    parser.add_argument("--arena", default="base,arena", metavar="A,B",
                        help="Arena sides: adapter keys or `base` (default base,arena).")
    parser.add_argument("--require-login", action="store_true",
                        help="Accept feedback only from people signed in with Hugging Face.")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=N/WINDOW",
                        help="A quota (generation, generation-per-ip, feedback, feedback-per-ip), e.g. "
                             "generation=60/hour or feedback-per-ip=off. Repeatable.")
    parser.add_argument("--backend", metavar="openai=URL",
                        help="Generate on an OpenAI-compatible server (vLLM) the Space can reach, instead of in "
                             "the Space (sets FLYWHEEL_BACKEND).")
    parser.add_argument("--lora-source", metavar="cache|hub",
                        help="With --backend: where the server reads adapters (sets FLYWHEEL_LORA_SOURCE; a Space "
                             "shares no disk with the server, so `hub`).")
    parser.add_argument("--online", default="", metavar="SLUG[,SLUG]",
                        help="Tabs that learn from their ratings and flags while serving (sets FLYWHEEL_ONLINE).")
    parser.add_argument("--guard", default=DEFAULT_GUARD, metavar="toxicity[=T]|off",
                        help="The toxicity guard (sets FLYWHEEL_GUARD; default on, threshold 0.5).")
    parser.add_argument("--private", action="store_true", help="Create the Space as private.")
    parser.add_argument("--dry-run", action="store_true",
                        help="List the files and variables, upload nothing.")
    parser.set_defaults(func=run_deploy)
    return parser


def run_deploy(args: argparse.Namespace) -> int:
    """Handler of `space deploy`; `FlywheelError` becomes one `error:` line and exit 2 in `hub.cli`."""
    if args.poll_seconds < 0 or args.feedback_minutes <= 0:
        raise FlywheelError("--poll-seconds must be >= 0 and --feedback-minutes > 0.")
    arena = parse_arena(args.arena)
    config = SpaceConfig(model=args.model, adapters=parse_adapter_specs(args.adapter, arena_sides=arena),
                         feedback_repo=args.feedback_repo, feedback_minutes=args.feedback_minutes,
                         poll_seconds=args.poll_seconds, arena=arena, require_login=args.require_login,
                         limits=",".join(args.limit), backend=args.backend, lora_source=args.lora_source,
                         online=args.online, guard=args.guard)
    plan = plan_deploy(args.repo, config, private=args.private)
    if args.dry_run:
        print("Dry run: nothing uploaded.\n" + plan.describe())
        return 0
    url = deploy(plan)
    print(f"Deployed {len(plan.files)} files to Space {plan.repo}: {url}")
    print("Variables: " + ", ".join(f"{k}={v}" for k, v in plan.variables.items()))
    return 0
