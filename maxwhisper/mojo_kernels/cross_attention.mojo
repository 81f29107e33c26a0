# The decoder's cross-attention over audio windows: for every query row and head,
# weights = softmax(q . K^T / sqrt(hd)) over its window's A positions and out = weights @ V.
# The R rows come in G equal groups, group g attending to window g: the beams of one window
# (G = 1) or the chunks of a batch (G = R, or R / beams).
#
# Why: a decoding step reads every layer's cross keys and values (1500 positions x d each,
# 18 MB in float32 for tiny), so the step is bound by that read; MAX's batched matmul at one
# query row streams it at about half the machine's rate. Here each head's K^T (hd, A) and
# V (A, hd) stream once, front to back, for a block of up to six query rows (the beams share
# the window): the block's scores of 64 positions at a time stay in registers while K^T's hd
# rows stream through, and its output sums (64 per row) while V's rows stream through. Heads are
# shared out over the physical cores; every value is float32, as in MAX's own path. The
# register blocks follow the target: with AVX2 (16 registers of 8 floats) a block's scores
# and output sums are held 16 a row at a time (12 registers for six rows), where AVX-512 holds
# 64 (24 registers); every sum runs in the same order, so the same bits.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import exp, sqrt
from std.sys.info import num_physical_cores

from .registers import block_columns


comptime HD = 64  # Whisper's head width, every model size
comptime CHUNK = 64  # audio positions a vectorised chunk of scores holds
comptime REG_ROWS = 6  # rows of a block (the beams of a window fit in one)
comptime REG = block_columns[REG_ROWS, CHUNK]()  # a block row's scores in registers
comptime STREAMED_ROWS = 2  # up to this many rows, K^T is read as one stream (see `block`)


@extensibility.register("maxwhisper_cross_attention")
struct CrossAttention:
    """Out (R, H, 64) and weights (H, R, A) from q (R, H, 64), K^T (G, H, 64, A),
    V (G, H, A, 64); rows g*R/G ... (g+1)*R/G - 1 attend to window g."""

    @staticmethod
    def execute[target: StaticString](
        attended: OutputTensor[dtype=DType.float32, rank=3, ...],
        weights: OutputTensor[dtype=DType.float32, rank=3, ...],
        q: InputTensor[dtype=DType.float32, rank=3, ...],
        keys_t: InputTensor[dtype=DType.float32, rank=4, ...],
        values: InputTensor[dtype=DType.float32, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_cross_attention is a CPU kernel")
        var rows = q.dim_size(0)
        var heads = q.dim_size(1)
        var groups = keys_t.dim_size(0)
        var positions = keys_t.dim_size(3)
        if (q.dim_size(2) != HD or keys_t.dim_size(1) != heads or keys_t.dim_size(2) != HD
                or values.dim_size(0) != groups or values.dim_size(1) != heads
                or values.dim_size(2) != positions or values.dim_size(3) != HD
                or weights.dim_size(0) != heads or weights.dim_size(1) != rows
                or weights.dim_size(2) != positions or groups == 0 or rows % groups != 0):
            raise Error("maxwhisper_cross_attention: q (R, H, 64), K^T (G, H, 64, A), "
                        + "V (G, H, A, 64), R a multiple of G")
        var group_rows = rows // groups
        var qp = q.unsafe_ptr()
        var kp = keys_t.unsafe_ptr()
        var vp = values.unsafe_ptr()
        var op = attended.unsafe_ptr()
        var wp = weights.unsafe_ptr()
        var scale = Float32(1.0) / sqrt(Float32(HD))
        var vector_end = positions - positions % CHUNK
        var workers = min(num_physical_cores(), groups * heads)

        @always_inline
        def block[rb: Int](g: Int, h: Int, r0: Int) {imm}:
            # rb query rows of head h, all in group g: every K^T and V vector of window g
            # loaded once serves all rb rows
            var kh = kp.unsafe_offset((g * heads + h) * HD * positions)
            var vh = vp.unsafe_offset((g * heads + h) * positions * HD)
            var top = Array[Float32, rb](fill=Float32.MIN)
            comptime if rb <= STREAMED_ROWS:
                # few rows: each row's scores add up in its weights row (6 KB, in L1) while
                # K^T is read row after row, one sequential stream; the register form below
                # reads 64 strided streams at once, which the prefetchers do not keep up
                # with when there is little arithmetic per byte. The same sums in the same
                # order, so the same bits (measured on 8 windows x 1 row: 5.2-5.8 against
                # 6.8-7.8 ms for four layers; slower from 4 rows on)
                comptime for i in range(rb):
                    var wr = wp.unsafe_offset((h * rows + r0 + i) * positions)
                    for a in range(positions):
                        wr.unsafe_store(a, Float32(0))
                for d in range(HD):
                    var kd = kh.unsafe_offset(d * positions)
                    comptime for i in range(rb):
                        var qd = qp.unsafe_load(((r0 + i) * heads + h) * HD + d)
                        var wr = wp.unsafe_offset((h * rows + r0 + i) * positions)
                        for a in range(0, vector_end, CHUNK):
                            var k = kd.unsafe_load[width=CHUNK](a)
                            wr.unsafe_store[width=CHUNK](a, wr.unsafe_load[width=CHUNK](a) + k * qd)
                        for a in range(vector_end, positions):
                            wr.unsafe_store(a, wr.unsafe_load(a) + kd.unsafe_load(a) * qd)
                comptime for i in range(rb):
                    var wr = wp.unsafe_offset((h * rows + r0 + i) * positions)
                    for a in range(0, vector_end, CHUNK):
                        var scaled = wr.unsafe_load[width=CHUNK](a) * scale
                        top[i] = max(top[i], scaled.reduce_max())
                        wr.unsafe_store[width=CHUNK](a, scaled)
                    for a in range(vector_end, positions):
                        var scaled = wr.unsafe_load(a) * scale
                        top[i] = max(top[i], scaled)
                        wr.unsafe_store(a, scaled)
            else:
                # scores, REG positions at a time in registers, K^T's rows streaming
                for a in range(0, vector_end, REG):
                    var s = Array[SIMD[DType.float32, REG], rb](fill=0)
                    for d in range(HD):
                        var k = kh.unsafe_load[width=REG](d * positions + a)
                        comptime for i in range(rb):
                            s[i] += k * qp.unsafe_load(((r0 + i) * heads + h) * HD + d)
                    comptime for i in range(rb):
                        var scaled = s[i] * scale
                        top[i] = max(top[i], scaled.reduce_max())
                        wp.unsafe_store[width=REG]((h * rows + r0 + i) * positions + a, scaled)
                for a in range(vector_end, positions):  # the ragged end
                    comptime for i in range(rb):
                        var s = Float32(0)
                        for d in range(HD):
                            s += kh.unsafe_load(d * positions + a) * qp.unsafe_load(
                                ((r0 + i) * heads + h) * HD + d)
                        s *= scale
                        top[i] = max(top[i], s)
                        wp.unsafe_store((h * rows + r0 + i) * positions + a, s)
            # softmax in place, one row at a time
            comptime for i in range(rb):
                var wr = wp.unsafe_offset((h * rows + r0 + i) * positions)
                var total = Float32(0)
                for a in range(0, vector_end, CHUNK):
                    var e = exp(wr.unsafe_load[width=CHUNK](a) - top[i])
                    total += e.reduce_add()
                    wr.unsafe_store[width=CHUNK](a, e)
                for a in range(vector_end, positions):
                    var e = exp(wr.unsafe_load(a) - top[i])
                    total += e
                    wr.unsafe_store(a, e)
                for a in range(0, vector_end, CHUNK):
                    wr.unsafe_store[width=CHUNK](a, wr.unsafe_load[width=CHUNK](a) / total)
                for a in range(vector_end, positions):
                    wr.unsafe_store(a, wr.unsafe_load(a) / total)
            # out = weights @ V: `cols` of the hd = 64 sums per row in registers, V's rows
            # streaming (one row: all 64, V read once front to back; AVX2: 32 for two or
            # three rows, 16 for more, V's rows in passes; `registers.block_columns`)
            comptime cols = block_columns[rb, HD]()
            comptime for c in range(0, HD, cols):
                var acc = Array[SIMD[DType.float32, cols], rb](fill=0)
                for a in range(positions):
                    var v = vh.unsafe_load[width=cols](a * HD + c)
                    comptime for i in range(rb):
                        acc[i] += v * wp.unsafe_load((h * rows + r0 + i) * positions + a)
                comptime for i in range(rb):
                    op.unsafe_store[width=cols](((r0 + i) * heads + h) * HD + c, acc[i])

        def work(worker: Int) {imm}:
            var pairs = groups * heads  # (window, head) pairs shared out over the cores
            for pair in range(pairs * worker // workers, pairs * (worker + 1) // workers):
                var g = pair // heads
                var h = pair % heads
                var r = g * group_rows
                var end = r + group_rows
                while end - r >= REG_ROWS:
                    block[REG_ROWS](g, h, r)
                    r += REG_ROWS
                var left = end - r  # 0 to 5 rows: one more block (the beams fit in one)
                if left == 5:
                    block[5](g, h, r)
                elif left == 4:
                    block[4](g, h, r)
                elif left == 3:
                    block[3](g, h, r)
                elif left == 2:
                    block[2](g, h, r)
                elif left == 1:
                    block[1](g, h, r)

        sync_parallelize(work, workers)
