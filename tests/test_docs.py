"""The docs stay in step with the code and with the measured tables they summarise."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import bebr
from bebr.codes import MAX_QUERY_BITS, max_query_bits
from bebr.model import BinarizerConfig

ROOT = Path(bebr.__file__).resolve().parent.parent
DOCS = {name: ROOT / name for name in ("README.md", "BENCHMARKS.md", "docs/FORMAT.md")}
if not all(p.is_file() for p in DOCS.values()):  # an installed package without its checkout
    pytest.skip("needs the source checkout's docs", allow_module_level=True)


def _text(name):
    return DOCS[name].read_text(encoding="utf-8")


def test_format_query_bits_match_the_code():
    text = " ".join(_text("docs/FORMAT.md").split())
    low = re.search(r"`1 <= query_bits <= (\d+)` over 1-2-bit items", text)
    high = re.search(r"`1 <= query_bits <= (\d+)` \(`bebr.codes.MAX_QUERY_BITS`\) over 3-4-bit",
                     text)
    assert low and high, "FORMAT.md no longer states the query-bit bounds"
    assert int(low.group(1)) == max_query_bits(1) == max_query_bits(2)
    assert int(high.group(1)) == MAX_QUERY_BITS == max_query_bits(3) == max_query_bits(4)


def test_format_lists_every_model_key_and_config_field():
    text = _text("docs/FORMAT.md")
    torch.manual_seed(0)
    m = bebr.Binarizer(8, 8, 2, hidden=4, version="v2")
    m.add_cross_head("v1", 2)
    documented = re.findall(r"`(cross\.<i>\.[a-z.<>]+?)(?:\*)?`", text)
    assert {"cross.<i>.mean", "cross.<i>.calibration", "cross.<i>.nets.<k>."} <= set(documented)
    for key in m.state_dict():
        if not key.startswith("cross."):
            continue
        generic = re.sub(r"^cross\.\d+\.", "cross.<i>.", re.sub(r"\.nets\.\d+\.", ".nets.<k>.",
                                                                 key))
        assert any(generic.startswith(d) for d in documented), f"{key} is not in FORMAT.md"
    for f in dataclasses.fields(BinarizerConfig):
        assert f"`{f.name}`" in text, f"config field {f.name} is not in FORMAT.md"


def test_links_and_cited_files_exist():
    for name, path in DOCS.items():
        text = _text(name)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            assert (path.parent / target.split("#")[0]).exists(), f"{name} links {target}"
        for cited in set(re.findall(r"\b([A-Za-z_][\w/.-]*\.md)\b", text)):
            assert (ROOT / cited).exists() or (path.parent / cited).exists(), \
                f"{name} cites {cited}, which is not in the repository"


def _section(text, name):
    start = text.index(f"<!-- section: {name} ")
    end = text.find("<!-- section:", start + 1)
    return text[start:end if end >= 0 else None]


def _table_rows(block, header_start):
    lines = block[block.index("\n" + header_start) + 1:].splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip().strip("*") for c in line.strip("|").split("|")))))
    return rows


def test_readme_kernel_ratio_ranges_cover_every_row():
    sec = _section(_text("BENCHMARKS.md"), "kernels")
    sdc = _table_rows(sec, "| bits | bytes/vec | nq |")
    ham = _table_rows(sec, "| nq | threads | bebr QPS |")
    readme = " ".join(_text("README.md").split())

    def span(rows):
        r = [float(x["ratio"]) for x in rows]
        return f"{min(r):.2f}-{max(r):.2f}x"

    assert f"({span([r for r in sdc if r['nq'] == '1'])} for single queries" in readme
    assert f"{span([r for r in sdc if r['nq'] == '64'])} for 64-query batches" in readme
    assert f"IndexBinaryFlat ({span(ham)})" in readme


def test_readme_peak_memory_matches_benchmarks():
    sec = _section(_text("BENCHMARKS.md"), "jobs")
    peak = re.search(r"peak RSS \*\*(\d+) MB\*\*", sec).group(1)
    readme = " ".join(_text("README.md").split())
    assert f"peaked at {peak} MB RSS, BENCHMARKS.md section 4" in readme


def test_benchmarks_state_the_centering_default():
    import inspect

    default = inspect.signature(bebr.train_binarizer).parameters["center"].default
    text = _text("BENCHMARKS.md")
    assert default is False
    assert "the library default stays `center=True`" not in text
    assert "center=True (current default)" not in text
    assert "The default is now `center=False`" in text


def test_readme_and_format_name_only_what_exists():
    """Every ``bebr.NAME`` the README and FORMAT.md use is in the package, and every command
    of the README's CLI table is a ``bebr`` subcommand (removed API and verbs leave the docs
    with the code)."""
    import argparse
    import importlib.util

    from bebr.cli import build_parser

    for name in ("README.md", "docs/FORMAT.md"):
        for attr in set(re.findall(r'(?<!")\bbebr\.([A-Za-z_]\w*)', _text(name))):
            assert hasattr(bebr, attr) or importlib.util.find_spec(f"bebr.{attr}"), \
                f"{name} names bebr.{attr}, which bebr does not have"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = re.findall(r"^\| `bebr ([a-z-]+)", _text("README.md"), flags=re.M)
    assert "train" in commands and "collection" in commands
    for cmd in commands:
        assert cmd in sub.choices, f"README's CLI table lists `bebr {cmd}`, not a command"
