"""The README documents every setting, every agentctl command and every HTTP route."""

from __future__ import annotations

import re
from pathlib import Path

from control.cli import build_parser
from daemon.config import ENV_KEYS, Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_config_table():
    missing = [key for key in Settings.model_fields if f"| `{key}` |" not in README]
    assert missing == [], f"undocumented settings: {missing}"


def test_every_environment_variable_is_in_the_readme():
    missing = [name for name in ENV_KEYS if f"`{name}`" not in README]
    assert missing == [], f"undocumented environment variables: {missing}"


def test_every_agentctl_command_is_in_the_readme():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [name for name in commands if not re.search(rf"`agentctl [^`]*\b{re.escape(name)}\b", README)]
    assert missing == [], f"undocumented agentctl commands: {missing}"


def test_every_agentctl_option_is_in_its_commands_readme_row():
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    common = {"-h", "--help", "--socket", "--json"}  # described above the table
    missing = []
    for name, sub in commands.items():
        row = next(line for line in README.splitlines() if re.match(rf"\| `agentctl {name}[ `]", line))
        options = {o for action in sub._actions for o in action.option_strings if o.startswith("--")}
        missing += [f"{name} {option}" for option in sorted(options - common) if option not in row]
    assert missing == [], f"agentctl options missing from their README rows: {missing}"


def test_the_readme_starts_with_the_two_setup_commands():
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"
