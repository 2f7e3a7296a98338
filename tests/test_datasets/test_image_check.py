"""What counts as an unreadable image."""
import io

import numpy as np
from PIL import Image

from cotap_mm.datasets.image_check import image_problem, list_images, scan_images


def _jpeg(size=32) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format='JPEG')
    return buf.getvalue()


def test_problems_are_named(tmp_path):
    data = _jpeg()
    files = {'ok.jpg': data, 'empty.jpg': b'', 'page.jpg': b'<html>not found</html>',
             'cut.jpg': data[:len(data) // 2], 'notes.txt': b''}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    assert image_problem(str(tmp_path / 'ok.jpg')) is None
    assert image_problem(str(tmp_path / 'empty.jpg')) == 'empty file (0 bytes)'
    assert 'not decodable' in image_problem(str(tmp_path / 'page.jpg'))
    assert image_problem(str(tmp_path / 'cut.jpg')) is not None  # a truncated download
    assert 'cannot open' in image_problem(str(tmp_path / 'missing.jpg'))

    paths = list_images(str(tmp_path))
    assert [p.rsplit('/', 1)[1] for p in paths] == ['cut.jpg', 'empty.jpg', 'ok.jpg', 'page.jpg']
    bad = scan_images(paths, workers=2, progress=False)
    assert [(p.rsplit('/', 1)[1], why.split(' ')[0]) for p, why in bad] == [
        ('cut.jpg', 'not'), ('empty.jpg', 'empty'), ('page.jpg', 'not')]
