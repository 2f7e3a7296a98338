"""Markdown tables of the dense protocols: per-model rows (mean +- std over seeds), paired
differences on the same seed, one checkpoint's scores, and a section writer for a Markdown file."""
import os
import os.path as osp
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

__all__ = ['METRICS', 'fmt_mean_std', 'aggregate_rows', 'rows_table', 'per_seed_table',
           'paired_differences',
           'checkpoint_scores_table', 'write_section']

# (key of a row, column title, digits)
METRICS: Tuple[Tuple[str, str, int], ...] = (
    ('mIoU', 'linear probe mIoU (%)', 2),
    ('oc_mIoU', 'overclustering mIoU (%)', 2),
    ('nn_mIoU', 'NN retrieval mIoU (%)', 2),
    ('dispersion', 'dispersion (lower = tighter)', 3),
    ('inst_dispersion', 'instance dispersion', 3),
)
_PERCENT = ('mIoU', 'oc_mIoU', 'nn_mIoU')


def fmt_mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``'m +- s'`` (population std) over several values, the value alone for one, ``'-'`` for
    none or only NaNs."""
    vals = [float(v) for v in values]
    if not vals or all(np.isnan(vals)):
        return '-'
    if len(vals) == 1:
        return f'{vals[0]:.{digits}f}'
    return f'{np.mean(vals):.{digits}f} +- {np.std(vals):.{digits}f}'


def row_values(row: Dict[str, Any]) -> Dict[str, float]:
    """The table's numbers of one :func:`~.dense_comparison.dense_row` (mIoU in %)."""
    d = row['dispersion']
    vals = {k: 100 * float(row[k]) for k in _PERCENT}
    vals.update(dispersion=float(d['dispersion']),
                inst_dispersion=float(d.get('instance_dispersion', float('nan'))))
    return vals


def aggregate_rows(per_seed: Sequence[Sequence[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """Rows of several seeds (same names and feature sets) -> ``{label: dict(name, features, dim,
    <metric>: [value per seed], ...)}``, label ``'name [features]'``, in first-seen order. Extra
    numeric keys of a row (``step_time``, ``peak_mb``) are collected too."""
    out: Dict[str, Dict[str, Any]] = {}
    for rows in per_seed:
        for row in rows:
            label = f"{row['name']} [{row['features']}]"
            agg = out.setdefault(label, dict(name=row['name'], features=row['features'],
                                             dim=int(row['feature_shape'][0])))
            vals = row_values(row)
            for key in ('step_time', 'peak_mb'):
                if key in row:
                    vals[key] = float(row[key])
            for k, v in vals.items():
                agg.setdefault(k, []).append(v)
    return out


def rows_table(agg: Dict[str, Dict[str, Any]], cost_reference: str = '') -> str:
    """One line per model and feature set; with ``cost_reference`` (a label of ``agg``) also step
    time and peak memory with their ratios to that row."""
    head = ['model', 'features'] + [m[1] for m in METRICS]
    ref = agg.get(cost_reference, {})
    if ref:
        head += ['step time (s)', 'x control', 'peak memory (MB)', 'x control']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in agg.values():
        cells = [r['name'], f"{r['features']} ({r['dim']}-d)"]
        cells += [fmt_mean_std(r.get(k, []), d) for k, _, d in METRICS]
        if ref:
            for key, digits in (('step_time', 3), ('peak_mb', 0)):
                v = r.get(key, [])
                ratio = [np.mean(v) / np.mean(ref[key])] if v and ref.get(key) else []
                cells += [fmt_mean_std(v, digits), fmt_mean_std(ratio, 2)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def per_seed_table(agg: Dict[str, Dict[str, Any]], key: str, seeds: Sequence[int]) -> str:
    """One line per model and feature set, one column per seed, of metric ``key``."""
    lines = ['| model | features | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |',
             '|' + '---|' * (2 + len(seeds))]
    for r in agg.values():
        vals = [f'{v:.2f}' for v in r.get(key, [])]
        lines.append(f"| {r['name']} | {r['features']} | " + ' | '.join(vals) + ' |')
    return '\n'.join(lines)


def paired_differences(agg: Dict[str, Dict[str, Any]],
                       pairs: Sequence[Tuple[str, str, str]]) -> str:
    """Per-seed differences ``a - b`` of the three mIoUs for each ``(title, label a, label b)``:
    mean +- std over seeds and on how many seeds ``a`` is ahead. Pairs whose rows are missing are
    left out."""
    head = ['comparison (same seed)'] + [m[1].replace(' (%)', '') + ' diff' for m in METRICS[:3]]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for title, a, b in pairs:
        if a not in agg or b not in agg:
            continue
        cells = [title]
        for key, _, digits in METRICS[:3]:
            diff = np.asarray(agg[a][key]) - np.asarray(agg[b][key])
            cell = fmt_mean_std(diff.tolist(), digits)
            if len(diff) > 1 and cell != '-':
                cell += f' ({int((diff > 0).sum())}/{len(diff)} seeds ahead)'
            cells.append(cell if cell.startswith('-') or cell == '-' else '+' + cell)
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def checkpoint_scores_table(name: str, dataset: str, results: Dict[str, Dict[str, Any]]) -> str:
    """Header and one row per feature set of one checkpoint
    (:func:`~.dense_scores.score_cached_features` per feature set, with ``dim``); mIoU in %."""
    cols: List[Tuple[str, Tuple[str, ...]]] = []
    for feats in results.values():
        if 'linear' in feats and ('linear', ('linear', )) not in cols:
            cols.append(('linear', ('linear', )))
        for key in feats.get('overclustering', {}):
            col = (f'OC {key.replace("_K", " K=")}', ('overclustering', key))
            if col not in cols:
                cols.append(col)
        if 'nn' in feats and ('NN', ('nn', )) not in cols:
            cols.append(('NN', ('nn', )))
    head = ['model', 'dataset', 'features'] + [f'{c[0]} mIoU' for c in cols]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for fname, feats in results.items():
        row = [name, dataset, f'{fname} ({feats["dim"]}-d)']
        for _, path in cols:
            node: Any = feats
            for key in path:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            row.append(f'{100 * node["mIoU"]:.2f}' if 'mIoU' in node else '-')
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines) + '\n'


def write_section(path: str, section: str) -> None:
    """Put ``section`` (a markdown ``## title`` block) into ``path`` in place of the block with the
    same title, or at the end; the file's other sections are kept."""
    title = section.splitlines()[0]
    text = '# Benchmarks\n'
    if osp.isfile(path):
        with open(path) as f:
            text = f.read()
    lines = text.splitlines(keepends=True)
    if title + '\n' in lines:
        start = lines.index(title + '\n')
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith('## ')),
                   len(lines))
        lines[start:end] = [section.rstrip('\n') + '\n\n' if end < len(lines) else section]
        text = ''.join(lines)
    else:
        text = text.rstrip('\n') + '\n\n' + section
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
