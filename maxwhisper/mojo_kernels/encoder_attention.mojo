# The encoder's self-attention: for every window, head and position,
# softmax(q . K^T / sqrt(64)) over the window's T positions, times V, read straight from the
# fused q/k/v projection (B, T, 3 d) and written in the merged-heads layout (B, T, d).
#
# Why: the encoder's attention (T = 1500 queries and keys, 6 heads for tiny) is the part of a
# 30-s window furthest from this machine's matmul rate: MAX fuses matmul-softmax-matmul itself,
# but with the head split and merge around it the block's attention ran at ~125 GFLOP/s against
# ~185 for its projections. Here the head split and merge are index arithmetic, and the two
# products are register-blocked like the projections' kernel: a micro-block of six query rows
# keeps 6 x 64 float32 sums in registers while the head's keys or values stream through, so
# each loaded vector serves six rows. A work item is 24 query rows of one head: the four
# micro-blocks share each 64-key tile of K^T while it is in L1, and the item's scores (24 x T)
# stay in L2 between the softmax and the value product. Items are shared out over the physical
# cores in head order, so a core packs each head's K^T and V once, into its own buffers: K^T in
# panels of a micro-block's width (one panel's 64 x REG values contiguous), V as (T, 64). Read
# in place, both strode by a row of qkv or of K^T (4.5-6 KB), which put a tile's 64 rows in two
# to eight of L1's 64 sets and evicted them before their reuse: packing took a tiny block from
# 55 to 40 ms on a Zen 3 (scores ~25 -> 19 ms, value product ~24 -> 17). The micro-block's
# width follows the target's vector registers (`registers.block_columns`): with AVX2 six rows x
# 64 sums would need 48 registers and spill, so there it is six rows x 16 sums, the tile and
# the head's 64 columns in passes (81 -> 43-53 ms before packing; three rows x 32 took 58);
# each score and each output is still summed in the same order, so the same bits on every
# target. Every value is float32; the weights are normalised after the value product (one
# multiply per output instead of one per score).

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import exp
from std.memory import alloc
from std.sys.info import num_physical_cores

from .registers import block_columns


comptime HD = 64  # Whisper's head width, every model size
comptime TILE = 64  # key positions a tile of K^T and of the scores holds
comptime MICRO = 6  # query rows of a micro-block
comptime REG = block_columns[MICRO, TILE]()  # a micro-block row's sums in registers
comptime ITEM = 24  # query rows of a work item (4 micro-blocks)


@extensibility.register("maxwhisper_encoder_attention")
struct EncoderAttention:
    """Out (B, T, H*64) from the fused projection qkv (B, T, 3*H*64) = [q | k | v]."""

    @staticmethod
    def execute[target: StaticString](
        attended: OutputTensor[dtype=DType.float32, rank=3, ...],
        qkv: InputTensor[dtype=DType.float32, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_encoder_attention is a CPU kernel")
        var batch = qkv.dim_size(0)
        var length = qkv.dim_size(1)
        var width = qkv.dim_size(2)
        var d_model = attended.dim_size(2)
        if (width != 3 * d_model or d_model % HD != 0 or attended.dim_size(0) != batch
                or attended.dim_size(1) != length or length == 0):
            raise Error("maxwhisper_encoder_attention: qkv (B, T, 3 d), out (B, T, d), "
                        + "d a multiple of 64, T > 0")
        var heads = d_model // HD
        var per_head = (length + ITEM - 1) // ITEM
        var items = batch * heads * per_head
        var padded = ((length + TILE - 1) // TILE) * TILE  # K^T rows (zeros after T), score rows
        var xp = qkv.unsafe_ptr()
        var op = attended.unsafe_ptr()
        var scale = Float32(0.125)  # 1 / sqrt(64)
        var workers = min(num_physical_cores(), items)

        def work(worker: Int) {imm}:
            # this head's K^T in panels of REG keys: key t's value d at (t // REG, d, t % REG)
            var kt = alloc[Float32](HD * padded, alignment=64)
            var vp = alloc[Float32](HD * padded, alignment=64)  # this head's V (T, 64)
            var scores = alloc[Float32](ITEM * padded, alignment=64)
            var totals = alloc[Float32](ITEM)  # each row's softmax denominator
            var sums = alloc[Float32](ITEM * HD, alignment=64)  # the rows' value sums so far
            var packed = -1  # the (window, head) pair whose K^T and V are in kt and vp

            @always_inline
            def score_rows[rb: Int](q_row: Int, s_row: Int, h: Int, a0: Int) {imm}:
                # rb query rows (absolute row q_row of qkv) against keys a0..a0+TILE-1
                for a in range(a0, a0 + TILE, REG):
                    var panel = kt.unsafe_offset(a * HD)  # K^T's columns a..a+REG-1, packed
                    var s = Array[SIMD[DType.float32, REG], rb](fill=0)
                    for d in range(HD):
                        var k = panel.unsafe_load[width=REG](d * REG)
                        comptime for i in range(rb):
                            s[i] += k * xp.unsafe_load((q_row + i) * width + h * HD + d)
                    comptime for i in range(rb):
                        scores.unsafe_store[width=REG]((s_row + i) * padded + a, s[i] * scale)

            @always_inline
            def value_rows[rb: Int](s_row: Int, t0: Int, t1: Int, window: Int, h: Int) {imm}:
                # rb rows' weighted sums over keys t0..t1-1 of V's rows, REG of a row's 64
                # sums at a time in registers, carried between key chunks in `sums`
                comptime for c in range(0, HD, REG):
                    var acc = Array[SIMD[DType.float32, REG], rb](fill=0)
                    comptime for i in range(rb):
                        acc[i] = sums.unsafe_load[width=REG]((s_row + i) * HD + c)
                    var vh = vp.unsafe_offset(c)
                    for t in range(t0, t1):
                        var v = vh.unsafe_load[width=REG](t * HD)
                        comptime for i in range(rb):
                            acc[i] += v * scores.unsafe_load((s_row + i) * padded + t)
                    comptime for i in range(rb):
                        sums.unsafe_store[width=REG]((s_row + i) * HD + c, acc[i])

            for item in range(items * worker // workers, items * (worker + 1) // workers):
                var pair = item // per_head
                var window = pair // heads
                var h = pair % heads
                if pair != packed:  # K^T and V of this head, contiguous
                    for t in range(padded):  # keys past T are zeros in K^T
                        var panel = kt.unsafe_offset((t // REG) * REG * HD + t % REG)
                        if t < length:
                            var kp = xp.unsafe_offset((window * length + t) * width + d_model
                                                      + h * HD)
                            for d in range(HD):
                                panel.unsafe_store(d * REG, kp.unsafe_load(d))
                            vp.unsafe_store[width=HD](t * HD, kp.unsafe_load[width=HD](d_model))
                        else:
                            for d in range(HD):
                                panel.unsafe_store(d * REG, 0)
                    packed = pair
                var first = (item % per_head) * ITEM  # the item's first query position
                var rows = min(ITEM, length - first)
                var q_row = window * length + first  # its row in qkv (and in out)
                var r = 0
                for a0 in range(0, padded, TILE):  # the scores, a tile of keys at a time (in L1)
                    r = 0
                    while r < rows:  # for every micro-block
                        var rb = min(MICRO, rows - r)
                        if rb == 6:
                            score_rows[6](q_row + r, r, h, a0)
                        elif rb == 5:
                            score_rows[5](q_row + r, r, h, a0)
                        elif rb == 4:
                            score_rows[4](q_row + r, r, h, a0)
                        elif rb == 3:
                            score_rows[3](q_row + r, r, h, a0)
                        elif rb == 2:
                            score_rows[2](q_row + r, r, h, a0)
                        else:
                            score_rows[1](q_row + r, r, h, a0)
                        r += rb
                # softmax numerators in place, the denominators aside
                for i in range(rows):
                    var row = scores.unsafe_offset(i * padded)
                    var top = Float32.MIN
                    var end = length - length % TILE
                    for a in range(0, end, TILE):
                        top = max(top, row.unsafe_load[width=TILE](a).reduce_max())
                    for a in range(end, length):
                        top = max(top, row.unsafe_load(a))
                    var lanes = SIMD[DType.float32, TILE](0)  # partial sums, lane by lane
                    for a in range(0, end, TILE):
                        var e = exp(row.unsafe_load[width=TILE](a) - top)
                        lanes += e
                        row.unsafe_store[width=TILE](a, e)
                    var total = lanes.reduce_add()
                    for a in range(end, length):
                        var e = exp(row.unsafe_load(a) - top)
                        total += e
                        row.unsafe_store(a, e)
                    totals.unsafe_store(i, total)
                # out = weights @ V: a chunk of V's rows at a time (in L1) for every micro-block
                for i in range(rows * HD):
                    sums.unsafe_store(i, 0)
                for t0 in range(0, length, TILE):
                    var t1 = min(t0 + TILE, length)
                    r = 0
                    while r < rows:
                        var rb = min(MICRO, rows - r)
                        if rb == 6:
                            value_rows[6](r, t0, t1, window, h)
                        elif rb == 5:
                            value_rows[5](r, t0, t1, window, h)
                        elif rb == 4:
                            value_rows[4](r, t0, t1, window, h)
                        elif rb == 3:
                            value_rows[3](r, t0, t1, window, h)
                        elif rb == 2:
                            value_rows[2](r, t0, t1, window, h)
                        else:
                            value_rows[1](r, t0, t1, window, h)
                        r += rb
                for i in range(rows):
                    var inverse = 1 / totals.unsafe_load(i)
                    var dst = op.unsafe_offset((q_row + i) * d_model + h * HD)
                    dst.unsafe_store[width=HD](0, sums.unsafe_load[width=HD](i * HD) * inverse)
            kt.unsafe_free()
            vp.unsafe_free()
            scores.unsafe_free()
            totals.unsafe_free()
            sums.unsafe_free()

        sync_parallelize(work, workers)
