"""The `skipper` command against a live all-in-one Skipper process: parsing, tables, --json, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from skipper import __version__
from skipper.cli.app import app
from tests.fakeapi import KEY, FakeApi, serving
from tests.liveserver import FEATURES, LiveSkipper
from tests.processes import ROW, free_port

pytestmark = pytest.mark.tensorflow  # the live server trains

ROWS = json.dumps([ROW, ROW])


@pytest.fixture
def skipper(skipper_server: LiveSkipper) -> Iterator[Any]:
    """Run `skipper ARGS...` in-process against the live server (SKIPPER_URL, as a user would set it)."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, list(args), input=input, env={"SKIPPER_URL": skipper_server.url, **(env or {})})

    yield run


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


# --- tables and --json -------------------------------------------------------------------------


def test_workflows_as_a_table_and_as_the_servers_json(skipper: Any, skipper_server: LiveSkipper) -> None:
    table = skipper("workflows")
    assert table.exit_code == 0, table.stderr
    assert "Workflows" in table.stdout and "diabetes" in table.stdout and "regression" in table.stdout
    assert as_json(skipper("--json", "workflows")) == skipper_server.get("/workflows")


def test_global_options_go_before_or_after_the_command(skipper: Any, skipper_server: LiveSkipper) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    expected = skipper_server.get("/models")
    assert as_json(skipper("models", "--json", "--url", skipper_server.url, env={"SKIPPER_URL": nowhere})) == expected
    assert as_json(skipper("--url", skipper_server.url, "models", "--json", env={"SKIPPER_URL": nowhere})) == expected
    # After the command wins over before it, which wins over the environment.
    assert as_json(skipper("--url", nowhere, "models", "--url", skipper_server.url, "--json")) == expected
    assert skipper("--url", skipper_server.url, "models", "--url", nowhere).exit_code == 3
    for args in (["--version"], ["tasks", "--version"], ["models", "--version"]):
        result = skipper(*args)
        assert result.exit_code == 0 and result.stdout.strip() == f"skipper {__version__}"


def test_the_api_key_is_sent_as_a_bearer_token_from_the_option_or_the_environment() -> None:
    api = FakeApi()
    runner = CliRunner()
    with serving(api) as url:
        refused = runner.invoke(app, ["workflows", "--url", url], env={"SKIPPER_API_KEY": None})
        assert refused.exit_code == 1 and "missing or unknown API key" in refused.stderr and "401" in refused.stderr
        assert runner.invoke(app, ["workflows", "--url", url, "--api-key", KEY]).exit_code == 0
        assert runner.invoke(app, ["--url", url, "workflows"], env={"SKIPPER_API_KEY": KEY}).exit_code == 0
    assert [auth for _, _, auth in api.seen] == [None, f"Bearer {KEY}", f"Bearer {KEY}"]


def test_models_and_one_model_with_its_versions(skipper: Any, skipper_server: LiveSkipper) -> None:
    listing = skipper("models")
    assert listing.exit_code == 0 and "diabetes" in listing.stdout
    versions = skipper("models", "diabetes")
    assert versions.exit_code == 0 and f"v{skipper_server.version}" in versions.stdout and "rmse" in versions.stdout
    assert as_json(skipper("models", "diabetes", "--json")) == skipper_server.get("/models/diabetes")


def test_tasks_filtered_and_one_task(skipper: Any, skipper_server: LiveSkipper) -> None:
    table = skipper("tasks", "--workflow", "diabetes", "--status", "succeeded")
    assert table.exit_code == 0 and skipper_server.task_id in table.stdout and "succeeded" in table.stdout
    body = as_json(skipper("tasks", "-w", "diabetes", "-s", "succeeded", "-n", "1", "--json"))
    assert body["limit"] == 1 and len(body["tasks"]) == 1 and body["tasks"][0]["status"] == "succeeded"
    assert skipper("tasks", "--status", "sleeping").exit_code == 2  # not a status: a usage error
    one = skipper("task", skipper_server.task_id)
    assert one.exit_code == 0 and "rmse" in one.stdout and f"diabetes v{skipper_server.version}" in one.stdout
    assert as_json(skipper("task", skipper_server.task_id, "--json")) == skipper_server.get(f"/tasks/{skipper_server.task_id}")
    followed = skipper("task", skipper_server.task_id, "--follow")
    assert followed.exit_code == 0 and f"version {skipper_server.version}" in followed.stdout


# --- predict -------------------------------------------------------------------------------------


def test_predict_rows_given_as_json_objects_csv_or_stdin(skipper: Any, skipper_server: LiveSkipper, tmp_path: Path) -> None:
    table = skipper("predict", "diabetes", ROWS)
    assert table.exit_code == 0, table.stderr
    assert f"diabetes v{skipper_server.version}" in table.stdout
    expected = as_json(skipper("predict", "diabetes", ROWS, "--json"))
    assert expected["model_version"] == skipper_server.version and len(expected["predictions"]) == 2
    by_name = json.dumps([dict(zip(FEATURES, ROW, strict=True))] * 2)
    assert as_json(skipper("predict", "diabetes", by_name, "--json"))["predictions"] == expected["predictions"]
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text(",".join(FEATURES) + "\n" + "\n".join(",".join(map(str, ROW)) for _ in range(2)) + "\n")
    assert as_json(skipper("predict", "diabetes", "-f", str(csv_file), "--json"))["predictions"] == expected["predictions"]
    assert as_json(skipper("predict", "diabetes", "-f", "-", "--json", input=ROWS))["predictions"] == expected["predictions"]
    assert as_json(skipper("predict", "diabetes", "-f", "-", "--json", input=csv_file.read_text())) == expected
    version = as_json(skipper("predict", "diabetes", ROWS, "--version", str(skipper_server.version), "--json"))
    assert version == expected


@pytest.mark.parametrize(("args", "code", "says"), [
    (["predict", "diabetes"], 2, "ROWS"),  # neither rows nor a file
    (["predict", "diabetes", "[[1]]", "-f", "rows.csv"], 2, "not both"),
    (["predict", "diabetes", "[[1, 2"], 2, "not valid JSON"),
    (["predict", "diabetes", "[[1, 2]]"], 1, "instances[0] has 2 values, expected 10"),
    (["predict", "diabetes", json.dumps([ROW]), "--version", "999"], 1, "v999 is not serving"),
    (["predict", "no-such-model", json.dumps([ROW])], 1, "unknown model"),
    (["predict", "wine", json.dumps([[0.0] * 13])], 1, "no trained version yet"),
])
def test_predict_errors_say_what_is_wrong_with_the_exit_code(skipper: Any, args: list[str], code: int, says: str) -> None:
    result = skipper(*args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert says in result.stderr


# --- train, cancel, deploy, artifact --------------------------------------------------------------


def test_train_parses_each_param_as_yaml_and_cancel_stops_the_task(skipper: Any) -> None:
    body = as_json(skipper("train", "diabetes", "-p", "epochs=400", "-p", "hidden_units=[8, 4]", "-p",
                           "early_stopping.patience=2", "-p", "learning_rate=5e-3", "--json"))
    assert body["params"]["epochs"] == 400 and body["params"]["hidden_units"] == [8, 4]
    assert body["params"]["early_stopping"]["patience"] == 2 and body["params"]["learning_rate"] == 0.005
    cancelled = skipper("cancel", body["task_id"])
    assert cancelled.exit_code == 0 and f"cancelled task {body['task_id']}" in cancelled.stdout
    again = skipper("cancel", body["task_id"])
    assert again.exit_code == 1 and "already cancelled" in again.stderr


@pytest.mark.parametrize(("args", "code", "says"), [
    (["train", "diabetes", "-p", "epochs"], 2, "not KEY=VALUE"),
    (["train", "diabetes", "-p", "epochs=0"], 1, "params.epochs"),
    (["train", "no-such-workflow"], 1, "unknown workflow"),
    (["train"], 2, "Missing argument"),
    (["cancel", "no-such-task"], 1, "not found"),
    (["deploy", "diabetes", "999"], 1, "has no version 999"),
    (["deploy", "diabetes", "one"], 2, "Invalid value for 'version'"),
])
def test_train_and_friends_errors(skipper: Any, args: list[str], code: int, says: str) -> None:
    result = skipper(*args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert says in result.stderr


def test_an_error_with_json_prints_the_servers_error_body(skipper: Any) -> None:
    result = skipper("train", "diabetes", "-p", "epochs=0", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "validation_failed" and error["details"]["field"] == "params.epochs"


def test_train_follow_without_a_terminal_prints_a_line_per_epoch_then_the_version(skipper: Any) -> None:
    result = skipper("train", "diabetes", "-p", "epochs=2", "-p", "hidden_units=[8]", "--follow")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"] and all("loss" in line for line in epochs)
    assert "rmse" in result.stdout and lines[-1].startswith("version ")
    version = int(lines[-1].split()[1])
    # It returned once the version serves: a predict right after gets it.
    assert as_json(skipper("predict", "diabetes", ROWS, "--json"))["model_version"] == version


def test_deploy_and_download_an_artifact(skipper: Any, skipper_server: LiveSkipper, tmp_path: Path) -> None:
    deployed = skipper("deploy", "diabetes", str(skipper_server.version))
    assert deployed.exit_code == 0 and f"diabetes v{skipper_server.version} is production" in deployed.stdout
    target = tmp_path / "v.tar.gz"
    saved = as_json(skipper("artifact", "diabetes", str(skipper_server.version), "-o", str(target), "--json"))
    sha = next(v["sha256"] for v in skipper_server.get("/models/diabetes")["versions"] if v["version"] == skipper_server.version)
    assert saved["sha256"] == sha and target.stat().st_size == saved["bytes"]
    missing = skipper("artifact", "diabetes", "999", "-o", str(tmp_path / "nope.tar.gz"))
    assert missing.exit_code == 1 and not (tmp_path / "nope.tar.gz").exists()


def test_an_unreachable_server_exits_3() -> None:
    result = CliRunner().invoke(app, ["workflows", "--url", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 3 and "cannot reach Skipper" in result.stderr


# --- the command itself ------------------------------------------------------------------------------


def test_help_is_quick_to_load_and_lists_the_commands() -> None:
    # `skipper --help` loads neither TensorFlow nor the HTTP stack nor the server.
    code = ("import sys\nfrom skipper.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'numpy', 'httpx', 'starlette', "
            "'sqlalchemy', 'uvicorn', 'pydantic'})\nassert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("serve", "workflows", "train", "tasks", "task", "cancel", "predict", "models", "deploy", "artifact", "keys",
                 "--install-completion"):
        assert name in out
    script = Path(sys.executable).with_name("skipper")
    assert subprocess.run([str(script), "train", "--help"], capture_output=True, text=True, check=True).stdout.count("--follow")


def test_keys_new_prints_a_key_that_the_keys_file_then_accepts(tmp_path: Path) -> None:
    # Given no server at all (keys are made locally)
    path = tmp_path / "keys.yaml"
    # When a key is made with the skipper command
    result = CliRunner().invoke(app, ["keys", "new", "--name", "ci-bot", "--scopes", "train,read", "--file", str(path)])
    # Then it is printed once, and the file holds only its hash with the scopes
    assert result.exit_code == 0, result.output
    key = next(line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("key: "))
    from skipper.core.apikeys import hash_key, read_entries

    assert key.startswith("sk_") and key not in path.read_text()
    assert read_entries(path) == [{"name": "ci-bot", "sha256": hash_key(key), "scopes": ["train", "read"]}]
    # And an unknown scope is a usage error
    bad = CliRunner().invoke(app, ["keys", "new", "--name", "x", "--scopes", "root"])
    assert bad.exit_code == 2 and "scopes" in bad.stderr
