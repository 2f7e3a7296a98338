from .boxes import (BoxLike, box_area, box_intersection, boxes_to_grid, overlap_in_crop_coords,
                    sample_grid_box)
from .sampling import RNG, as_hw, check_range, rand_int, rand_uniform

__all__ = ['BoxLike', 'box_area', 'box_intersection', 'boxes_to_grid', 'overlap_in_crop_coords',
           'sample_grid_box', 'RNG', 'as_hw', 'check_range', 'rand_int', 'rand_uniform']
