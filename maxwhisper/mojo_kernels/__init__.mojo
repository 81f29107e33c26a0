# maxwhisper's custom MAX Graph kernels (a Mojo source package; see vocab_logits.mojo).
