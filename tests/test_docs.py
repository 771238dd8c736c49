"""The docs hold: examples run, links resolve, every setting and command is on its page."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import sys
from functools import cache
from pathlib import Path

import asyncpg
import pytest

from service.cli.main import _parser
from service.integrity.keys import load_or_create_private_key
from service.settings import SETTINGS, Settings
from service.store.seals import seal_once

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
COMMANDS = DOCS / "commands.md"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
README_MAX_BYTES = 10 * 1024
PROCESS_TIMEOUT = 120.0  # seconds; a block starts a Python process on a loaded machine
# Pages that work in progress elsewhere adds; a link to one of them may not resolve yet.
PENDING_PAGES: frozenset[str] = frozenset()

FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    """Every Markdown page a reader is sent to."""
    return [
        README,
        *sorted(DOCS.rglob("*.md")),
        ROOT / "bench" / "README.md",
        *sorted((ROOT / "bench" / "results").glob("*.md")),
    ]


def example_pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block and the marker comment on the line before it, if any."""

    path: Path
    line: int
    lang: str
    code: str
    marker: str | None
    output: str | None = None  # the `<!-- output -->` block that follows it

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a page, each with its marker and expected output."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    previous = ""
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.match(previous)
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=fence.group(1),
                code="\n".join(lines[i + 1 : end]) + "\n",
                marker=marker.group(1) if marker else None,
            )
        )
        previous = ""
        i = end + 1
    # An `<!-- output -->` block is what the runnable block before it prints.
    result: list[Block] = []
    for block in found:
        if block.marker == "output":
            assert result, f"{block.name}: an output block with no program before it"
            result[-1] = dataclasses.replace(result[-1], output=block.code)
        else:
            result.append(block)
    return result


def python_examples() -> list[Block]:
    return [
        b
        for page in example_pages()
        for b in blocks(page)
        if b.lang == "python" and not (b.marker or "").startswith("fragment")
    ]


def shell_recipes() -> list[Block]:
    return [
        b
        for page in example_pages()
        for b in blocks(page)
        if b.lang == "sh" and (b.marker or "").startswith("runs")
    ]


# --- README -------------------------------------------------------------------------------------


def test_readme_is_a_front_door_not_a_manual() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move the detail to a page of "
        "docs/ and link it"
    )


def test_readme_opens_with_the_two_commands() -> None:
    first = blocks(README)[0]
    commands = [line.split("#")[0].strip() for line in first.code.splitlines()]
    assert commands == ["make run", "make test"]
    assert README.read_text().index("```") < README.read_text().index("\n## ")


def test_readme_links_the_docs_index() -> None:
    assert "(docs/index.md)" in README.read_text()


# --- examples -----------------------------------------------------------------------------------


def test_the_examples_are_found() -> None:
    names = {b.name.split(":")[0] for b in python_examples()}
    assert {"README.md", "docs/python.md", "docs/sqlalchemy.md"} <= names
    assert any(b.output for b in python_examples())
    assert shell_recipes()


def test_block_parser_reads_markers_and_outputs(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- fragment: a glance -->\n```python\nawait x\n```\n\n```python\nprint(1)\n"
        "```\n\n<!-- output -->\n```text\n1\n```\n\n<!-- runs; needs: redis-cli -->\n```sh\n"
        "echo hi\n```\n"
    )
    found = blocks(page)
    assert [(b.lang, b.marker, b.output) for b in found] == [
        ("python", "fragment: a glance", None),
        ("python", None, "1\n"),
        ("sh", "runs; needs: redis-cli", None),
    ]


@pytest.fixture
async def example_dir(settings: Settings, tmp_path: Path) -> Path:
    """A folder as `make run` leaves it: `.auditq/env` naming this test's servers and queue,
    the seal key, and everything stored so far sealed (as its worker does within seconds)."""
    assert settings.redis_url and settings.database_url
    folder = tmp_path / "app"
    data = folder / ".auditq"
    data.mkdir(parents=True)
    urls = (
        f"AUDITQ_REDIS_URL={settings.redis_url}\n"
        f"AUDITQ_DATABASE_URL={settings.database_url}\n"
        f"AUDITQ_QUEUE={settings.queue}\n"
    )
    (data / "env").write_text(urls)
    key = load_or_create_private_key(data / "seal-key")  # made before "running" is said
    conn = await asyncpg.connect(settings.database_url)
    try:
        while await seal_once(conn, key) is not None:
            pass
    finally:
        await conn.close()
    (data / "producer.env").write_text(
        f"AUDITQ_REDIS_URL={settings.redis_url}\nAUDITQ_QUEUE={settings.queue}\n"
    )
    (folder / "service").symlink_to(ROOT / "service")
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return folder


def example_env(settings: Settings) -> dict[str, str]:
    """The environment of a producer that sourced `.auditq/producer.env`."""
    assert settings.redis_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
    env.update(AUDITQ_REDIS_URL=settings.redis_url, AUDITQ_QUEUE=settings.queue)
    return env


async def run_process(*argv: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


@pytest.mark.parametrize("block", python_examples(), ids=lambda b: b.name)
async def test_python_example_runs(block: Block, settings: Settings, example_dir: Path) -> None:
    script = example_dir / "example.py"
    script.write_text(block.code)
    status, stdout, stderr = await run_process(
        sys.executable, str(script), cwd=example_dir, env=example_env(settings)
    )
    assert status == 0, f"{block.name} failed:\n{stderr}"
    assert stderr == "", f"{block.name} wrote to stderr:\n{stderr}"
    if block.output is not None:
        assert stdout == block.output, f"{block.name} printed something else than the page shows"


@pytest.mark.parametrize("block", shell_recipes(), ids=lambda b: b.name)
async def test_shell_recipe_runs(block: Block, settings: Settings, example_dir: Path) -> None:
    assert block.marker
    needs = re.findall(r"needs:\s*(\S+)", block.marker)
    missing = [tool for tool in needs if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{block.name} needs {', '.join(missing)}, which is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
    status, stdout, stderr = await run_process(
        "bash", "-e", "-c", block.code, cwd=example_dir, env=env
    )
    assert status == 0, f"{block.name} failed:\n{stdout}\n{stderr}"


# --- links --------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return frozenset(slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE))


def test_slug_is_githubs() -> None:
    assert slug("External servers: what a DBA grants") == "external-servers-what-a-dba-grants"
    assert slug("`auditq verify`") == "auditq-verify"
    assert slug("Field diffs: `changes_between`") == "field-diffs-changes_between"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # another site
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            if resolved.name not in PENDING_PAGES:
                broken.append(f"{target} (no such file)")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.relative_to(ROOT)} links to: " + "; ".join(broken)


# --- configuration ------------------------------------------------------------------------------


def settings_variables() -> frozenset[str]:
    """Every AUDITQ_* variable service/settings.py declares."""
    return frozenset(s.name for s in SETTINGS)


def documented_variables() -> frozenset[str]:
    """The variables docs/configuration.md describes: the first cell of its table rows."""
    rows = re.findall(r"^\| `(AUDITQ_[A-Z0-9_]+)`", CONFIGURATION.read_text(), flags=re.MULTILINE)
    return frozenset(rows)


def env_example_variables() -> frozenset[str]:
    text = ENV_EXAMPLE.read_text()
    return frozenset(re.findall(r"^#? ?(AUDITQ_[A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_every_setting_is_in_the_configuration_page() -> None:
    missing = sorted(settings_variables() - documented_variables())
    assert not missing, (
        "read by service/settings.py but with no row in docs/configuration.md: "
        + ", ".join(missing)
    )


def test_the_configuration_page_names_no_setting_that_does_not_exist() -> None:
    unknown = sorted(documented_variables() - settings_variables())
    assert not unknown, (
        "documented in docs/configuration.md but not read by service/settings.py: "
        + ", ".join(unknown)
    )


def test_every_setting_is_in_env_example() -> None:
    missing = sorted(settings_variables() - env_example_variables())
    assert not missing, (
        "read by service/settings.py but missing from deploy/env.example: " + ", ".join(missing)
    )


def test_env_example_names_no_setting_that_does_not_exist() -> None:
    unknown = sorted(env_example_variables() - settings_variables())
    assert not unknown, "in deploy/env.example but not read by service/settings.py: " + ", ".join(
        unknown
    )


def test_each_setting_has_one_row_with_type_default_unit_and_meaning() -> None:
    rows = re.findall(r"^\| `(AUDITQ_[A-Z0-9_]+)` \|(.*)\|$", CONFIGURATION.read_text(), re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a variable has two rows in docs/configuration.md"
    for name, rest in rows:
        cells = [cell.strip() for cell in rest.split("|")]
        assert len(cells) == 4, f"{name}: want type | default | unit | meaning, got {cells}"
        kind, default, _unit, meaning = cells
        assert kind and default and meaning, f"{name}: a type, a default and a meaning"


def test_each_row_states_the_declared_type_default_and_unit() -> None:
    """docs/configuration.md says what service/settings.py declares, setting by setting."""
    rows = dict(re.findall(r"^\| `(AUDITQ_[A-Z0-9_]+)` \|(.*)\|$", CONFIGURATION.read_text(), re.M))
    faults = []
    for setting in SETTINGS:
        kind, default, unit, _ = (cell.strip() for cell in rows[setting.name].split("|"))
        declared = (setting.kind, setting.documented_default, setting.unit)
        if (kind, default, unit) != declared:
            faults.append(f"{setting.name}: the page says {(kind, default, unit)}, not {declared}")
    assert not faults, "; ".join(faults)


def test_documented_defaults_are_the_defaults() -> None:
    """Where the page shows a literal default, setting it changes nothing."""
    text = CONFIGURATION.read_text()
    rows = re.findall(r"^\| `(AUDITQ_[A-Z0-9_]+)` \| [^|]* \| `([^`<]*)` \|", text, re.M)
    assert len(rows) >= 15
    default = Settings.from_env({}, published=False)
    for name, value in rows:
        assert Settings.from_env({name: value}, published=False) == default, f"{name}={value}"


# --- commands -----------------------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command: its words after `auditq`, and its parser."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [(path, parser)]
    found = []
    for group in groups:
        for name, sub in group.choices.items():
            found += commands(sub, (*path, name))
    return found


def command_sections() -> dict[str, str]:
    """The sections of docs/commands.md headed by a command, by command."""
    text = COMMANDS.read_text()
    sections: dict[str, str] = {}
    parts = re.split(r"^#+ (.*)$", text, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        named = re.fullmatch(r"`auditq ([a-z -]+)`", heading.strip())
        if named:
            sections[named.group(1)] = body
    return sections


def test_every_command_and_flag_is_in_the_commands_page() -> None:
    found = commands(_parser())
    assert len(found) >= 15
    sections = command_sections()
    faults = []
    for words, parser in found:
        command = " ".join(words)
        if command not in sections:
            faults.append(f"`auditq {command}` has no section in docs/commands.md")
            continue
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    if not re.search(rf"`{re.escape(option)}\b", sections[command]):
                        faults.append(f"`auditq {command} {option}` is not in its section")
    assert not faults, "; ".join(faults)


def test_the_commands_page_names_no_command_that_does_not_exist() -> None:
    real = {" ".join(words) for words, _ in commands(_parser())}
    unknown = sorted(set(command_sections()) - real)
    assert not unknown, f"docs/commands.md documents commands auditq does not have: {unknown}"
