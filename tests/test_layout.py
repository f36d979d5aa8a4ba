"""The tree keeps its shape: the library imports no Dagster, settings are read in one module, the
vocabulary is spelled only in its enums, long functions say why, the code location loads under
and `dg check defs` loads the code location (tests/test_deploy.py checks the images use the port table)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lucid_assets.core import states

REPO = Path(__file__).resolve().parent.parent
SOURCE = [
    p for root in ("lucid_assets", "services") for p in (REPO / root).rglob("*.py") if "migrations" not in p.parts
]
LIBRARY = sorted(
    p for p in (REPO / "lucid_assets").rglob("*.py") if "defs" not in p.parts and p.name != "definitions.py"
)


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def test_library_and_services_import_no_dagster():
    modules = (
        [_module(p) for p in LIBRARY]
        + [f"services.{name}.app" for name in ("api", "pipeline", "recorder", "storage")]
        + ["services.cli", "services.launcher", "services.healthcheck", "services.serve"]
    )
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith(('dagster.', 'dagster_')))\n"
        "print(len(bad), bad[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("0 "), f"a library or service module imports Dagster: {out.stdout}"
    assert len(modules) > 20  # the probe really walked the library


def test_the_code_location_is_only_defs():
    """Every module that imports dagster lives in lucid_assets/defs/ or is its loader."""
    for p in SOURCE:
        tree = ast.parse(p.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if "dagster" in names:
            rel = p.relative_to(REPO)
            assert rel.parts[:2] == ("lucid_assets", "defs") or rel == Path("lucid_assets/definitions.py"), rel


def test_environment_is_read_in_the_settings_module_only():
    offenders = []
    for p in SOURCE:
        if p == REPO / "lucid_assets" / "settings.py":
            continue
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv", "environb"):
                offenders.append(f"{p.relative_to(REPO)}:{n.lineno}")
            if isinstance(n, ast.ImportFrom) and n.module == "os" and {a.name for a in n.names} & {"environ", "getenv"}:
                offenders.append(f"{p.relative_to(REPO)}:{n.lineno}")
    assert not offenders, f"read the environment through lucid_assets.settings: {offenders}"


VOCABULARY = {
    m.value: type(m).__name__
    for e in (states.State, states.Event, states.ChunkState, states.WorkReason, states.Note, states.VerifyStatus)
    for m in e
}


VOCABULARY_KEYS = {"state", "event", "reason", "status", "to", "from", "kind"}


def vocabulary_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants equal to a vocabulary value where a state, event, reason or status is
    meant: compared (`== "sealed"`, `in ("recording", "paused")`), given as `state=`/`event=`/
    `reason=`/`status=`, or stored under such a key. (Words like "chunks" also name tables and
    directories: those uses are not vocabulary.)"""
    parents = {id(c): n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    found = []
    for n in ast.walk(tree):
        if not (isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in VOCABULARY):
            continue
        up = parents.get(id(n))
        if isinstance(up, (ast.Tuple, ast.List, ast.Set)):
            up = parents.get(id(up))
        meant = (
            isinstance(up, ast.Compare)
            or (isinstance(up, ast.keyword) and up.arg in VOCABULARY_KEYS)
            or (
                isinstance(up, ast.Dict)
                and any(
                    isinstance(k, ast.Constant) and k.value in VOCABULARY_KEYS and v is n
                    for k, v in zip(up.keys, up.values)
                )
            )
        )
        if meant:
            found.append((n.lineno, n.value))
    return found


def test_no_state_event_or_reason_literal_outside_their_enums():
    """`"sealed"`, `"stored"`, `"final"` ... are spelled once, in core/states.py; everything else
    uses the enums, so a renamed state cannot leave a stale comparison behind."""
    offenders = []
    for p in SOURCE:
        if p == REPO / "lucid_assets" / "core" / "states.py":
            continue
        for line, value in vocabulary_literals(ast.parse(p.read_text())):
            offenders.append(f"{p.relative_to(REPO)}:{line} {value!r} ({VOCABULARY[value]})")
    assert not offenders, "use the enums of lucid_assets.core.states:\n" + "\n".join(offenders)


def test_the_literal_check_catches_literals():
    """The check above sees the shapes the old code used (it is not vacuous)."""
    code = (
        'if session["state"] == "sealed": pass\n'
        'if s["state"] in ("recording", "paused"): pass\n'
        'call(event="start", reason="final")\n'
        'x = {"event": "create", "to": "created", "table": "chunks"}\n'
        'path = root / "chunks"\n'
    )
    found = sorted(v for _, v in vocabulary_literals(ast.parse(code)))
    assert found == sorted(["sealed", "recording", "paused", "start", "final", "create", "created"])


LONG = 60


def test_long_functions_say_why():
    """No function outside tests longer than ~60 lines without `# long: <reason>` above it."""
    offenders = []
    for p in SOURCE + list((REPO / "bench").glob("*.py")) + list((REPO / "scripts").glob("*.py")):
        lines = p.read_text().split("\n")
        for n in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > LONG:
                first = min([n.lineno] + [d.lineno for d in n.decorator_list])
                if not lines[first - 2].lstrip().startswith("# long: "):
                    offenders.append(f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert not offenders, "split these or say why above them (# long: ...):\n" + "\n".join(offenders)


def test_dg_check_defs():
    dg_cli = Path(sys.executable).parent / "dg"
    if not dg_cli.exists():
        pytest.skip("dagster-dg-cli is not installed (requirements-dev.lock)")
    out = subprocess.run([str(dg_cli), "check", "defs"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All definitions loaded successfully" in out.stdout + out.stderr


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed (requirements-dev.lock)")
    for args in (["check", "."], ["format", "--check", "."]):
        out = subprocess.run([str(ruff), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"ruff {' '.join(args)}:\n{out.stdout}{out.stderr}"
