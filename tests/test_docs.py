"""``docs/`` (and the README) stay true to the code: links, Python examples and command lines.

- Every relative link of ``README.md`` and ``docs/*.md`` points to a file that exists, and every
  ``#anchor`` to a heading of its target (GitHub's anchors).
- Every ``python`` block is an ``# example:`` that runs: the walk-through of ``tests/test_readme.py``
  (export, predict, bench, pipeline) or one run here.
- Every command line of their ``bash`` blocks that runs ``t2t``, ``python -m`` one of our modules,
  or ``torchrun`` is parsed, not run, by the real argument parser of that command (the trainer's and
  the distiller's for ``train`` / ``distill``, the underlying command's for ``t2t compress``'s
  pass-through flags), so a renamed or removed flag fails here; ``python -m benchmarks.…`` modules
  must exist. Inline ``t2t …`` spans of the prose have their ``--flags`` checked the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from conftest import example_blocks

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUR_PACKAGES = ("t2tvit", "compress", "deploy", "t2t", "benchmarks")

# Examples run here (the others are the walk-through of tests/test_readme.py).
RUN_HERE = {"load": "docs/models.md", "backbone": "docs/models.md"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """``text`` with its fenced code blocks blanked out (line numbers kept)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)


# --------------------------------------------------------------------------- links


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped (but ``-`` and ``_``), spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for m in re.finditer(r"^#{1,6} (.+)$", _prose(path.read_text()), flags=re.M):
        base = anchor = github_anchor(m.group(1))
        n = 0
        while anchor in found:  # a repeated heading gets -1, -2, ...
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every inline link or image outside code blocks."""
    text = _prose(path.read_text())
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in re.finditer(r"\]\(([^)\s]+)\)", text)]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for line, target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{_rel(page)}:{line}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{_rel(page)}:{line}: {target}: no heading with that anchor in {dest.name}")
    assert broken == []


def test_the_anchor_rule_is_githubs() -> None:
    assert github_anchor("One command: `t2t compress`") == "one-command-t2t-compress"
    assert github_anchor("LiteRT (.tflite)") == "litert-tflite"
    assert github_anchor("The manifest, and `t2t verify`") == "the-manifest-and-t2t-verify"
    assert github_anchor("Committed reports and the project's targets") == "committed-reports-and-the-projects-targets"


def test_every_page_is_in_the_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    assert [p.name for p in PAGES[1:] if p.name != "README.md" and f"]({p.name})" not in index] == []


# --------------------------------------------------------------------------- Python examples


def test_every_python_block_is_an_example_that_runs() -> None:
    from test_readme import WALKTHROUGH

    found = {}
    for page in PAGES:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
        assert all(b.startswith("# example:") for b in blocks), f"{_rel(page)}: a python block that no test runs"
        names = example_blocks(page)
        assert len(names) == len(blocks), f"{_rel(page)}: two examples with one name"
        for name in names:
            assert name not in found, f"example {name!r} in {found.get(name)} and {_rel(page)}"
            found[name] = _rel(page)
    assert found == {**WALKTHROUGH, **RUN_HERE}


def test_model_examples_run_as_written(tmp_path, monkeypatch, capsys, one_thread) -> None:
    """``docs/models.md``'s examples, with stand-ins of the files they name: official-format releases
    (``state_dict_ema``), a trainer checkpoint of the 384 px, 10-class model and a torchvision teacher."""
    import timm
    import torch
    import torchvision

    import t2tvit  # noqa: F401  (registers the variants with timm, for the stand-ins)

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save({"state_dict_ema": timm.create_model("t2t_vit_7").state_dict()}, "71.7_T2T_ViT_7.pth.tar")
    torch.save({"state_dict_ema": timm.create_model("t2t_vit_14").state_dict()}, "81.5_T2T_ViT_14.pth.tar")
    (tmp_path / "run").mkdir()
    mine = timm.create_model("t2t_vit_14", img_size=384, num_classes=10)
    torch.save({"model": mine.state_dict(), "model_ema": mine.state_dict()}, "run/last.pth")
    torch.save(torchvision.models.resnet50().state_dict(), "teacher.pth")

    scope: dict = {}
    for name, block in example_blocks(ROOT / "docs" / "models.md").items():
        exec(compile(block, f"docs/models.md [# example: {name}]", "exec"), scope)

    assert "run/last.pth" in capsys.readouterr().out  # print(report): what was loaded from where
    assert scope["model"].default_cfg["architecture"] == "t2t_vit_7"  # the last one, dynamic_img_size
    shapes = [tuple(t.shape) for t in (scope["c4"], scope["c8"], scope["c16"])]
    assert shapes == [(1, 64, 128, 128), (1, 64, 64, 64), (1, 384, 32, 32)]


# --------------------------------------------------------------------------- command lines


def _logical_lines(block: str) -> list[str]:
    """A shell block's lines with ``\\`` continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def _segments(line: str, variables: dict[str, str]) -> list[list[str]]:
    """The simple commands of one shell line (split at ``&&``, ``||``, ``;``, ``|``), comments dropped,
    ``$VAR`` of earlier assignments in the block expanded; an assignment ``VAR=value`` is recorded."""
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            segments.append([])
        else:
            segments[-1].append(token)
    out = []
    for seg in segments:
        if len(seg) == 1 and re.fullmatch(r"\w+=.*", seg[0]):
            key, _, value = seg[0].partition("=")
            variables[key] = value
        elif seg:
            out.append(seg)
    return out


def command_lines() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every command in a ``bash`` block of the README and ``docs/``."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"```bash\n(.*?)```", text, flags=re.S):
            first = text.count("\n", 0, m.start()) + 2
            variables: dict[str, str] = {}
            for i, line in enumerate(_logical_lines(m.group(1))):
                for argv in _segments(line, variables):
                    found.append((f"{_rel(page)}:{first + i}", argv))
    return found


def _spelled_out(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` (and its subcommands) refusing abbreviated flags: a flag renamed to a longer name
    would otherwise still parse as an abbreviation of it."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _spelled_out(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: {shlex.join(argv)}\n{err.getvalue()}")


def _t2t_parser() -> argparse.ArgumentParser:
    from t2t.cli import build_parser

    return _spelled_out(build_parser())


def _module_parser(module: str) -> argparse.ArgumentParser:
    """The parser behind ``python -m module`` (and ``t2t train`` / ``t2t distill``, which forward to it)."""
    import importlib

    return _spelled_out(importlib.import_module(module).build_parser())


FORWARDED = {"train": "t2tvit.train", "distill": "compress.distill"}
CONFIGS = {"train": "TrainConfig", "distill": "DistillConfig"}  # the settings class each module's parser is made of


def check_t2t(argv: list[str], where: str) -> str:
    """Parse ``t2t argv`` as the command line would, without running it; returns the subcommand."""
    import importlib

    from t2t import compress_cmd
    from t2tvit.config import parse_config

    args = _parse(_t2t_parser(), argv, where)
    assert args.command, f"{where}: t2t {shlex.join(argv)}: no subcommand"
    if args.command in FORWARDED:  # the trainer's own parse, --config recipe included (no file is opened else)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                module = FORWARDED[args.command]
                config_class = getattr(importlib.import_module(module), CONFIGS[args.command])
                parse_config(config_class, args.args, _module_parser(module))
        except SystemExit:
            pytest.fail(f"{where}: t2t {shlex.join(argv)}\n{err.getvalue()}")
    if args.command == "compress":  # the pass-through flags, with the underlying command's parser
        for key in compress_cmd._PASS_THROUGH:
            if getattr(args, key):
                compress_cmd._explicit_flags(key, getattr(args, key))
    return args.command


def _module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def check_python_module(module: str, rest: list[str], where: str) -> str:
    """``python -m module rest``: ours must exist; the trainer's, the distiller's and t2t's are parsed."""
    if module == "t2t":
        return check_t2t(rest, where)
    assert _module_exists(module), f"{where}: python -m {module}: no such module"
    if module in FORWARDED.values():
        check_t2t([next(k for k, v in FORWARDED.items() if v == module), *rest], where)
    return module


def check_command(argv: list[str], where: str) -> str | None:
    """Check one command of a shell block; returns what it was checked as (None: not ours, e.g. pip)."""
    if argv[0] == "t2t":
        return check_t2t(argv[1:], where)
    if argv[0] in ("python", "python3") and argv[1:2] == ["-m"] and argv[2].split(".")[0] in OUR_PACKAGES:
        return check_python_module(argv[2], argv[3:], where)
    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        run = _parse(_spelled_out(get_args_parser()), argv[1:], where)
        assert run.module, f"{where}: torchrun without -m MODULE"
        return check_python_module(run.training_script, run.training_script_args, where)
    return None


def test_command_lines_parse() -> None:
    checked = [(where, argv, check_command(argv, where)) for where, argv in command_lines()]
    ours = [c for c in checked if c[2] is not None]
    # every subcommand that has a bash block, and the torchrun and python -m forms
    assert {c[2] for c in ours} >= {"train", "distill", "export", "verify", "predict", "bench", "visualize", "compress"}
    assert any(argv[0] == "torchrun" for _, argv, _ in ours)
    assert len(ours) >= 15, ours
    other = {argv[0] for _, argv, what in checked if what is None}
    assert other <= {"python3", "python", ".", "pip"}, other  # the install and test lines


def test_a_renamed_flag_fails() -> None:
    """The check is not vacuous: a flag the parser does not know, in any of the three forms, fails it."""
    from t2tvit.errors import ConfigError

    for argv in (
        ["t2t", "export", "--checkpoint", "x.pth", "--format", "cpu"],  # --formats (no abbreviations either)
        ["t2t", "train", "digits", "--epoch", "3"],  # --epochs
        ["torchrun", "--nproc-per-node", "2", "-m", "compress.distill", "digits", "--teacher-file", "x"],
        ["python", "-m", "t2t", "bench", "artifacts/digits", "--batch-size", "1"],  # --batch-sizes
        ["t2t", "compress", "--demo", "--export-args", "--engine x86"],  # --qengine
        ["python", "-m", "benchmarks.bench_nothing"],
    ):
        with pytest.raises((pytest.fail.Exception, ConfigError, AssertionError)):
            check_command(argv, "test")
    assert check_command(["t2t", "export", "--checkpoint", "x.pth", "--formats", "cpu"], "test") == "export"


def _inline_commands() -> list[tuple[str, list[str]]]:
    """``(where, tokens)`` of the inline ``t2t SUBCOMMAND …`` code spans of the prose."""
    found = []
    for page in PAGES:
        text = _prose(page.read_text())
        for m in re.finditer(r"`(t2t [^`]+)`", text):
            found.append((f"{_rel(page)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1).split()))
    return found


def test_inline_t2t_flags_exist() -> None:
    """Prose spans such as ``t2t export --inference-precision f32``: every ``--flag`` is the subcommand's
    (placeholders such as ``NAME`` and ``[--json]`` brackets are allowed; only flags are checked)."""
    subparsers = next(a for a in _t2t_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    unknown = []
    for where, tokens in _inline_commands():
        sub = tokens[1]
        if sub == "COMMAND":  # `t2t COMMAND --help`
            continue
        assert sub in subparsers, f"{where}: t2t {sub}: no such subcommand"
        parser = _module_parser(FORWARDED[sub]) if sub in FORWARDED else subparsers[sub]
        known = {s for a in parser._actions for s in a.option_strings}
        flags = [t.strip("[]").split("=")[0] for t in tokens[2:] if t.strip("[").startswith("--")]
        unknown += [f"{where}: t2t {sub} {f}" for f in flags if f not in known]
    assert unknown == []


def test_benchmark_modules_named_exist() -> None:
    """Every ``python -m benchmarks.…`` the pages name (prose or block) is a module of this checkout."""
    missing = []
    for page in PAGES:
        for m in re.finditer(r"python -m (benchmarks\.\w+)", page.read_text()):
            if not _module_exists(m.group(1)):
                missing.append(f"{_rel(page)}: {m.group(1)}")
    assert missing == []


# --------------------------------------------------------------------------- the README's tables


def test_the_readme_lists_every_command_and_format() -> None:
    from deploy.base import FORMATS

    readme = (ROOT / "README.md").read_text()
    subparsers = next(a for a in _t2t_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    table = re.search(r"\n## Commands\n(.*?)\n## ", readme, flags=re.S).group(1)
    assert sorted(re.findall(r"^\| `t2t (\w+)` \|", table, flags=re.M)) == sorted(subparsers)
    formats = re.search(r"\n## Export formats\n(.*?)\n## ", readme, flags=re.S).group(1)
    listed = re.findall(r"`([a-z0-9-]+)`", "\n".join(line.split(" | ")[0] for line in formats.splitlines()))
    assert sorted(set(listed) & set(FORMATS)) == sorted(FORMATS)
