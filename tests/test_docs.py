"""The documentation: the MkDocs site builds with warnings as errors, and every ``python`` code
block of ``docs/*.md`` and ``README.md`` runs (or says why not, on the line before its fence)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
# Placeholders of the docs and what they stand for in the scratch folder the blocks run in.
PLACEHOLDERS = {"<date>": "2024-01-01_00-00-00"}


def code_blocks(path: Path) -> list[dict]:
    """Every fenced block of a Markdown file: language, code, line, the not-run reason."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m["lang"]:
            i += 1
            continue
        start, indent = i, len(m["indent"])
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: unclosed code fence"
        marker = NOT_RUN.match(lines[start - 1]) if start else None
        blocks.append({
            "lang": m["lang"], "line": start + 1,
            "code": "\n".join(line[indent:] for line in lines[start + 1:i]),
            "not_run": marker["reason"] if marker else None,
            "marked": start > 0 and "not run" in lines[start - 1],
        })
        i += 1
    return blocks


def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    for page in ["index.html", "tasks/index.html", "configs/index.html",
                 "data-format/index.html", "evaluation/index.html", "converters/index.html",
                 "research-code/index.html", "troubleshooting/index.html",
                 "architecture/index.html", "benchmarks/index.html"]:
        assert (site / page).is_file(), page
    # the API reference is generated from the docstrings, not written by hand
    api = (site / "api" / "models" / "index.html").read_text()
    assert 'id="neurobridge.models.build_masked_model"' in api
    assert 'id="neurobridge.models.MaskedModel.from_pretrained"' in api
    assert "The model of a folder written by" in api  # its docstring
    tasks = (site / "api" / "tasks" / "index.html").read_text()
    for module in ["registry", "pretrain", "adapt_session", "evaluate", "align", "finetune",
                   "adapter", "reconstruct"]:
        assert f'id="neurobridge.tasks.{module}"' in tasks, module
    assert 'id="neurobridge.tasks.pretrain.build_pretraining"' in tasks


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in nav, page


def test_code_blocks_are_found_and_unrun_ones_say_why():
    blocks = {p.name: code_blocks(p) for p in PAGES}
    python = [(name, b) for name, bs in blocks.items() for b in bs if b["lang"] == "python"]
    assert len([b for _, b in python if b["not_run"] is None]) >= 5
    for placeholder in PLACEHOLDERS:
        assert any(placeholder in b["code"] for _, b in python), placeholder
    for name, b in python:
        if b["marked"]:
            assert b["not_run"], f"{name}:{b['line']}: write <!-- not run: <reason> -->"
    # the README's quick start, which CI runs, is a bash block
    readme = [b["code"] for b in blocks["README.md"] if b["lang"] == "bash"]
    assert any('pip install -e ".[dev]"' in c and "python examples/train.py" in c for c in readme)


def test_code_blocks_are_parsed_with_their_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n<!-- not run: needs a GPU -->\n"
                    "```python\ny = 2\n```\n<!-- not run -->\n```python\nz\n```\n\n"
                    "- item\n\n  ```bash\n  ls\n  ```\n")
    blocks = code_blocks(page)
    assert [(b["lang"], b["code"], b["not_run"], b["marked"]) for b in blocks] == [
        ("python", "x = 1", None, False), ("python", "y = 2", "needs a GPU", True),
        ("python", "z", None, True), ("bash", "ls", None, False)]


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith("http")]
    assert "docs/tasks.md" in local
    for link in local:
        assert (ROOT / link).is_file(), link


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A scratch folder with what the blocks read: a small synthetic visual data set in
    ``data/visual`` and two-step ``pretrain`` → ``align`` → ``adapter`` runs in ``runs/``."""
    from neurobridge.datasets.synthetic import SyntheticConfig, generate_synthetic_recordings
    from neurobridge.training.run import run

    ws = tmp_path_factory.mktemp("docs_workspace")
    data = ws / "data" / "visual"
    generate_synthetic_recordings(data, SyntheticConfig(
        n_sessions=2, units_per_region=4, duration=40.0, seed=7, stimulus="images",
        n_train_images=16, n_valid_images=4, n_test_images=8))
    fast = ["data=recordings", f"data.root={data}", "model.encoder.dim=32",
            "model.encoder.dim_head=16", "model.decoder.dim_head=16",
            "model.encoder.num_latents_per_step=4", "data.batch_size=4", "data.max_val_windows=2",
            "trainer.enable_progress_bar=false", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "+trainer.limit_test_batches=1"]
    stages = {
        "pretrain": ["task.baseline=null", "task.plots=false"],
        "align": ["task=align", "task.plots=false", "task.readout.num_queries=2",
                  "task.readout.dim_head=16", "task.projector.hidden_dim=32",
                  f"init_from={ws / 'runs/pretrain/checkpoints/last.ckpt'}"],
        "adapter": ["task=adapter", "task.adapter.num_tokens=4", "task.adapter.hidden_dim=32",
                    "task.adapter.refiner_depth=1",
                    f"init_from={ws / 'runs/align/checkpoints/last.ckpt'}"],
    }
    for name, overrides in stages.items():
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("config", overrides=fast + overrides)
        run(cfg, ws / "runs" / name)
    for copy in ["runs/long_s0", "runs/long_s1", f"outputs/pretrain/{PLACEHOLDERS['<date>']}"]:
        shutil.copytree(ws / "runs" / "pretrain", ws / copy)
    return ws


@pytest.mark.parametrize("page", [p for p in PAGES if any(
    b["lang"] == "python" and b["not_run"] is None for b in code_blocks(p))], ids=lambda p: p.name)
def test_python_blocks_run(page, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    namespace = {"__name__": f"docs_{page.stem}"}
    for block in code_blocks(page):
        if block["lang"] != "python" or block["not_run"] is not None:
            continue
        code = block["code"]
        for placeholder, value in PLACEHOLDERS.items():
            code = code.replace(placeholder, value)
        assert not re.search(r"<[a-z_]+>", code), f"{page.name}:{block['line']}: a placeholder"
        exec(compile(code, f"{page.name}:{block['line']}", "exec"), namespace)


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(where, overrides)`` of every ``python examples/train.py ...`` command in a bash
    block of the docs and the README (continuation lines joined, comments dropped)."""
    import shlex

    found = []
    for page in PAGES:
        for block in code_blocks(page):
            if block["lang"] not in ("bash", "sh", "console"):
                continue
            code = re.sub(r"\\\n\s*", " ", block["code"])
            for line in code.splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith("python examples/train.py"):
                    found.append((f"{page.name}:{block['line']}", shlex.split(line)[2:]))
    return found


def test_every_documented_override_resolves_to_what_it_says():
    """Each command of the docs composes, and each ``key=value`` it sets reads back as that
    value (a mapping replaces the default, it is not merged into it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    commands = documented_commands()
    assert len(commands) >= 30 and any("masking.mode_probs" in " ".join(o) for _, o in commands)
    for where, overrides in commands:
        overrides = [o for o in overrides if "..." not in o and "<" not in o]
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        for override in parser.parse_overrides(overrides):
            key = override.key_or_group
            if key.startswith("hydra") or (ROOT / "configs" / key).is_dir():
                continue  # config groups (data=..., task=...) are checked by composing
            got = OmegaConf.select(cfg, key)
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert got == override.value(), f"{where}: {key} reads {got!r}, not {override.value()!r}"
