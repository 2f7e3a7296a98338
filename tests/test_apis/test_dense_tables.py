"""cotap_mm.apis.dense_tables: aggregation over seeds, the tables, the section writer."""
import math

import numpy as np
import pytest

from cotap_mm.apis.dense_tables import (aggregate_rows, fmt_mean_std, paired_differences,
                                        per_seed_table, rows_table, write_section)


def _row(name, features, miou, oc, nn, disp=0.9, inst=0.3, dim=96, **extra):
    return dict(name=name, features=features, mIoU=miou, oc_mIoU=oc, nn_mIoU=nn,
                dispersion=dict(dispersion=disp, instance_dispersion=inst),
                feature_shape=[dim, 12, 12], **extra)


SEEDS = [  # two seeds of a control (C), its equal-width control (2C) and CoTAP (C, 2C)
    [_row('ctl', 'C', 0.10, 0.20, 0.30, step_time=1.0, peak_mb=100.0),
     _row('ew', '2C', 0.12, 0.21, 0.29, dim=192),
     _row('cotap', 'C', 0.13, 0.19, 0.33, step_time=3.0, peak_mb=150.0),
     _row('cotap', '2C', 0.15, 0.22, 0.31, dim=192)],
    [_row('ctl', 'C', 0.14, 0.24, 0.34, step_time=2.0, peak_mb=110.0),
     _row('ew', '2C', 0.15, 0.22, 0.36, dim=192),
     _row('cotap', 'C', 0.15, 0.25, 0.35, step_time=3.0, peak_mb=160.0),
     _row('cotap', '2C', 0.16, 0.20, 0.37, dim=192)],
]


def test_fmt_mean_std_uses_the_population_std():
    assert fmt_mean_std([1.0, 3.0]) == '2.00 +- 1.00'
    assert fmt_mean_std([0.1234], 3) == '0.123'
    assert fmt_mean_std([]) == '-' and fmt_mean_std([float('nan')]) == '-'


def test_aggregate_rows_collects_each_metric_per_seed_in_percent():
    agg = aggregate_rows(SEEDS)
    assert list(agg) == ['ctl [C]', 'ew [2C]', 'cotap [C]', 'cotap [2C]']
    assert agg['cotap [2C]']['dim'] == 192 and agg['ctl [C]']['features'] == 'C'
    assert np.allclose(agg['ctl [C]']['mIoU'], [10.0, 14.0])
    assert np.allclose(agg['ew [2C]']['nn_mIoU'], [29.0, 36.0])
    assert np.allclose(agg['cotap [C]']['dispersion'], [0.9, 0.9])
    assert agg['cotap [C]']['peak_mb'] == [150.0, 160.0] and 'step_time' not in agg['ew [2C]']


def test_rows_table_has_every_protocol_and_cost_ratios_to_the_control():
    table = rows_table(aggregate_rows(SEEDS), 'ctl [C]')
    lines = table.splitlines()
    assert 'linear probe mIoU' in lines[0] and 'overclustering mIoU' in lines[0]
    assert 'NN retrieval mIoU' in lines[0] and 'x control' in lines[0]
    cotap_c = next(line for line in lines if line.startswith('| cotap | C (96-d)'))
    # step time 3.0 against the control's mean 1.5: 2.00x; memory 155 / 105 = 1.48x
    assert '| 3.000 +- 0.000 | 2.00 |' in cotap_c and '| 155 +- 5 | 1.48 |' in cotap_c
    assert '| 14.00 +- 1.00 |' in cotap_c  # linear mIoU mean +- std over the two seeds
    ew = next(line for line in lines if line.startswith('| ew | 2C (192-d)'))
    assert ew.endswith('| - | - | - | - |')  # no training cost of its own


def test_paired_differences_are_per_seed():
    agg = aggregate_rows(SEEDS)
    table = paired_differences(agg, [('C vs C', 'cotap [C]', 'ctl [C]'),
                                     ('2C vs 2C', 'cotap [2C]', 'ew [2C]'),
                                     ('missing', 'nope [C]', 'ctl [C]')])
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, two pairs (the missing one is left out)
    # linear: seed diffs 3 and 1 -> +2.00 +- 1.00, ahead on both; OC: -1 and +1 -> 0
    assert '| C vs C | +2.00 +- 1.00 (2/2 seeds ahead) | +0.00 +- 1.00 (1/2 seeds ahead) |' \
        in lines[2]
    # 2C vs 2C NN retrieval: 31 - 29 = 2, 37 - 36 = 1 -> +1.50 +- 0.50
    assert lines[3].endswith('| +1.50 +- 0.50 (2/2 seeds ahead) |')
    assert '| -0.50 +- 1.50 (1/2 seeds ahead) |' in lines[3]  # OC: +1 and -2


def test_per_seed_table():
    table = per_seed_table(aggregate_rows(SEEDS), 'oc_mIoU', [0, 1])
    assert table.splitlines()[0] == '| model | features | seed 0 | seed 1 |'
    assert '| ew | 2C | 21.00 | 22.00 |' in table


def test_write_section_replaces_keeps_and_appends(tmp_path):
    path = str(tmp_path / 'sub' / 'benchmarks.md')
    write_section(path, '## A\n\nfirst\n')  # a missing file (and folder) is created with the title
    assert open(path).read() == '# Benchmarks\n\n## A\n\nfirst\n'
    with open(path, 'a') as f:
        f.write('\n## B\n\nkept\n### B.1\n\nkept too\n')
    write_section(path, '## A\n\nsecond\n')  # replaced in place, B untouched
    assert open(path).read() == ('# Benchmarks\n\n## A\n\nsecond\n\n## B\n\nkept\n### B.1\n\n'
                                 'kept too\n')
    write_section(path, '## B\n\nnew b\n')  # the last section: replaced to the end, sub-sections too
    write_section(path, '## C\n\nc\n')  # a new title goes at the end
    assert open(path).read() == '# Benchmarks\n\n## A\n\nsecond\n\n## B\n\nnew b\n\n## C\n\nc\n'


@pytest.mark.parametrize('values', [[math.nan, math.nan]])
def test_all_nan_values_print_a_dash(values):
    assert fmt_mean_std(values) == '-'
