"""The documentation in docs/ stays true to the code it describes.

Each test compares one kind of fact in the docs with its source of truth:
the `serve` flags and environment variables (trioraft.config), the other
command-line options and subcommands (trioraft.cli), the HTTP routes (the app's
url_map), the error codes (api.py), the size and dedup limits (trioraft.kv),
and the links between the pages. None of them needs a running node.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

import trioraft.api
from trioraft import kv
from trioraft.api import MAX_BODY_BYTES, create_app
from trioraft.cli import ENDPOINTS_ENV, build_parser
from trioraft.config import SERVE_ENV_VARS, NodeConfig, build_serve_parser
from trioraft.node import RaftNode
from trioraft.storage import MemoryStorage

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
API = DOCS / "api.md"

# Pages of docs/ that this test file is responsible for (others own the rest).
OUR_PAGES = (
    "README.md",
    "quickstart.md",
    "configuration.md",
    "api.md",
    "guarantees.md",
    "architecture.md",
    "operations.md",
    "exercises.md",
)
# Pages other people are writing; a link to one of them may precede the page.
PAGES_IN_PROGRESS = frozenset({"verification.md"})

FLAG_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next `## ` heading)."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def table_first_cells(text: str) -> list[str]:
    """The first cell of every Markdown table row of `text` (header rows excluded)."""
    cells = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            cells.append(line.split("|")[1].strip())
    return cells[1:] if cells else cells


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {
        opt
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("trioraft has no subcommands?")


# ---------------------------------------------------------------- configuration.md


def test_every_serve_flag_is_documented_in_the_serve_table() -> None:
    table = section(read(CONFIGURATION), "`trioraft serve`")
    documented = {flag for cell in table_first_cells(table) for flag in FLAG_RE.findall(cell)}
    assert option_strings(build_serve_parser()) <= documented


def test_the_serve_table_documents_no_flag_that_serve_lacks() -> None:
    table = section(read(CONFIGURATION), "`trioraft serve`")
    documented = {flag for cell in table_first_cells(table) for flag in FLAG_RE.findall(cell)}
    assert documented <= option_strings(build_serve_parser())


def test_every_serve_environment_variable_is_documented() -> None:
    table = section(read(CONFIGURATION), "`trioraft serve`")
    missing = [name for name in SERVE_ENV_VARS if f"`{name}" not in table]
    assert missing == []


def test_the_serve_table_names_no_environment_variable_that_serve_ignores() -> None:
    table = section(read(CONFIGURATION), "`trioraft serve`")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    env_cells = " ".join(line.split("|")[2] for line in rows[1:] if line.count("|") > 3)
    named = set(re.findall(r"`([A-Z][A-Z_]+)", env_cells))
    assert named <= set(SERVE_ENV_VARS)


def test_every_option_of_every_other_command_is_documented() -> None:
    text = read(CONFIGURATION)
    parser = build_parser()
    wanted = option_strings(parser) - {"--version"}
    for name, sub in subparsers(parser).items():
        if name in ("serve", "bench"):  # serve: above; bench: docs/benchmarks.md
            continue
        wanted |= option_strings(sub)
    missing = sorted(flag for flag in wanted if flag not in FLAG_RE.findall(text))
    assert missing == []


def test_every_flag_named_in_configuration_md_exists() -> None:
    parser = build_parser()
    real = option_strings(parser) | {"--version", "--help"}
    for sub in subparsers(parser).values():
        real |= option_strings(sub)
    unknown = sorted(set(FLAG_RE.findall(read(CONFIGURATION))) - real)
    assert unknown == []


def test_every_subcommand_is_documented_and_every_documented_one_exists() -> None:
    real = set(subparsers(build_parser()))
    text = read(CONFIGURATION)
    assert {name for name in real if f"trioraft {name}" not in text} == set()
    named: set[str] = set()
    for page in OUR_PAGES:
        in_code = False
        for line in read(DOCS / page).splitlines():
            if line.lstrip().startswith("```"):
                in_code = not in_code
            elif in_code and (m := re.match(r"\s*(?:\$ )?trioraft ([a-z]+)\b", line)):
                named.add(m.group(1))
    assert named <= real


def test_the_client_endpoints_variable_is_documented() -> None:
    assert ENDPOINTS_ENV in read(CONFIGURATION)


# ---------------------------------------------------------------- api.md


def app_routes() -> set[tuple[str, str]]:
    """(METHOD, /path) of every route the app serves, `<path:key>` written `{key}`."""
    config = NodeConfig(
        id="node1",
        listen_host="127.0.0.1",
        listen_port=0,
        advertise_url="http://127.0.0.1:1",
        peers={},
        data_dir=Path("unused"),
        election_timeout_ms=(150, 300),
        heartbeat_ms=50,
        cluster_token=None,
    )
    app = create_app(RaftNode(config, MemoryStorage(), {}))
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/static"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes.add((method, path))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    """Routes api.md gives a heading of their own: ### `METHOD /path`."""
    found = re.findall(r"^#{2,4} `([A-Z]+) (/[^`?\s]*)", read(API), flags=re.MULTILINE)
    return set(found)


def test_every_route_of_the_app_has_a_section_in_api_md() -> None:
    missing = sorted(app_routes() - documented_routes())
    assert missing == []


def test_api_md_documents_no_route_the_app_lacks() -> None:
    extra = sorted(documented_routes() - app_routes())
    assert extra == []


def error_codes_in_api_py() -> set[str]:
    """Every machine code api.py can put in an error body."""
    tree = ast.parse(Path(trioraft.api.__file__).read_text(encoding="utf-8"))
    codes: set[str] = set()
    for node in ast.walk(tree):
        # ApiError(503, "no_leader", ...) and _error(400, "bad_request", ...)
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) in ("ApiError", "_error")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            codes.add(node.args[1].value)
        # {"code": "cas_failed"} and {404: "not_found", 405: ...}
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(k, ast.Constant)
                    and (k.value == "code" or isinstance(k.value, int))
                    and isinstance(v, ast.Constant)
                    and isinstance(v.value, str)
                ):
                    codes.add(v.value)
    return codes


def test_every_error_code_is_documented() -> None:
    codes = error_codes_in_api_py()
    assert "no_leader" in codes  # the parse found the ApiError calls
    assert "cas_failed" in codes  # ... and the code fields of bodies
    text = read(API)
    assert sorted(code for code in codes if f"`{code}`" not in text) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_KEY_BYTES", kv.MAX_KEY_BYTES),
        ("MAX_VALUE_BYTES", kv.MAX_VALUE_BYTES),
        ("MAX_TXN_OPS", kv.MAX_TXN_OPS),
        ("MAX_TXN_BYTES", kv.MAX_TXN_BYTES),
        ("MAX_REQUEST_ID_BYTES", kv.MAX_REQUEST_ID_BYTES),
        ("DEDUP_WINDOW", kv.DEDUP_WINDOW),
        ("DEDUP_CLIENTS", kv.DEDUP_CLIENTS),
        ("MAX_BODY_BYTES", MAX_BODY_BYTES),
    ],
)
def test_limits_in_api_md_match_the_code(name: str, value: int) -> None:
    text = read(API)
    row = next((line for line in text.splitlines() if f"`{name}`" in line), None)
    assert row is not None, f"{name} is not in docs/api.md"
    numbers = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", row)}
    assert value in numbers, f"{name} = {value:,} but docs/api.md says: {row}"


def test_api_md_names_every_header_of_the_contract() -> None:
    text = read(API)
    for header in ("X-Raft-Leader", "Idempotency-Key", "Retry-After", "Location", "Allow"):
        assert header in text


# ---------------------------------------------------------------- all pages


def test_the_index_links_every_page() -> None:
    index = read(DOCS / "README.md")
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    assert [p for p in pages if f"({p})" not in index] == []


@pytest.mark.parametrize("page", OUR_PAGES)
def test_relative_links_resolve(page: str) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", read(DOCS / page)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (DOCS / target.split("#", 1)[0]).resolve()
        if not path.exists() and path.name not in PAGES_IN_PROGRESS:
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", OUR_PAGES)
def test_anchors_of_links_between_our_pages_exist(page: str) -> None:
    broken = []
    for target, anchor in re.findall(r"\]\(([a-z-]+\.md)?#([^)\s]+)\)", read(DOCS / page)):
        other = DOCS / (target or page)
        if other.name not in OUR_PAGES:
            continue
        slugs = {slug(h) for h in re.findall(r"^#+ (.+)$", read(other), flags=re.MULTILINE)}
        if anchor not in slugs:
            broken.append(f"{target}#{anchor}")
    assert broken == []


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")
