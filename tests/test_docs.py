"""The documentation builds, and every command it shows still parses with its script's own flags.

1. `test_site_builds`: `mkdocs build --strict` (mkdocs.yml) into a temporary folder. Strict turns every
   warning into a failure: a link to a missing page or anchor, a page left out of the nav or a nav entry
   without its page, a snippet (`--8<-- "file"`) naming a missing file, a `::: module.name` naming nothing.

2. `test_commands_parse`: every command shown in a fenced code block of README.md and of the pages under
   docs/ that runs a script of this repository, `python X.py ...` or `.venv/bin/python X.py ...` (environment
   variables before it allowed, lines ending in `\\` joined, a `#` comment and anything after a shell
   operator such as `>` or `&&` dropped), is parsed by that script's own `Args` with tyro, as the script's
   `tyro.cli(Args)` / `utils.parse_args(Args)` parses it, and nothing runs: an unknown or removed flag, a
   value outside a flag's choices or of the wrong type fails, naming the page and line. Also checked:
   - `study.py --methods "[label=]script flags"`: each method's flags by its own script's Args, and
     `--train-flags` by every method's;
   - a `--substrate` value must be a Melting Pot substrate, and an `eval_scenarios.py --scenarios` value a
     scenario or substrate.
   The only commands not parsed against today's scripts, by these rules and no other:
   - history: a fenced block whose title says `at commit <sha>`, as in
     ```` ```bash title="... at commit cc4f6a0" ````, holds commands as they ran at that commit (the lab
     notebook's, some with flags removed since). They are parsed by the scripts of that commit, read from git
     (`test_history_commands_parse`); where git does not have the commit (a shallow clone), that test skips.
   - a copy: a script the same page creates with `cp A.py B.py` (the recipe for a new method) is parsed
     with A's flags.
   - a placeholder: a `--substrate` (or `--scenarios`) value with a single capital letter as one of its
     `_`-separated words, like `S_in_the_matrix__repeated` ("for each substrate S"), is not looked up in
     Melting Pot's list (its flags still parse).
   Commands in inline code in the prose are not checked; pages show every command a reader should run in a
   fenced block.

3. `test_readme_links_resolve_on_github`: README.md is read on GitHub, outside the site, so the strict build
   does not see its links: each relative link must name a file of the repository, and its `#anchor` a heading
   of that file as GitHub spells it (`github_anchor`: lower case, punctuation dropped, each space a hyphen, so
   "A study: `--against`" is `a-study---against`, where the site would say `a-study-against`).
"""

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
COMMAND = re.compile(r"^\s*(?:\w+=\S*\s+)*(?:\S*/)?python3?\s+(?!-)(\S+\.py)(?:\s+(.*))?$")
COPY = re.compile(r"^\s*cp\s+(\S+\.py)\s+(\S+\.py)\s*$")
HISTORY = re.compile(r"at commit ([0-9a-f]{7,40})\b")
SHELL_OPERATORS = {"&&", "||", "|", ";", "&", ">", ">>", "2>&1", "<"}
PLACEHOLDER = re.compile(r"(^|_)[A-Z](_|$)")


def pages():
    """README.md and every markdown page mkdocs builds from docs/ (not the link to results/)."""
    found = [os.path.join(ROOT, "README.md")]
    for directory, _, files in os.walk(os.path.join(ROOT, "docs")):  # does not follow the docs/results link
        found += [os.path.join(directory, f) for f in sorted(files) if f.endswith(".md")]
    return found


def shown_commands(path):
    """[(line number, script, argv, commit or None, {copy: original})] of the commands in `path`'s fenced blocks."""
    with open(path) as f:
        lines = f.read().splitlines()
    commands, copies, fence, commit, logical, start = [], {}, None, None, "", 0
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, info = match.group(2), match.group(3)
                commit = HISTORY.search(info).group(1) if HISTORY.search(info) else None
            continue
        if match and match.group(2).startswith(fence) and not match.group(3).strip():
            fence = None
            continue
        if not logical:
            start = number
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical, text = "", logical + line
        if COPY.match(text):
            copies[os.path.basename(COPY.match(text).group(2))] = os.path.basename(COPY.match(text).group(1))
        command = COMMAND.match(text)
        if command:
            words = shlex.split(command.group(2) or "", comments=True)
            cut = next((i for i, w in enumerate(words) if w in SHELL_OPERATORS or w.startswith(">")), len(words))
            commands.append((start, command.group(1), words[:cut], commit))
    return [(n, script, argv, commit, copies) for n, script, argv, commit in commands]


# ---------------------------------------------------------------------------------------------
# Parsing, in this process for today's scripts and in a subprocess for a commit's (parse_all)


def load_script(root, relative):
    """The module of script `relative` in `root`, imported under a name of its own without running its main."""
    name = "docs_check__" + re.sub(r"\W", "_", os.path.relpath(os.path.join(root, relative), ROOT))
    if name not in sys.modules:
        path = os.path.join(root, relative)
        for directory in (os.path.dirname(path), root):  # its own folder, as `python X.py` has it, and the root
            if directory not in sys.path:
                sys.path.insert(0, directory)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # tyro reads the flags' docstrings from the module's source
        spec.loader.exec_module(module)
    return sys.modules[name]


def tyro_parse(args_class, argv):
    """(the parsed Args, None); (None, None) for `--help`, which tyro answers by printing and exiting with 0;
    or (None, tyro's error in one line)."""
    import tyro

    captured = io.StringIO()
    with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
        try:
            return tyro.cli(args_class, args=list(argv)), None
        except SystemExit as e:
            if e.code in (0, None):
                return None, None
    text = " ".join(w for w in captured.getvalue().split() if set(w) != {"-"} and w not in ("│", "╭", "╰"))
    return None, text.split(" For full helptext")[0] or "tyro refused it"


def parse_command(root, script, argv, copies):
    """Parses one command; returns {"error": str or None, "substrates": [...], "scenarios": [...]}."""
    original = copies.get(os.path.basename(script), os.path.basename(script))
    relative = os.path.join(os.path.dirname(script), original)
    facts = {"error": None, "substrates": [], "scenarios": []}
    if not os.path.isfile(os.path.join(root, relative)):
        facts["error"] = f"{script}: no such script"
        return facts
    with open(os.path.join(root, relative)) as f:
        if not re.search(r"^class Args\b", f.read(), re.M):
            facts["error"] = f"{script} has no `Args` dataclass to parse the command with (show it as `make ...`)"
            return facts
    args, facts["error"] = tyro_parse(load_script(root, relative).Args, argv)
    if args is None:
        return facts
    if isinstance(getattr(args, "substrate", None), str):
        facts["substrates"].append(args.substrate)
    if os.path.basename(relative) == "eval_scenarios.py":
        facts["scenarios"] += list(args.scenarios)
    if os.path.basename(relative) == "study.py" and not getattr(args, "from_results", None):
        for spec in args.methods:  # study.parse_method's reading of `[label=]script flags`
            rest = spec.partition("=")[2] if "=" in spec.split(" ")[0] else spec
            words = shlex.split(rest)
            method = copies.get(words[0].removesuffix(".py") + ".py", words[0].removesuffix(".py") + ".py")
            if not os.path.isfile(os.path.join(root, method)):
                facts["error"] = f"--methods {spec!r}: no script {method}"
                return facts
            for flags, what in (
                (words[1:], f"--methods {spec!r}"),
                (shlex.split(getattr(args, "train_flags", "")), "--train-flags"),
            ):
                _, error = tyro_parse(load_script(root, method).Args, flags)
                if error:
                    facts["error"] = f"{what}, parsed by {method}: {error}"
                    return facts
    return facts


def parse_all(root, commands):
    """parse_command over [(script, argv, copies)] with the scripts in `root` (a commit's, in a subprocess)."""
    return [parse_command(root, script, argv, copies) for script, argv, copies in commands]


@pytest.fixture(scope="module")
def melting_pot_names():
    sys.path.insert(0, ROOT)
    import utils

    mp = utils.import_meltingpot()
    return set(mp.substrate.SUBSTRATES), set(mp.scenario.SCENARIOS)


def problems(where, facts, names):
    substrates, scenarios = names
    found = [facts["error"]] if facts["error"] else []
    found += [
        f"--substrate {s!r} is not a Melting Pot substrate"
        for s in facts["substrates"]
        if s not in substrates and not PLACEHOLDER.search(s)
    ]
    found += [
        f"--scenarios {s!r} is neither a scenario nor a substrate"
        for s in facts["scenarios"]
        if s not in scenarios | substrates and not PLACEHOLDER.search(s)
    ]
    return [f"{where}: {p}" for p in found]


LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def github_anchor(heading):
    """The anchor GitHub gives a markdown heading: its text (code spans, emphasis and links reduced to their
    words) in lower case, every character but letters, digits, `_`, `-` and spaces dropped, spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(path):
    """GitHub's anchors of the headings of `path` outside fenced blocks (a repeated one gets -1, -2, ...)."""
    anchors, fence = [], None
    with open(path) as f:
        for line in f:
            match = FENCE.match(line)
            if match and (fence is None or match.group(2).startswith(fence)):
                fence = match.group(2) if fence is None else None
            elif fence is None and HEADING.match(line):
                anchor = github_anchor(HEADING.match(line).group(1))
                anchors.append(anchor if anchor not in anchors else f"{anchor}-{anchors.count(anchor)}")
    return anchors


def all_commands(history):
    """[(where, script, argv, commit, copies)] over every page, today's (history False) or the history blocks'."""
    found = []
    for path in pages():
        for number, script, argv, commit, copies in shown_commands(path):
            if (commit is not None) == history:
                where = f"{os.path.relpath(path, ROOT)}:{number}: python {script} {shlex.join(argv)}"
                found.append((where, script, argv, commit, copies))
    return found


# ---------------------------------------------------------------------------------------------
# The tests


def test_site_builds(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}{result.stderr[-5000:]}"


def test_commands_parse(melting_pot_names):
    commands = all_commands(history=False)
    assert len(commands) > 20, "the pages show fewer commands than expected: is the fence parsing broken?"
    failures = []
    for where, script, argv, _, copies in commands:
        failures += problems(where, parse_command(ROOT, script, argv, copies), melting_pot_names)
    assert not failures, "commands shown in the docs that today's scripts do not take:\n" + "\n".join(failures)


def test_history_commands_parse_at_their_commit(melting_pot_names, tmp_path):
    by_commit = {}
    for command in all_commands(history=True):
        by_commit.setdefault(command[3], []).append(command)
    assert by_commit, "no history block found: is the title rule `at commit <sha>` still the pages'?"
    failures, missing = [], []
    for commit, commands in by_commit.items():
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True)
        if archive.returncode:
            missing.append(commit)
            continue
        tree = tmp_path / commit
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".py")]
            tar.extractall(tree, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        out = tmp_path / f"{commit}.json"
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import test_docs; "
            "json.dump(test_docs.parse_all(sys.argv[2], json.loads(sys.argv[3])), open(sys.argv[4], 'w'))"
        )
        jobs = json.dumps([(script, argv, copies) for _, script, argv, _, copies in commands])
        result = subprocess.run(
            [sys.executable, "-c", code, HERE, str(tree), jobs, str(out)], cwd=tree, capture_output=True, text=True
        )
        assert result.returncode == 0, f"parsing the commands at {commit} failed:\n{result.stderr[-3000:]}"
        with open(out) as f:
            for (where, *_), facts in zip(commands, json.load(f)):
                failures += problems(f"{where} (at {commit})", facts, melting_pot_names)
    assert not failures, "history commands that their commit's scripts do not take:\n" + "\n".join(failures)
    if missing:
        pytest.skip(f"git has no commit {', '.join(missing)} here (a shallow clone?): their commands were not parsed")


def test_readme_links_resolve_on_github():
    assert github_anchor("A new method against a published study: `--against`") == (
        "a-new-method-against-a-published-study---against"
    )
    assert github_anchor("An adaptive `p` on coins (issue 30)") == "an-adaptive-p-on-coins-issue-30"
    with open(os.path.join(ROOT, "README.md")) as f:
        links = [(number, target) for number, line in enumerate(f, 1) for target in LINK.findall(line)]
    relative = [(number, target) for number, target in links if not re.match(r"[a-z]+:", target)]
    assert len(relative) > 10, "the README links fewer pages than expected: is the link pattern broken?"
    broken = []
    for number, target in relative:
        path, _, anchor = target.partition("#")
        file = os.path.join(ROOT, path) if path else os.path.join(ROOT, "README.md")
        if not os.path.exists(file):
            broken.append(f"README.md:{number}: {target}: no such file")
        elif anchor and anchor not in headings(file):
            broken.append(f"README.md:{number}: {target}: {path or 'README.md'} has no heading GitHub calls #{anchor}")
    assert not broken, "README links that GitHub does not resolve:\n" + "\n".join(broken)
