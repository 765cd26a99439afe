"""The sandbox allowlist (ledger.sandbox), with OS_SANDBOX_ROOT pointing at a tmp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.runtime import sandbox as sb
from schema.errors import SandboxError


def refused(fn: object, path: str) -> SandboxError:
    with pytest.raises(SandboxError) as info:
        fn(path)  # type: ignore[operator]
    return info.value


def test_root_comes_from_the_environment(sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    assert sb.sandbox_root() == sandbox.resolve()
    monkeypatch.delenv("OS_SANDBOX_ROOT")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # unset: the current directory, never the code's folder
    assert sb.sandbox_root() == elsewhere.resolve()
    assert sb.resolve_db(None) == elsewhere.resolve() / "data" / "os_sandbox.db"


def test_allowed_paths_resolve_inside_the_root(sandbox: Path) -> None:
    root = sandbox.resolve()
    assert sb.resolve_scenario("scenarios/L3_PLAN_FLOW_001.json") == (
        root / "scenarios" / "L3_PLAN_FLOW_001.json")
    assert sb.resolve_scenario("scenarios/./L3_PLAN_FLOW_001.json") == (
        root / "scenarios" / "L3_PLAN_FLOW_001.json")
    assert sb.resolve_db(None) == root / "data" / "os_sandbox.db"
    assert sb.resolve_db("data/other.db") == root / "data" / "other.db"
    assert sb.resolve_db("data/runs/x.db") == root / "data" / "runs" / "x.db"
    assert sb.resolve_output_dir("logs/truth") == root / "logs" / "truth"
    assert sb.resolve_output_dir("data/snapshots") == root / "data" / "snapshots"
    assert not (root / "data").exists()  # resolving opens and creates nothing


def test_a_symlink_that_stays_inside_is_fine(sandbox: Path) -> None:
    link = sandbox / "scenarios" / "alias.json"
    link.symlink_to(sandbox / "scenarios" / "L3_PLAN_FLOW_001.json")
    assert sb.resolve_scenario("scenarios/alias.json") == (
        sandbox.resolve() / "scenarios" / "L3_PLAN_FLOW_001.json")


SCENARIO_REFUSALS = [
    "/etc/passwd",
    "/scenarios/L3_PLAN_FLOW_001.json",
    "~/scenarios/L3_PLAN_FLOW_001.json",
    "../scenarios/L3_PLAN_FLOW_001.json",
    "scenarios/../scenarios/L3_PLAN_FLOW_001.json",
    "scenarios/../../etc/passwd",
    "scenarios/sub/../../data/x.json",
    "g/sandbox/os_l0_l1/scenarios/L3_PLAN_FLOW_001.json",
    "g/sandbox/scenarios/L3_PLAN_FLOW_001.json",
    "g/sandbox",
    "sbx/scenarios/L3_PLAN_FLOW_001.json",         # the root folder's own name
    "./sbx/scenarios/L3_PLAN_FLOW_001.json",
    "data/L3_PLAN_FLOW_001.json",                  # not the scenarios area
    "L3_PLAN_FLOW_001.json",
    "scenarios",
    "scenarios/",
    "",
    "scenarios/a\x00b.json",
]


@pytest.mark.parametrize("path", SCENARIO_REFUSALS)
def test_scenario_paths_outside_the_allowlist_are_refused(sandbox: Path, path: str) -> None:
    err = refused(sb.resolve_scenario, path)
    assert err.code == "PATH_NOT_ALLOWED"
    assert err.field == "path"


@pytest.mark.parametrize(("path", "why"), [
    ("g/sandbox/os_l0_l1/scenarios/L3_PLAN_FLOW_001.json", "repo-prefixed"),
    ("sbx/scenarios/L3_PLAN_FLOW_001.json", "repo-prefixed"),
    ("/etc/passwd", "absolute"),
    ("scenarios/../scenarios/L3_PLAN_FLOW_001.json", "'..'"),
    ("data/L3_PLAN_FLOW_001.json", "only files under scenarios/"),
])
def test_the_refusal_says_why(sandbox: Path, path: str, why: str) -> None:
    assert why in refused(sb.resolve_scenario, path).message


def test_an_absolute_path_is_refused_even_when_it_points_inside(sandbox: Path) -> None:
    inside = str(sandbox / "scenarios" / "L3_PLAN_FLOW_001.json")
    assert Path(inside).is_file()
    assert refused(sb.resolve_scenario, inside).code == "PATH_NOT_ALLOWED"
    assert refused(sb.resolve_db, str(sandbox / "data" / "x.db")).code == "PATH_NOT_ALLOWED"


def test_a_symlink_in_scenarios_pointing_outside_is_refused(sandbox: Path,
                                                            tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (sandbox / "scenarios" / "evil.json").symlink_to(outside)
    (sandbox / "scenarios" / "evil_dir").symlink_to(tmp_path, target_is_directory=True)
    (sandbox / "scenarios" / "evil_rel.json").symlink_to(Path("..") / ".." / "outside.json")
    for path in ("scenarios/evil.json", "scenarios/evil_dir/outside.json",
                 "scenarios/evil_rel.json"):
        assert refused(sb.resolve_scenario, path).code == "PATH_NOT_ALLOWED", path


def test_a_symlinked_area_leading_out_is_refused(sandbox: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.db").write_bytes(b"")
    (sandbox / "data").symlink_to(elsewhere, target_is_directory=True)
    assert refused(sb.resolve_db, "data/x.db").code == "PATH_NOT_ALLOWED"
    assert refused(sb.resolve_db, None).code == "PATH_NOT_ALLOWED"


def test_a_symlink_into_another_area_is_refused(sandbox: Path) -> None:
    (sandbox / "data").mkdir()
    (sandbox / "data" / "flow.json").symlink_to(sandbox / "scenarios" / "L3_PLAN_FLOW_001.json")
    assert refused(sb.resolve_db, "data/flow.json").code == "PATH_NOT_ALLOWED"


def test_a_missing_scenario_is_file_not_found(sandbox: Path) -> None:
    assert refused(sb.resolve_scenario, "scenarios/nope.json").code == "FILE_NOT_FOUND"
    (sandbox / "scenarios" / "adir").mkdir()
    assert refused(sb.resolve_scenario, "scenarios/adir").code == "FILE_NOT_FOUND"


@pytest.mark.parametrize("path", [
    "/tmp/x.db", "../data/x.db", "data/../x.db", "x.db", "scenarios/x.db", "logs/x.db",
    "g/sandbox/os_l0_l1/data/os_sandbox.db", "sbx/data/os_sandbox.db", "data", "~/x.db",
])
def test_db_paths_outside_data_are_refused(sandbox: Path, path: str) -> None:
    assert refused(sb.resolve_db, path).code == "PATH_NOT_ALLOWED"


def test_a_db_symlink_pointing_outside_is_refused(sandbox: Path, tmp_path: Path) -> None:
    (sandbox / "data").mkdir()
    (sandbox / "data" / "evil.db").symlink_to(tmp_path / "elsewhere.db")
    assert refused(sb.resolve_db, "data/evil.db").code == "PATH_NOT_ALLOWED"


@pytest.mark.parametrize("path", ["/tmp/out", "../out", "logs/../../out", "scenarios/out",
                                  "out", "g/sandbox/logs/truth", "sbx/logs/truth"])
def test_output_dirs_outside_logs_and_data_are_refused(sandbox: Path, path: str) -> None:
    assert refused(sb.resolve_output_dir, path).code == "PATH_NOT_ALLOWED"


def test_a_root_named_like_an_area_still_works(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    (root / "data").mkdir(parents=True)
    monkeypatch.setenv("OS_SANDBOX_ROOT", str(root))
    assert sb.resolve_db("data/x.db") == root.resolve() / "data" / "x.db"
