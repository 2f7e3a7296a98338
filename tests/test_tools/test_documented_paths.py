"""What the documentation names exists: every config path in the tools' docstrings, the wrappers'
headers and the README's code blocks; every relative link of the README and docs/ resolves inside
the repository; nothing points at notes outside it."""
import ast
import glob
import os.path as osp
import re
from typing import Iterator, List, Tuple

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_PATH = re.compile(r'(?<![\w:/.])configs/[\w\-./{},+]+?\.py')


def expand_braces(text: str) -> List[str]:
    """``a{b,c}d`` -> ``['abd', 'acd']`` (nested left to right), as the shell does."""
    m = re.search(r'\{([^{}]*)\}', text)
    if m is None:
        return [text]
    return [out for alt in m.group(1).split(',')
            for out in expand_braces(text[:m.start()] + alt + text[m.end():])]


def _documents() -> Iterator[Tuple[str, str]]:
    for path in sorted(glob.glob(osp.join(REPO, 'tools', '**', '*.py'), recursive=True)):
        yield path, ast.get_docstring(ast.parse(open(path).read())) or ''
    for path in sorted(glob.glob(osp.join(REPO, 'tools', '**', '*.sh'), recursive=True)):
        yield path, ''.join(line for line in open(path) if line.startswith('#'))
    readme = osp.join(REPO, 'README.md')
    yield readme, '\n'.join(re.findall(r'```[a-z]*\n(.*?)```', open(readme).read(), re.S))


def test_brace_expansion():
    assert expand_braces('configs/x_{a,b}_{1,2}.py') == [
        'configs/x_a_1.py', 'configs/x_a_2.py', 'configs/x_b_1.py', 'configs/x_b_2.py']
    assert CONFIG_PATH.findall('python tools/train.py configs/cotap/a-b_c.py --x '
                               "'mmpretrain::configs/no.py'") == ['configs/cotap/a-b_c.py']


def test_every_documented_config_exists():
    named, missing = 0, []
    for doc, text in _documents():
        for found in CONFIG_PATH.findall(text):
            for path in expand_braces(found):
                named += 1
                if not osp.isfile(osp.join(REPO, path)):
                    missing.append(f'{osp.relpath(doc, REPO)}: {path}')
    assert named > 10 and not missing, (named, missing)


def test_links_resolve_inside_the_repository():
    bad = []
    for doc in [osp.join(REPO, 'README.md')] + sorted(glob.glob(osp.join(REPO, 'docs', '*.md'))):
        for target in re.findall(r'\]\(([^)\s]+)\)', open(doc).read()):
            if re.match(r'[a-z]+://', target) or target.startswith('#'):
                continue
            path = osp.normpath(osp.join(osp.dirname(doc), target.split('#')[0]))
            if not path.startswith(REPO + osp.sep) or not osp.exists(path):
                bad.append(f'{osp.relpath(doc, REPO)}: {target}')
    assert not bad, bad


@pytest.mark.parametrize('pattern', [r'shared/design', r'METHOD[\w-]*\.md', r'STACK\.md'])
def test_nothing_points_at_notes_outside_the_repository(pattern):
    files = [osp.join(REPO, 'README.md'), *glob.glob(osp.join(REPO, 'docs', '*.md'))]
    for sub in ('configs', 'tools', 'cotap_mm'):
        files += glob.glob(osp.join(REPO, sub, '**', '*.*'), recursive=True)
    hits = [osp.relpath(f, REPO) for f in files if f.endswith(('.md', '.py', '.sh'))
            and re.search(pattern, open(f).read())]
    assert not hits, hits
