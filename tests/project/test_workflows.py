"""Offline checks of the GitHub Actions workflows: schema, inline scripts, the delivery rules."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from packaging.version import Version

from tests import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
REUSABLE_PULUMI = "./.github/workflows/pulumi.yml"
STACKS = ("dev", "prod")
SHA_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)
# Labels of GitHub-hosted runners (https://docs.github.com/en/actions/using-github-hosted-runners).
GITHUB_HOSTED = re.compile(r"^(ubuntu|windows|macos)-[\w.-]+$")
PROD_RUNNER = "${{ vars.OWNCR_PROD_RUNNER || 'self-hosted' }}"
BACKEND_SECRETS = (
    "PULUMI_ACCESS_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "PULUMI_CONFIG_PASSPHRASE",
)


def load(path: Path) -> dict[str, Any]:
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as the boolean True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def workflows() -> dict[str, dict[str, Any]]:
    return {path.name: load(path) for path in workflow_files()}


def steps() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, workflow in workflows().items():
        for job_id, job in workflow["jobs"].items():
            for step in job.get("steps", []):
                yield name, job_id, step


def triggered() -> dict[str, dict[str, Any]]:
    """Workflows that run on events of their own (not only when another workflow calls them)."""
    return {name: wf for name, wf in workflows().items() if set(wf["on"]) - {"workflow_call"}}


def pulumi_calls() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, workflow in triggered().items():
        for job_id, job in workflow["jobs"].items():
            if job.get("uses") == REUSABLE_PULUMI:
                yield name, job_id, job


def call_stacks(job: dict[str, Any]) -> list[str]:
    stack = job["with"]["stack"]
    return list(job["strategy"]["matrix"]["stack"]) if stack == "${{ matrix.stack }}" else [stack]


def call_runners(job: dict[str, Any]) -> dict[str, str]:
    """The runs-on label each stack of a call gets, resolving `${{ matrix.runner }}` through `include`."""
    runner = job["with"]["runner"]
    if runner != "${{ matrix.runner }}":
        return {stack: runner for stack in call_stacks(job)}
    return {entry["stack"]: entry["runner"] for entry in job["strategy"]["matrix"]["include"]}


def hosted_labels(runner: str) -> set[str]:
    """GitHub-hosted labels a runs-on value can evaluate to (the value itself or a quoted literal in it)."""
    literals = re.findall(r"'([^']*)'", runner) if EXPRESSION.fullmatch(runner) else [runner]
    return {label for label in literals if GITHUB_HOSTED.match(label)}


def test_expected_workflows_exist() -> None:
    assert {p.name for p in workflow_files()} == {
        "test.yml",
        "pulumi.yml",
        "pull-request.yml",
        "deploy.yml",
        "drift.yml",
        "maintenance.yml",
    }


# --- schema ------------------------------------------------------------------------------------------


def check_jsonschema(*paths: Path) -> subprocess.CompletedProcess[str]:
    # The vendored schema ships inside check-jsonschema: no network.
    cmd = [
        sys.executable,
        "-m",
        "check_jsonschema",
        "--builtin-schema",
        "vendor.github-workflows",
        *map(str, paths),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_workflows_match_the_vendored_github_schema() -> None:
    result = check_jsonschema(*workflow_files())
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = (
        (WORKFLOWS / "drift.yml")
        .read_text(encoding="utf-8")
        .replace("cancel-in-progress: false", "cancel: no")
    )
    (tmp_path / "drift.yml").write_text(broken, encoding="utf-8")
    result = check_jsonschema(tmp_path / "drift.yml")
    assert result.returncode != 0
    assert "$.jobs.drift.concurrency:" in result.stdout, result.stdout  # rejected for what was broken


# --- shellcheck --------------------------------------------------------------------------------------


def shell_script(run: str) -> str:
    """An inline `run:` as a bash file; `${{ }}` expressions become an environment variable reference."""
    return "#!/usr/bin/env bash\n" + EXPRESSION.sub("${GITHUB_EXPRESSION}", run)


def shellcheck(script: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.sh"
    path.write_text(script, encoding="utf-8")
    return subprocess.run(["shellcheck", str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_inline_scripts_pass_shellcheck(tmp_path: Path) -> None:
    scripts = [(f"{wf}-{job}-{i}", step["run"]) for i, (wf, job, step) in enumerate(steps()) if "run" in step]
    assert len(scripts) >= 3
    for name, run in scripts:
        result = shellcheck(shell_script(run), tmp_path, name)
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


def test_shellcheck_catches_an_unquoted_expression(tmp_path: Path) -> None:
    result = shellcheck(shell_script("cd ${{ inputs.dir }}\nrm -rf $dir/*"), tmp_path, "bad")
    assert result.returncode != 0 and "SC2086" in result.stdout


# --- least privilege, fork guard -----------------------------------------------------------------------


def test_triggered_workflows_grant_nothing_by_default_and_each_job_only_what_it_needs() -> None:
    for name, workflow in triggered().items():
        assert workflow["permissions"] == {}, name
        for job_id, job in workflow["jobs"].items():
            permissions = job["permissions"]
            comments = job.get("with", {}).get("comment-on-pr") is True
            expected = {"contents": "read", "pull-requests": "write"} if comments else {"contents": "read"}
            assert permissions == expected, f"{name}:{job_id}"


def test_reusable_workflows_never_widen_permissions() -> None:
    for name in ("pulumi.yml", "test.yml"):
        workflow = workflows()[name]
        assert set(workflow["on"]) == {"workflow_call"}
        assert workflow.get("permissions", {"contents": "read"}) == {"contents": "read"}
        assert all("permissions" not in job for job in workflow["jobs"].values())


def test_previews_run_only_for_same_repository_pull_requests() -> None:
    workflow = workflows()["pull-request.yml"]
    assert set(workflow["on"]) == {"pull_request"}
    assert not any("pull_request_target" in wf["on"] for wf in workflows().values())
    preview = workflow["jobs"]["preview"]
    assert preview["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert preview["uses"] == REUSABLE_PULUMI and preview["needs"] == "test"
    assert preview["with"]["command"] == "preview" and preview["with"]["comment-on-pr"] is True
    assert call_stacks(preview) == list(STACKS)


# --- deployments -------------------------------------------------------------------------------------


def test_every_pulumi_operation_is_serialised_per_stack_and_never_cancelled() -> None:
    calls = list(pulumi_calls())
    assert len(calls) == 4
    for name, job_id, job in calls:
        concurrency = job["concurrency"]
        assert concurrency["cancel-in-progress"] is False, f"{name}:{job_id}"
        assert "${{ matrix.stack }}" in concurrency["group"] or job["with"]["stack"] in concurrency["group"]


def test_merge_deploys_dev_and_prod_needs_a_dispatch_through_the_prod_environment() -> None:
    workflow = workflows()["deploy.yml"]
    assert set(workflow["on"]) == {"push", "workflow_dispatch"}
    assert workflow["on"]["push"] == {"branches": ["main"]}
    ups = {job["with"]["stack"]: job for _, _, job in pulumi_calls() if job["with"]["command"] == "up"}
    assert set(ups) == set(STACKS)
    assert ups["dev"]["if"] == "github.event_name == 'push'"
    assert ups["prod"]["if"] == "github.event_name == 'workflow_dispatch' && github.ref == 'refs/heads/main'"
    assert ups["prod"]["with"]["environment"] == "prod"
    assert all(job["needs"] == "test" for job in ups.values())
    reusable = workflows()["pulumi.yml"]["jobs"]["pulumi"]
    assert reusable["environment"] == "${{ inputs.environment }}"


def test_drift_check_fails_on_any_change_of_each_stack() -> None:
    workflow = workflows()["drift.yml"]
    assert workflow["on"]["schedule"]
    [job] = workflow["jobs"].values()
    assert job["with"] == {
        "command": "preview",
        "stack": "${{ matrix.stack }}",
        "runner": "${{ matrix.runner }}",
        "runner-firewall": "${{ matrix.runner-firewall }}",
        "expect-no-changes": True,
        "refresh": True,
    }
    assert call_stacks(job) == list(STACKS)


def test_prod_runs_on_the_self_hosted_runner_and_dev_on_a_github_hosted_one() -> None:
    # prod's adminCidrs list fixed addresses only: a GitHub-hosted runner (unknown IP) cannot reach 2376.
    reusable = workflows()["pulumi.yml"]
    assert reusable["jobs"]["pulumi"]["runs-on"] == "${{ inputs.runner }}"
    runner_input = reusable["on"]["workflow_call"]["inputs"]["runner"]
    assert runner_input["required"] is True and "default" not in runner_input
    calls = list(pulumi_calls())
    assert len(calls) == 4
    for name, job_id, job in calls:
        where, runners = f"{name}:{job_id}", call_runners(job)
        assert set(runners) == set(call_stacks(job)), where
        if "prod" in runners:
            assert runners["prod"] == PROD_RUNNER and not hosted_labels(runners["prod"]), where
        if "dev" in runners:
            assert hosted_labels(runners["dev"]) == {runners["dev"]} == {"ubuntu-24.04"}, where
    # Each stack is covered by its PR preview, its deploy and its drift check.
    assert sum("prod" in call_runners(job) for _, _, job in calls) == 3
    assert sum("dev" in call_runners(job) for _, _, job in calls) == 3
    prod_config = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text(encoding="utf-8"))["config"]
    assert "0.0.0.0/0" not in prod_config["owncr:adminCidrs"]
    assert not prod_config.get("owncr:allowWorldAdminAccess", False)


def test_hosted_label_check_catches_a_hosted_prod_runner() -> None:
    assert hosted_labels("ubuntu-24.04") == {"ubuntu-24.04"}
    assert hosted_labels("${{ vars.OWNCR_PROD_RUNNER || 'ubuntu-latest' }}") == {"ubuntu-latest"}
    assert hosted_labels(PROD_RUNNER) == set()
    assert hosted_labels("owncr-prod") == set()


def test_every_stack_has_its_stack_file() -> None:
    assert all((ROOT / f"Pulumi.{stack}.yaml").is_file() for stack in STACKS)


# --- pinning, timeouts, CLI version, policy pack -------------------------------------------------------


def test_third_party_actions_are_pinned_by_commit_sha() -> None:
    uses = [step["uses"] for _, _, step in steps() if "uses" in step]
    assert uses
    assert all(SHA_PINNED.match(u) for u in uses), uses


def test_only_the_pulumi_step_sees_secrets() -> None:
    """...and the runner-firewall steps, which see the DigitalOcean token alone."""
    for name, workflow in workflows().items():
        for job_id, job in workflow["jobs"].items():
            assert "secrets." not in str(job.get("env", {})), f"{name}:{job_id}"
            for step in job.get("steps", []):
                if "secrets." not in str(step):
                    continue
                if "ci_admin_firewall.py" in step.get("run", ""):
                    assert step["env"] == {"DIGITALOCEAN_TOKEN": "${{ secrets.DIGITALOCEAN_TOKEN }}"}, step
                elif "components.cli.maintenance" in step.get("run", ""):
                    # Reads the stack output: the state backend's credentials, no cloud token.
                    secrets = {k for k, v in step["env"].items() if "secrets." in v}
                    assert secrets == set(BACKEND_SECRETS), step
                else:
                    assert "command" in step["with"] and set(step["env"]) >= {"DIGITALOCEAN_TOKEN"}, step


def test_checkouts_leave_no_token_behind() -> None:
    checkouts = [step for _, _, step in steps() if step.get("uses", "").startswith("actions/checkout@")]
    assert len(checkouts) == 3
    assert all(step["with"]["persist-credentials"] is False for step in checkouts)


def test_every_job_that_runs_steps_has_a_timeout() -> None:
    for name, workflow in workflows().items():
        for job_id, job in workflow["jobs"].items():
            if "steps" in job:
                assert 0 < job["timeout-minutes"] <= 60, f"{name}:{job_id}"


def test_the_cli_version_comes_from_the_one_pinned_file() -> None:
    pulumi_steps = [step for _, _, step in steps() if step.get("uses", "").startswith("pulumi/actions@")]
    assert len(pulumi_steps) == 3
    for step in pulumi_steps:
        assert step["with"]["pulumi-version-file"] == ".pulumi-version"
        assert "pulumi-version" not in step["with"]
    pinned = (ROOT / ".pulumi-version").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"3\.\d+\.\d+", pinned)
    # The engine must be at least as new as the SDK the program and its tests run against.
    assert Version(pinned) >= Version(metadata.version("pulumi"))


def test_every_pulumi_command_runs_the_policy_pack() -> None:
    [run_step] = [step for _, _, step in steps() if "command" in step.get("with", {})]
    assert run_step["with"]["policyPacks"] == "policy"
    pack = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text(encoding="utf-8"))
    venv = pack["runtime"]["options"]["virtualenv"]
    install = next(step["run"] for _, _, step in steps() if "policy/requirements.txt" in step.get("run", ""))
    assert f"python -m venv policy/{venv}\n" in install
    assert f"policy/{venv}/bin/pip install" in install


def test_the_ci_page_names_every_secret_and_variable_the_workflows_read() -> None:
    section = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    text = "\n".join(path.read_text(encoding="utf-8") for path in workflow_files())
    names = {
        name for expr in EXPRESSION.findall(text) for name in re.findall(r"\b(?:secrets|vars)\.(\w+)", expr)
    }
    assert {
        "PULUMI_ACCESS_TOKEN",
        "DIGITALOCEAN_TOKEN",
        "CLOUDFLARE_API_TOKEN",
        "PULUMI_BACKEND_URL",
        "OWNCR_PROD_RUNNER",
    } <= names
    assert {name for name in names if f"`{name}`" not in section} == set()


def firewall_per_stack(job: dict[str, Any]) -> dict[str, object]:
    """`runner-firewall` each stack of a call gets, resolving `${{ matrix.runner-firewall }}`."""
    value = job["with"].get("runner-firewall", False)
    if value != "${{ matrix.runner-firewall }}":
        return {stack: value for stack in call_stacks(job)}
    return {entry["stack"]: entry["runner-firewall"] for entry in job["strategy"]["matrix"]["include"]}


def test_dev_jobs_open_the_admin_ports_to_their_runner_only_and_always_close_them() -> None:
    """dev deploys from GitHub-hosted runners without opening SSH and the Docker API to the world: every
    dev job opens them to its own IP (scripts/ci_admin_firewall.py) and closes them however it ends."""
    for where, _, job in pulumi_calls():
        for stack, opened in firewall_per_stack(job).items():
            assert opened is (stack == "dev"), (where, stack, opened)
    steps = workflows()["pulumi.yml"]["jobs"]["pulumi"]["steps"]
    names = [s.get("name", "") for s in steps]
    opened = next(i for i, s in enumerate(steps) if "ci_admin_firewall.py open" in s.get("run", ""))
    closed = next(i for i, s in enumerate(steps) if "ci_admin_firewall.py close" in s.get("run", ""))
    operation = next(i for i, n in enumerate(names) if n.startswith("pulumi ${{ inputs.command }}"))
    assert opened < operation < closed == len(steps) - 1
    assert steps[opened]["if"] == "inputs.runner-firewall"
    assert steps[closed]["if"] == "always() && inputs.runner-firewall"
    dev = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    assert "0.0.0.0/0" not in dev["owncr:adminCidrs"] and not dev.get("owncr:allowWorldAdminAccess", False)


# --- maintenance ---------------------------------------------------------------------------------------


def test_maintenance_runs_weekly_on_every_stack_and_by_hand_as_a_dry_run_by_default() -> None:
    workflow = workflows()["maintenance.yml"]
    [cron] = [entry["cron"] for entry in workflow["on"]["schedule"]]
    minute, hour, day_of_month, month, day_of_week = cron.split()
    assert (day_of_month, month) == ("*", "*") and day_of_week.isdigit(), cron  # once a week
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["stack"]["options"] == list(STACKS)
    assert inputs["dry-run"]["type"] == "boolean" and inputs["dry-run"]["default"] is True
    [job] = workflow["jobs"].values()
    matrix = job["strategy"]["matrix"]["stack"]
    assert '\'["dev", "prod"]\'' in matrix and "inputs.stack" in matrix
    # Never beside a deployment of the same stack: deploy.yml's group, never cancelled.
    deploy_groups = {
        job["concurrency"]["group"]
        for job in workflows()["deploy.yml"]["jobs"].values()
        if "concurrency" in job
    }
    assert job["concurrency"] == {"group": "deploy-${{ matrix.stack }}", "cancel-in-progress": False}
    assert deploy_groups == {f"deploy-{stack}" for stack in STACKS}
    # prod from its self-hosted runner only; dev from a hosted one that opens the ports to itself.
    assert PROD_RUNNER.removeprefix("${{ ").removesuffix(" }}") in job["runs-on"]
    assert hosted_labels(job["runs-on"]) == {"ubuntu-24.04"}
    steps = job["steps"]
    run = next(i for i, s in enumerate(steps) if "components.cli.maintenance" in s.get("run", ""))
    assert (
        '--stack "${{ matrix.stack }}"' in steps[run]["run"] and "${DRY_RUN:+--dry-run}" in steps[run]["run"]
    )
    dry = steps[run]["env"]["DRY_RUN"]
    assert "github.event_name == 'workflow_dispatch' && inputs.dry-run" in dry  # the schedule runs for real
    opened = next(i for i, s in enumerate(steps) if "ci_admin_firewall.py open" in s.get("run", ""))
    closed = next(i for i, s in enumerate(steps) if "ci_admin_firewall.py close" in s.get("run", ""))
    assert opened < run < closed == len(steps) - 1
    assert steps[opened]["if"] == "matrix.stack == 'dev'"
    assert steps[closed]["if"] == "always() && matrix.stack == 'dev'"
