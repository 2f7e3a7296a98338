"""Parts the algorithms and losses share (no registered modules): queues, view layout, region
pooling, the de-coupling / de-positioning add-ons and building submodules from configs."""
