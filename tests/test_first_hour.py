"""The mistakes a new user makes in the first hour, each answered by one line and exit 2 (issue 24).

Every case runs the console script's own ``main`` (tests/cli_in_process.py): the usage errors typer would
print as a multi-line box, the options named as the command line spells them, a local path never mistaken
for a Hub id, and third-party chatter held back on success.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_in_process import run_cli
from conftest import fixture_path

import woqconv
from woqconv.errors import BadArgument, as_options

SRC = "ar-g32-sym-auto_gptq"

# (arguments, what the one line must say); "{src}" is the fixture, "{out}" a fresh output directory.
MISTAKES = {
    "unknown target": (["convert", "{src}", "-o", "{out}", "--to", "awqq"], ["'awqq' is not one of", "Did you mean 'awq'?"]),
    "underscore for dash": (["convert", "{src}", "-o", "{out}", "--to", "gptq_v2"], ["Did you mean 'gptq-v2'?"]),
    "option typo": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--ovewrite"], ["No such option: --ovewrite", "--overwrite"]),
    "format typo": (["inspect", "{src}", "--formt", "json"], ["No such option: --formt", "--format"]),
    "bad convention": (["inspect", "{src}", "--zp-convention", "v3"], ["'v3' is not one of 'auto', 'v1', 'v2', 'v1-word'"]),
    "zero workers": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--workers", "0"], ["--workers", "at least 1"]),
    "workers not a number": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--workers", "abc"], ["--workers", "'abc'"]),
    "unknown output format": (["inspect", "{src}", "--format", "yaml"], ["'yaml' is not one of 'text', 'json'"]),
    "value given to a switch": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--requantize", "foo"],
                                ["unexpected extra argument", "--requantize is a switch and takes no value"]),
    "bad requantization method": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--requant-method", "best"], ["'best' is not one of"]),
    "missing output": (["convert", "{src}", "--to", "awq"], ["Missing option '--output'"]),
    "missing source": (["convert"], ["Missing argument"]),
    "unknown command": (["convrt", "{src}"], ["No such command 'convrt'", "Did you mean 'convert'?"]),
    "double-quant for awq": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--double-quant"], ["--to nf4 or --to fp4"]),
    "create-pr without a push": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--create-pr"], ["--create-pr go with --push-to-hub"]),
    "a Gaudi cast not accepted": (["convert", "{fp16}", "-o", "{out}", "--to", "hpu"], ["Pass --allow-bf16 to accept this loss"]),
    "private without a push": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--private"], ["--private goes with --push-to-hub"]),
    "revision for a local path": (["convert", "{src}", "-o", "{out}", "--to", "awq", "--revision", "main"], ["--revision applies to a Hub repo id"]),
    "empty output": (["convert", "{src}", "-o", "", "--to", "awq"], ["--output is empty"]),
    "missing local path": (["inspect", "./fixtures-typo/model"], ["no such file or directory"]),
    "a local-looking Hub id": (["convert", "nosuchdir/nosuchmodel", "-o", "{out}", "--to", "awq"],
                               ["no such local directory, and as a Hub repo id"]),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_mistake_is_one_line_and_exit_2(case, tmp_path):
    args, says = MISTAKES[case]
    argv = [a.format(src=fixture_path(SRC), fp16=fixture_path("ar-g128-asym-auto_gptq"), out=tmp_path / "out") for a in args]
    r = run_cli(*argv, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("woqconv: error: ") and r.stderr.count("\n") == 1, r.stderr
    for phrase in says:
        assert phrase in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_choices_take_any_case(tmp_path):
    r = run_cli("inspect", fixture_path(SRC), "--format", "JSON", "--zp-convention", "AUTO")
    assert r.returncode == 0 and r.stdout.lstrip().startswith("{"), r.stderr
    assert woqconv.convert(fixture_path(SRC), tmp_path / "out", to="AWQ").target == "awq"


def test_help_has_a_short_flag():
    r = run_cli("convert", "-h")
    assert r.returncode == 0 and "--to" in r.stdout


def test_the_api_raises_value_and_type_errors_in_its_own_words(tmp_path):
    with pytest.raises(ValueError, match="unknown target 'awqq'"):
        woqconv.convert(fixture_path(SRC), tmp_path / "a", to="awqq")
    with pytest.raises(ValueError, match="`workers` must be at least 1"):
        woqconv.convert(fixture_path(SRC), tmp_path / "a", to="awq", workers=0)
    with pytest.raises(TypeError, match="workers must be a whole number"):
        woqconv.convert(fixture_path(SRC), tmp_path / "a", to="awq", workers="2")
    with pytest.raises(ValueError, match="zero-point convention must be one of"):
        woqconv.convert(fixture_path(SRC), tmp_path / "a", to="awq", zero_point_convention="v3")
    woqconv.convert(fixture_path(SRC), tmp_path / "b", to="awq")
    with pytest.raises(woqconv.errors.OutputError) as existing:
        woqconv.convert(fixture_path(SRC), tmp_path / "b", to="awq")
    assert "`overwrite=True`" in str(existing.value) and "--overwrite" not in str(existing.value)
    assert not (tmp_path / "a").exists()


def test_api_words_become_options_on_the_command_line():
    aliases = {"out": "--output"}
    assert as_options("pass `overwrite=True` to replace it", aliases) == "pass --overwrite to replace it"
    assert as_options("use `to=nf4` or `to=fp4`", aliases) == "use --to nf4 or --to fp4"
    assert as_options("pass `base_model=PATH_OR_REPO`", aliases) == "pass --base-model PATH_OR_REPO"
    assert as_options("`out` is empty", aliases) == "--output is empty"
    assert as_options("Pass `allow_bf16=True` to accept", aliases) == "Pass --allow-bf16 to accept"
    assert issubclass(BadArgument, ValueError)


def test_overwrite_never_replaces_a_folder_that_holds_no_checkpoint(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("keep me")
    r = run_cli("convert", fixture_path(SRC), "-o", victim, "--to", "awq", "--overwrite")
    assert r.returncode == 2 and "holds no checkpoint" in r.stderr
    assert (victim / "important.txt").read_text() == "keep me" and sorted(p.name for p in victim.iterdir()) == ["important.txt"]


def test_tables_in_a_pipe_keep_every_name_on_one_line(tmp_path):
    # No COLUMNS: a pipe used to get 80 columns, and long layer names were split over two lines.
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-m", "woqconv", "inspect", str(fixture_path(SRC)), "--layers"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    names = [layer.name for layer in woqconv.inspect(fixture_path(SRC)).layers]
    assert names and all(any(name in line for line in r.stdout.splitlines()) for name in names)


@pytest.mark.slow
def test_third_party_chatter_is_held_back_on_success_and_shown_with_verbose(tmp_path):
    woqconv.convert(fixture_path(SRC), tmp_path / "out", to="awq")
    cmd = [sys.executable, "-m", "woqconv", "verify", str(tmp_path / "out"), "--no-run"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "torchao" not in quiet.stderr and "_pytree" not in quiet.stderr, quiet.stderr
    # In a log, a step still running after 2 s gets one plain line: what a person waiting reads.
    steps = quiet.stderr.splitlines()
    assert all(line.startswith("woqconv verify: ") for line in steps), steps
    loud = subprocess.run([*cmd, "--verbose"], capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and "torchao" in loud.stderr  # what was held: torchao's CPU-only warnings
    silent = subprocess.run([*cmd, "-q"], capture_output=True, text=True, timeout=300)
    assert silent.returncode == 0 and silent.stderr == ""


@pytest.mark.slow
def test_verify_shows_its_steps_live_on_a_terminal(tmp_path):
    import pty

    woqconv.convert(fixture_path(SRC), tmp_path / "out", to="awq")
    pid, fd = pty.fork()
    if pid == 0:  # the child: verify on a pseudo-terminal, as a person at a terminal runs it
        os.execv(sys.executable, [sys.executable, "-m", "woqconv", "verify", str(tmp_path / "out"), "--against", str(fixture_path(SRC)),
                                  "--no-run"])
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    # The spinner's line (redrawn in place, with cursor movements) named the step, and the table followed.
    assert "verify: checking the config and the architecture" in text and "\x1b[" in text and "passed" in text
    assert "woqconv verify: " not in text  # not the plain lines a log gets


@pytest.mark.slow
def test_a_log_gets_a_line_for_each_step_that_takes_two_seconds():
    import io
    import time

    from rich.console import Console

    from woqconv.cli.progress import LOG_AFTER, Steps

    log = io.StringIO()
    with Steps(Console(file=log, force_terminal=False, width=1000), "verify") as steps:
        steps("a slow step")
        time.sleep(LOG_AFTER + 0.5)
        steps("a quick step")  # ends at once: no line
    assert log.getvalue().splitlines() == ["woqconv verify: a slow step (from 0.0 s)"]


def test_a_missing_extra_is_one_line_naming_what_to_install(tmp_path, monkeypatch):
    import woqconv.extras

    woqconv.convert(fixture_path(SRC), tmp_path / "awq", to="awq")
    monkeypatch.setattr(woqconv.extras, "installed", lambda module: module != "gptqmodel")
    r = run_cli("verify", tmp_path / "awq", "--against", fixture_path(SRC))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "needs gptqmodel, which is not installed: pip install --no-deps gptqmodel" in r.stderr
    monkeypatch.setattr(woqconv.extras, "installed", lambda module: module != "transformers")
    r = run_cli("convert", fixture_path(SRC), "-o", tmp_path / "gaudi", "--to", "hpu-default", "--allow-bf16")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "the hpu-default target needs transformers, which is not installed: pip install 'woqconv[inc]'" in r.stderr
    assert not (tmp_path / "gaudi").exists()


def test_the_pipeline_names_each_step_as_it_starts(tmp_path):
    from woqconv.pipeline import run

    steps: list[str] = []
    outcome = run(fixture_path(SRC), tmp_path / "out", to="awq", verify=True, run_loaders=False, step=steps.append)
    assert outcome.checked.passed
    assert steps[0] == "converting to awq" and steps[1].startswith("reading the output and its source")
    assert any(s.startswith("comparing the weights of 14 layers") for s in steps)


def test_a_gaudi_output_says_what_a_gaudi_user_needs(tmp_path):
    r = run_cli("convert", fixture_path(SRC), "-o", tmp_path / "hpu", "--to", "hpu", "--allow-bf16")
    assert r.returncode == 0, r.stderr
    # The cache is a file the source never had: added, not "rewrote".
    files = next(line for line in r.stdout.splitlines() if "copied" in line and "dropped" in line)
    rewrote, added = files.split("; added ")
    assert "rewrote config.json" in rewrote and "hpu_model.safetensors" not in rewrote and "hpu_model.safetensors" in added
    r = run_cli("inspect", tmp_path / "hpu")
    row = next(line for line in r.stdout.splitlines() if "Gaudi cache" in line)
    assert "hpu_model.safetensors: hpu layout, 14 layers, scales bfloat16" in row and "repacks no layer" in row
    data = woqconv.inspect(tmp_path / "hpu").gaudi_cache
    assert data == {"file": "hpu_model.safetensors", "layout": "hpu", "scales_dtypes": ["bfloat16"], "layers": 14,
                    "covers_every_layer": True}


def test_allow_bf16_for_a_target_that_casts_nothing_is_said_not_ignored(tmp_path):
    r = run_cli("convert", fixture_path(SRC), "-o", tmp_path / "out", "--to", "awq", "--allow-bf16")
    assert r.returncode == 0 and "warning: --allow-bf16 changes nothing here: awq casts nothing to bf16" in r.stdout, r.stdout
