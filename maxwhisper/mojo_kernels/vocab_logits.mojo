# The decoder's output projection, logits = h @ E^T, with the token embedding E kept in
# float16 and widened to float32 in registers.
#
# Why: every decoding step reads the whole (d, n_vocab) embedding (80 MB in float32 for tiny),
# so the step is bound by memory traffic. The released Whisper weights are float16, so storing
# E in float16 halves the bytes and changes no weight value; products and sums stay float32.
# MAX's own float16 matmul has no native half-precision math on CPUs without it (100x slower),
# hence this kernel.
#
# Layout: E is stored (d, V) row-major. Columns are split into tiles of TILE; each tile's
# output rows (R x TILE float32) stay in L1 while four embedding rows at a time stream through
# it: long contiguous runs that the hardware prefetcher follows, each weight widened once and
# used for every output row (the beams). Tiles are shared out over the CPU cores.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.sys.info import num_physical_cores


@extensibility.register("maxwhisper_vocab_logits")
struct VocabLogits:
    """Logits (R, V) float32 = h (R, d) float32 @ embedding (d, V) float16. d % 4 == 0."""

    @staticmethod
    def execute[target: StaticString](
        logits: OutputTensor[dtype=DType.float32, rank=2, ...],
        h: InputTensor[dtype=DType.float32, rank=2, ...],
        embedding: InputTensor[dtype=DType.float16, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_vocab_logits is a CPU kernel")
        var rows = h.dim_size(0)
        var d = h.dim_size(1)
        var vocab = embedding.dim_size(1)
        if d % 4 != 0 or embedding.dim_size(0) != d:
            raise Error("maxwhisper_vocab_logits: h (R, d) and embedding (d, V) with d % 4 == 0")
        var hp = h.unsafe_ptr()
        var ep = embedding.unsafe_ptr()
        var out = logits.unsafe_ptr()
        comptime W = 16  # float32 lanes per vector (AVX-512; two AVX2 registers elsewhere)
        comptime TILE = 512
        var tiles = (vocab + TILE - 1) // TILE
        var workers = num_physical_cores()

        def work(worker: Int) {imm}:
            for tile in range(tiles * worker // workers, tiles * (worker + 1) // workers):
                var n = tile * TILE
                var cols = min(TILE, vocab - n)
                var vector_cols = cols - cols % W
                for r in range(rows):
                    for j in range(cols):
                        out.unsafe_store(r * vocab + n + j, Float32(0))
                for k in range(0, d, 4):
                    var e0 = ep.unsafe_offset(k * vocab + n)
                    var e1 = e0.unsafe_offset(vocab)
                    var e2 = e1.unsafe_offset(vocab)
                    var e3 = e2.unsafe_offset(vocab)
                    for j in range(0, vector_cols, W):
                        var w0 = e0.unsafe_load[width=W](j).cast[DType.float32]()
                        var w1 = e1.unsafe_load[width=W](j).cast[DType.float32]()
                        var w2 = e2.unsafe_load[width=W](j).cast[DType.float32]()
                        var w3 = e3.unsafe_load[width=W](j).cast[DType.float32]()
                        for r in range(rows):
                            var x = hp.unsafe_offset(r * d + k)
                            var o = out.unsafe_offset(r * vocab + n + j)
                            var acc = o.unsafe_load[width=W](0)
                            acc += w0 * x.unsafe_load(0) + w1 * x.unsafe_load(1)
                            acc += w2 * x.unsafe_load(2) + w3 * x.unsafe_load(3)
                            o.unsafe_store[width=W](0, acc)
                    for j in range(vector_cols, cols):  # the last tile's ragged edge
                        for r in range(rows):
                            var x = hp.unsafe_offset(r * d + k)
                            var o = out.unsafe_offset(r * vocab + n + j)
                            var acc = o.unsafe_load(0)
                            acc += e0.unsafe_load(j).cast[DType.float32]() * x.unsafe_load(0)
                            acc += e1.unsafe_load(j).cast[DType.float32]() * x.unsafe_load(1)
                            acc += e2.unsafe_load(j).cast[DType.float32]() * x.unsafe_load(2)
                            acc += e3.unsafe_load(j).cast[DType.float32]() * x.unsafe_load(3)
                            o.unsafe_store(0, acc)

        sync_parallelize(work, workers)
