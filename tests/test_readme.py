"""The README's commands are real: every `rlft train` line composes and validates, and the make
targets it names exist and run what it says."""

import re
import shlex

import pytest
from conftest import REPO

from rlft import config


def readme_train_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    commands = []
    for line in "\n".join(blocks).splitlines():
        line = line.split("#")[0].strip()
        if "rlft train" in line:
            args = shlex.split(line.split("rlft train", 1)[1])
            commands.append([a for a in args if not a.startswith("--")])
    return commands


@pytest.mark.parametrize("overrides", readme_train_commands(), ids=" ".join)
def test_readme_train_commands_compose_and_validate(overrides):
    config.validate(config.compose(overrides))


def test_readme_has_the_first_train_command():
    assert ["stage=sft", "model=tiny", "data=countdown", "run_dir=runs/sft", "max_steps=4"] in readme_train_commands()


def test_make_targets_match_the_readme():
    makefile = (REPO / "Makefile").read_text()
    readme = (REPO / "README.md").read_text()
    for target in re.findall(r"^make ([\w-]+)", readme, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "rlft pipeline experiment=tiny_math" in makefile and "rlft pipeline experiment=tiny_math" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
