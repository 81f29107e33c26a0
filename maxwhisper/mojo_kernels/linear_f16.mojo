# The decoder's projections, y = x @ W + b (optionally GELU(y)), with W kept in float16 and
# widened to float32 in registers; products and sums in float32.
#
# Why: a decoding step multiplies one row (or one row per beam) by every weight matrix of
# the decoder and by the (d, n_vocab) token embedding, so the step is bound by the bytes it
# reads, and MAX's generic matmul streams about half of what this machine can at M = 1. The
# released Whisper weights are float16, so storing them in float16 halves the bytes and
# changes no weight value. (MAX's own float16 matmul has no native half-precision math on
# CPUs without it and is ~100x slower, hence a kernel.)
#
# Layout: W is packed as panels of 64 output columns, (P, K, 64) with P = ceil(N / 64),
# zero-padded (the output has 64 P columns; the graph drops the padding), so one panel is one
# contiguous run of K x 128 bytes: a GEMV streams every panel front to back, which the hardware
# prefetcher follows at full speed. A block of rows keeps its float32 sums in registers while
# the panel's rows stream through, so each weight is widened once and used for every row of the
# block (the beams; or the prompt rows of a prefill, where the block makes this a small GEMM
# micro-kernel). A block is up to six rows, as wide as the target's vector registers allow
# (`registers.block_columns`): with AVX-512 always the panel's 64 columns; with AVX2 one row
# takes the whole panel, two or three rows 32 columns and six rows 16 (the panel in passes),
# and four or five rows go as three and the rest at 32 columns. Measured on a Zen 3 with AVX2,
# the output projection: 200 rows 189 -> 63-87 ms, 5 rows (as 3 + 2) 6.1 -> 4.2-5.6 ms (as
# 5 x 16 columns 6.4-7.0). Every sum runs over k in the same order whatever the block, so the
# outputs are the same bits on every target. Panels are shared out over the physical cores.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import erf
from std.sys.info import num_physical_cores

from .registers import LANES, block_columns


comptime PANEL = 64  # output columns per panel: 4 AVX-512 vectors of float32
comptime REG_ROWS = 6  # rows of a full block (a prefill's prompt rows)
# Work below this runs on one core (see run_linear). 2 MB was chosen on the AVX-512 machine,
# where one core streams a decoding step's small projections at 25 GB/s. With AVX2 (a Zen 3:
# one core ~10 GB/s, a multi-row block ~50 GFLOP/s) sharing even the smallest of tiny's
# projections paid: a five-beam step 14.7 -> 13.8 ms median, a two-token step 8.9 -> 8.3, a
# one-token step unchanged (6.7 / 6.6; seven alternated pairs of processes).
comptime SERIAL_BYTES = 2 * 1024 * 1024 if LANES >= 16 else 256 * 1024


@extensibility.register("maxwhisper_linear_f16")
struct LinearF16:
    """Y (R, N) float32 = x (R, K) float32 @ W (K, N) + bias, W packed (P, K, 64) float16."""

    @staticmethod
    def execute[target: StaticString](
        y: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        weight: InputTensor[dtype=DType.float16, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_linear_f16 is a CPU kernel")
        run_linear[False](y, x, weight, bias)


@extensibility.register("maxwhisper_linear_f16_gelu")
struct LinearF16Gelu:
    """GELU(x @ W + bias) (exact, erf-based GELU as Whisper's MLP), W packed as above."""

    @staticmethod
    def execute[target: StaticString](
        y: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        weight: InputTensor[dtype=DType.float16, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_linear_f16_gelu is a CPU kernel")
        run_linear[True](y, x, weight, bias)


@always_inline
def finish[gelu: Bool, cols: Int](acc: SIMD[DType.float32, cols], b: SIMD[DType.float32, cols]
                                  ) -> SIMD[DType.float32, cols]:
    var v = acc + b
    comptime if gelu:
        return v * 0.5 * (1.0 + erf(v * 0.7071067811865476))
    return v


def run_linear[gelu: Bool](
    y: OutputTensor[dtype=DType.float32, rank=2, ...],
    x: InputTensor[dtype=DType.float32, rank=2, ...],
    weight: InputTensor[dtype=DType.float16, rank=3, ...],
    bias: InputTensor[dtype=DType.float32, rank=1, ...],
) raises:
    var rows = x.dim_size(0)
    var k_dim = x.dim_size(1)
    var n_dim = y.dim_size(1)
    var panels = weight.dim_size(0)
    if (weight.dim_size(2) != PANEL or weight.dim_size(1) != k_dim or panels * PANEL != n_dim
            or bias.dim_size(0) != n_dim or y.dim_size(0) != rows):
        raise Error("maxwhisper_linear_f16: x (R, K), weight (P, K, 64), bias (64 P), y (R, 64 P)")
    var xp = x.unsafe_ptr()
    var wp = weight.unsafe_ptr()
    var bp = bias.unsafe_ptr()
    var out = y.unsafe_ptr()
    # A small product (a decoding step's layer projection: under a megabyte of weights, a
    # few tens of microseconds) costs less on one core than waking the others to share it.
    var work_bytes = panels * k_dim * PANEL * 2 + rows * k_dim * panels * PANEL // 8
    var workers = min(num_physical_cores(), panels) if work_bytes > SERIAL_BYTES else 1

    @always_inline
    def block[rb: Int, cols: Int](r: Int, panel_index: Int, c0: Int) {imm}:
        # rb rows x `cols` columns (from column c0 of the panel) of sums in registers
        var n = panel_index * PANEL + c0
        var panel = wp.unsafe_offset(panel_index * k_dim * PANEL + c0)
        var acc = Array[SIMD[DType.float32, cols], rb](fill=0)
        var xr = xp.unsafe_offset(r * k_dim)
        for k in range(k_dim):
            var w = panel.unsafe_load[width=cols](k * PANEL).cast[DType.float32]()
            comptime for i in range(rb):
                acc[i] += w * xr.unsafe_load(i * k_dim + k)
        var b = bp.unsafe_load[width=cols](n)
        comptime for i in range(rb):
            out.unsafe_store[width=cols]((r + i) * n_dim + n, finish[gelu, cols](acc[i], b))

    @always_inline
    def columns_block[rb: Int](r: Int, panel_index: Int) {imm}:
        # rb rows of one panel, in passes as wide as the registers hold (see the header)
        comptime cols = block_columns[rb, PANEL]()
        comptime for c0 in range(0, PANEL, cols):
            block[rb, cols](r, panel_index, c0)

    @always_inline
    def rows_block[rb: Int](r: Int, panel_index: Int) {imm}:
        # A partial block of four or five rows goes as three rows and the rest where that keeps
        # the wider passes of three rows (AVX2: 32 columns, not 16).
        comptime if 3 < rb < REG_ROWS and block_columns[rb, PANEL]() < block_columns[3, PANEL]():
            columns_block[3](r, panel_index)
            columns_block[rb - 3](r + 3, panel_index)
        else:
            columns_block[rb](r, panel_index)

    def work(worker: Int) {imm}:
        for p in range(panels * worker // workers, panels * (worker + 1) // workers):
            var r = 0
            while rows - r >= REG_ROWS:  # the block's rows share each widened weight vector
                rows_block[REG_ROWS](r, p)
                r += REG_ROWS
            var left = rows - r  # 0 to 5 rows: one more block (the beams fit in one)
            if left == 5:
                rows_block[5](r, p)
            elif left == 4:
                rows_block[4](r, p)
            elif left == 3:
                rows_block[3](r, p)
            elif left == 2:
                rows_block[2](r, p)
            elif left == 1:
                rows_block[1](r, p)

    sync_parallelize(work, workers)
