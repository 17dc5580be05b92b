"""The repository address in one place: `_config.yml`'s `repository` section.

    python tools/set_repository.py URL [REF]   # write URL (and REF) everywhere (`make repo`)
    python tools/set_repository.py --check     # list every place that disagrees; exit 1 if any

`repository.url` is the GitHub repository, `repository.branch` the ref that every notebook's
Colab bootstrap installs `mha` from (and Jupyter Book's launch and edit buttons use). The GitHub
Pages address of the book (`html.baseurl`) follows from the URL. The places written are
`_config.yml`, the bootstrap cell of every notebook under `chapters/` (whatever is added later),
README.md and CONTRIBUTING.md. Only the address text changes; nothing else in a file is touched.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
GITHUB = re.compile(
    r"^https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$"
)
REF = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$")
# A git URL as pip takes it, with an optional @ref: in notebooks, README and CONTRIBUTING.
GIT_URL = re.compile(
    r"git\+(https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?)(?:\.git)?(@[A-Za-z0-9_./-]+)?(?=[\"'\s)`]|$)"
)
PAGES_URL = re.compile(r"https://[A-Za-z0-9_.-]+\.github\.io/[A-Za-z0-9_.-]+/?")
DOCS = ("README.md", "CONTRIBUTING.md")


def pages_url(url: str) -> str:
    """GitHub Pages address of the repository `url` (https://github.com/OWNER/NAME)."""
    owner, name = GITHUB.match(url).groups()
    return f"https://{owner.lower()}.github.io/{name}/"


def parse(url: str, ref: str) -> tuple[str, str]:
    """Check and normalise (url, ref); ValueError naming the argument otherwise."""
    match = GITHUB.match(url)
    if match is None:
        raise ValueError(f"URL: expected https://github.com/OWNER/NAME, got {url!r}")
    if not REF.match(ref) or ".." in ref:
        raise ValueError(f"REF: expected a branch, tag or commit name, got {ref!r}")
    return f"https://github.com/{match.group(1)}/{match.group(2)}", ref


def configured(root: pathlib.Path = ROOT) -> tuple[str, str]:
    """(url, ref) as `_config.yml` states them."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    return parse(config["repository"]["url"], str(config["repository"]["branch"]))


def notebooks(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    return sorted((root / "chapters").glob("**/*.ipynb"))


def _rewrite_text(text: str, url: str, ref: str) -> str:
    """Every git URL of the repository -> url (keeping '@ref' only where one was), every Pages URL."""
    text = GIT_URL.sub(lambda m: f"git+{url}" + (f"@{ref}" if m.group(2) else ""), text)
    return PAGES_URL.sub(pages_url(url), text)


def _rewrite_config(text: str, url: str, ref: str) -> str:
    def field(text, section, key, value):
        pattern = re.compile(
            rf"(^{section}:\n(?:[ \t]+.*\n|\s*\n)*?[ \t]+{key}:[ \t]*)([^\n#]*?)([ \t]*(?:#.*)?)$",
            re.M,
        )
        if not pattern.search(text):
            raise ValueError(f"_config.yml: no {section}.{key} to write")
        return pattern.sub(lambda m: m.group(1) + value + m.group(3), text, count=1)

    text = field(text, "repository", "url", url)
    text = field(text, "repository", "branch", ref)
    return field(text, "html", "baseurl", pages_url(url))


def write(url: str, ref: str = "main", root: pathlib.Path = ROOT) -> list[str]:
    """Write (url, ref) into every place; return the files that changed (relative paths)."""
    url, ref = parse(url, ref)
    changed = []
    config = root / "_config.yml"
    new = _rewrite_config(config.read_text(), url, ref)
    if new != config.read_text():
        config.write_text(new)
        changed.append("_config.yml")
    for name in DOCS:
        path = root / name
        if (
            path.exists()
            and (new := _rewrite_text(path.read_text(), url, ref)) != path.read_text()
        ):
            path.write_text(new)
            changed.append(name)
    for path in notebooks(root):
        nb = json.loads(path.read_text())
        touched = False
        for cell in nb["cells"]:
            lines = (
                cell["source"] if isinstance(cell["source"], list) else [cell["source"]]
            )
            new_lines = [_rewrite_text(line, url, ref) for line in lines]
            if new_lines != lines:
                cell["source"] = (
                    new_lines if isinstance(cell["source"], list) else new_lines[0]
                )
                touched = True
        if touched:
            # The layout Jupyter writes (indent 1, non-ASCII kept, final newline): a minimal diff.
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(str(path.relative_to(root)))
    return changed


def disagreements(root: pathlib.Path = ROOT) -> list[str]:
    """Every place whose address differs from `_config.yml`'s (empty when all agree)."""
    url, ref = configured(root)
    config = yaml.safe_load((root / "_config.yml").read_text())
    problems = []
    if (config.get("html") or {}).get("baseurl") != pages_url(url):
        problems.append(
            f"_config.yml: html.baseurl is {config.get('html', {}).get('baseurl')!r}, not {pages_url(url)!r}"
        )
    texts = [
        (name, (root / name).read_text()) for name in DOCS if (root / name).exists()
    ]
    for path in notebooks(root):
        rel = str(path.relative_to(root))
        sources = [
            "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in json.loads(path.read_text())["cells"]
        ]
        code = "\n".join(sources)
        if "google.colab" not in code:
            problems.append(f"{rel}: no Colab bootstrap cell")
        elif f"git+{url}@{ref}" not in code:
            problems.append(f"{rel}: the bootstrap does not install from {url}@{ref}")
        texts.append((rel, code))
    for name, text in texts:
        for match in GIT_URL.finditer(text):
            if match.group(1) != url or (match.group(2) not in (None, f"@{ref}")):
                problems.append(f"{name}: {match.group(0)!r}, not git+{url}[@{ref}]")
        for match in PAGES_URL.finditer(text):
            if match.group(0).rstrip("/") + "/" != pages_url(url):
                problems.append(f"{name}: {match.group(0)!r}, not {pages_url(url)!r}")
    return problems


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        problems = disagreements()
        print(
            "\n".join(problems) or f"every place installs from {'@'.join(configured())}"
        )
        return 1 if problems else 0
    if len(argv) not in (1, 2) or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        changed = write(argv[0], argv[1] if len(argv) == 2 else "main")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("changed:", *changed or ["nothing (already set)"], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
