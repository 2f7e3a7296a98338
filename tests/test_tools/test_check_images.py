"""tools/misc/check_images.py lists the bad files of a folder (exit status 1 when there are)."""
import os.path as osp

from cotap_test_helpers.tiny_runs import write_image_folder
from cotap_test_helpers.tool_runs import load_tool


def test_lists_bad_files_in_parallel_with_progress(tmp_path, capfd):
    tool = load_tool('tools/misc/check_images.py')
    root = write_image_folder(str(tmp_path / 'data' / 'sub'), num=6, size=24)
    open(osp.join(root, 'img_002.png'), 'wb').close()
    with open(osp.join(root, 'img_004.png'), 'wb') as f:
        f.write(b'GIF89a garbage')
    out = tmp_path / 'bad.txt'
    assert tool.main([str(tmp_path / 'data'), '--workers', '2', '--out', str(out)]) == 1
    text = capfd.readouterr().out
    assert f'BAD {root}/img_002.png: empty file (0 bytes)' in text
    assert f'BAD {root}/img_004.png: not decodable' in text
    assert '2 of 6 images unreadable' in text and '6/6' in text  # the progress bar
    assert out.read_text().splitlines() == [f'{root}/img_002.png', f'{root}/img_004.png']

    good = write_image_folder(str(tmp_path / 'good'), num=2, size=24)
    assert tool.main([good, '--no-progress']) == 0
    assert '0 of 2 images unreadable' in capfd.readouterr().out
