"""The package's layering: no import cycle, light imports, only public Lightning API."""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "neurobridge"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _import_graph() -> dict[str, set[str]]:
    """Module-level imports between neurobridge modules (imports inside functions run late and
    are left out). Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``: those
    count too, except the packages the importer itself is in."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                if not target.startswith("neurobridge"):
                    continue
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    inside = name == prefix or name.startswith(prefix + ".")
                    if prefix in modules and prefix != name and not (inside and i < len(parts)):
                        graph[name].add(prefix)
    return graph


def test_no_import_cycle_inside_the_package():
    graph = _import_graph()
    assert graph["neurobridge.tasks.pretrain"] >= {"neurobridge.models", "neurobridge.tasks.common"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_core_imports_and_pretraining_load_neither_open_clip_nor_diffusers(
    small_recordings, tmp_path
):
    code = f"""
import sys
import neurobridge, neurobridge.models, neurobridge.data, neurobridge.masking
from neurobridge.training.run import run
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir={str(PACKAGE.parent / 'configs')!r}, version_base="1.3"):
    cfg = compose("config", overrides=["data=recordings", "data.root={small_recordings}",
        "trainer.max_steps=1", "trainer.val_check_interval=1", "data.max_val_windows=2",
        "task.baseline=null", "task.plots=false", "trainer.enable_progress_bar=false",
        "+trainer.limit_test_batches=1", "data.batch_size=4"])
run(cfg, {str(tmp_path / 'run')!r})
print(sorted(m for m in ("open_clip", "diffusers", "transformers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**__import__("os").environ,
                                          "NEUROBRIDGE_CACHE": str(tmp_path / "cache")})
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_the_models_import_without_lightning_or_hydra():
    """A pretrained folder loads with no Lightning, Hydra or data pipeline (torch_brain itself
    imports omegaconf and temporaldata)."""
    code = ("import sys, neurobridge.models, neurobridge.models.pretrained; "
            "print(sorted(m for m in ('lightning', 'hydra', 'open_clip', "
            "'diffusers', 'neurobridge.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_public_lightning_api_is_used():
    private = re.compile(
        r"from lightning[\w.]* import _|lightning[\w.]*\._\w|"
        r"(trainer|strategy|checkpoint_callback|callback|ckpt)\._[a-z]\w*"
    )
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not offenders, "\n".join(offenders)
