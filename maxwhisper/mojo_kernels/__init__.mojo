# maxwhisper's custom MAX Graph kernels (a Mojo source package; see linear_f16.mojo).
