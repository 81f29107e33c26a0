# Whisper's projections, y = x @ W + b (optionally GELU(y)), with W kept in float16 and
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
#
# The encoder (1500 rows a window) runs on the same weights through `gemm`, blocked like a
# BLAS GEMM: rows shared out over the cores, blocks of rows packed, each weight slice reused
# from L1 by every row of a block; its conv stem is the same product with each output
# position's three input rows read in place (no im2col copy). Measured on a Zen 3 (AVX2), the
# whole tiny encoder a window: 420-461 -> 353-437 ms min, 499-520 -> 414-479 median (three
# alternated pairs); the stem alone 50 -> 19 ms (MAX's conv2d ran at ~40 GFLOP/s there).

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import erf
from std.memory import alloc, memmove
from std.sys.info import num_physical_cores

from .registers import GEMM_SUM_REGISTERS, block_columns


comptime PANEL = 64  # output columns per panel: 4 AVX-512 vectors of float32
comptime REG_ROWS = 6  # rows of a full block (a prefill's prompt rows)
# Many rows (the encoder's 1500 a window and its conv stem) take the blocked path, `gemm`: a
# weight slice of KC k's x NR columns stays in L1 (16 KB of cache lines: an AVX2 slice of 16
# float16 columns fills half of each 64-byte line) while every micro-panel of an A block of MC
# rows (packed, in L2) passes over it. NR: 16 columns with AVX2, 32 with AVX-512 (see
# `registers.GEMM_SUM_REGISTERS`).
comptime NR = block_columns[REG_ROWS, PANEL, GEMM_SUM_REGISTERS]()
comptime KC = 16384 // max(64, NR * 2)
comptime MC = 96
comptime GEMM_ROWS = 256  # a prompt's prefill (up to ~224 rows) keeps the block path


@extensibility.register("maxwhisper_linear_f16")
struct LinearF16:
    """Y (R, N) float32 = x (R, K) float32 @ W (K, N) + bias, W packed (P, K, 64) float16."""

    @staticmethod
    def execute[target: StaticString, share_bytes: Int](
        y: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        weight: InputTensor[dtype=DType.float16, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_linear_f16 is a CPU kernel")
        run_linear[False, share_bytes](y, x, weight, bias)


@extensibility.register("maxwhisper_linear_f16_gelu")
struct LinearF16Gelu:
    """GELU(x @ W + bias) (exact, erf-based GELU as Whisper's MLP), W packed as above."""

    @staticmethod
    def execute[target: StaticString, share_bytes: Int](
        y: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        weight: InputTensor[dtype=DType.float16, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_linear_f16_gelu is a CPU kernel")
        run_linear[True, share_bytes](y, x, weight, bias)


@always_inline
def finish[gelu: Bool, cols: Int](acc: SIMD[DType.float32, cols], b: SIMD[DType.float32, cols]
                                  ) -> SIMD[DType.float32, cols]:
    var v = acc + b
    comptime if gelu:
        return v * 0.5 * (1.0 + erf(v * 0.7071067811865476))
    return v


@always_inline
def add_products[rows: Int, cols: Int](
    mut acc: Array[SIMD[DType.float32, cols], rows],
    weights: Pointer[Float16, _],
    a: Pointer[Float32, _],
    k_count: Int,
    k_stride: Int,
    row_stride: Int,
):
    """The micro-kernel both paths share: acc[i] += a[i, k] * W[k, :cols] for k in order, the
    weights' rows PANEL apart (a panel or a slice of one), row i's k-th value at
    a[k * k_stride + i * row_stride]. One expression for both paths keeps their sums the same
    bits."""
    for k in range(k_count):
        var w = weights.unsafe_load[width=cols](k * PANEL).cast[DType.float32]()
        comptime for i in range(rows):
            acc[i] += w * a.unsafe_load(k * k_stride + i * row_stride)


def run_linear[gelu: Bool, share_bytes: Int](
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
    if rows >= GEMM_ROWS:
        gemm[gelu](out, out, OutputLayout.matrix(n_dim), xp,
                   RowsOf(rows, rows, rows, k_dim, 1, 1), wp, panels, bp)
        return
    # `share_bytes` (`settings.projection_share_kb`, 256 KB by default): work up to this runs
    # on one core, more is shared between the cores, so every layer projection of a decoding
    # step is. Sharing also keeps the second core's MAX worker busy through the step: an idle
    # worker soon sleeps, and waking it for the next shared kernel (the cross-attention, the
    # output projection) costs tens of microseconds in a virtual machine (a cross-core wake-up
    # round trip measured 45-90 us on the Intel guest). Measured there, the 229-s clip greedy,
    # three alternated pairs of processes: a step 3.31-4.20 ms with 2 MB (tiny's 0.3-1.2 MB
    # layer projections each on one core) against 2.97-3.20 ms with 256 KB. A step called back
    # to back, with no host work between steps, had shown no difference (session 18): the
    # second worker had no time to fall asleep. With AVX2 (a Zen 3) 256 KB had won as well: a
    # five-beam step 14.7 -> 13.8 ms median.
    var work_bytes = panels * k_dim * PANEL * 2 + rows * k_dim * panels * PANEL // 8
    var workers = min(num_physical_cores(), panels) if work_bytes > share_bytes else 1

    @always_inline
    def block[rb: Int, cols: Int](r: Int, panel_index: Int, c0: Int) {imm}:
        # rb rows x `cols` columns (from column c0 of the panel) of sums in registers
        var n = panel_index * PANEL + c0
        var panel = wp.unsafe_offset(panel_index * k_dim * PANEL + c0)
        var acc = Array[SIMD[DType.float32, cols], rb](fill=0)
        # row i's k-th value at x[(r + i) * k_dim + k]: in place
        add_products(acc, panel, xp.unsafe_offset(r * k_dim), k_dim, 1, k_dim)
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


@extensibility.register("maxwhisper_conv3_gelu_f16")
struct Conv3GeluF16:
    """GELU(conv1d(x)) with kernel 3, padding 1 and `stride`, channels last: x (B, L, C) ->
    y (B, L_out, N), the filter packed as a (3 C, N) matrix (row tap * C + c) in panels."""

    @staticmethod
    def execute[target: StaticString, stride: Int](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        x: InputTensor[dtype=DType.float32, rank=3, ...],
        weight: InputTensor[dtype=DType.float16, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_conv3_gelu_f16 is a CPU kernel")
        var batch = x.dim_size(0)
        var length = x.dim_size(1)
        var channels = x.dim_size(2)
        var out_length = y.dim_size(1)
        var n_dim = y.dim_size(2)
        var panels = weight.dim_size(0)
        if (y.dim_size(0) != batch or out_length != (length - 1) // stride + 1
                or weight.dim_size(1) != 3 * channels or weight.dim_size(2) != PANEL
                or panels * PANEL != n_dim or bias.dim_size(0) != n_dim):
            raise Error("maxwhisper_conv3_gelu_f16: x (B, L, C), weight (P, 3 C, 64), "
                        + "bias (64 P), y (B, (L - 1) / stride + 1, 64 P)")
        var rows_in = RowsOf(batch * out_length, out_length, length, channels, 3, stride)
        var yp = y.unsafe_ptr()
        gemm[True](yp, yp, OutputLayout.matrix(n_dim), x.unsafe_ptr(), rows_in,
                   weight.unsafe_ptr(), panels, bias.unsafe_ptr())


@extensibility.register("maxwhisper_cross_kv_f16")
struct CrossKVF16:
    """Every decoder layer's cross-attention keys^T (L, B, H, hd, A) and values (L, B, H, A, hd)
    of the audio features x (B, A, d): one product with the layers' key and value matrices side
    by side (layer l's keys, then its values: 2 L H hd columns, packed in panels), each sum
    written straight into its place in those layouts. The graph's split, per-head transposes
    and stack of the (B, A, 2 L d) product cost ~20-35 ms a tiny window on a Zen 3 (AVX2)."""

    @staticmethod
    def execute[target: StaticString](
        keys_t: OutputTensor[dtype=DType.float32, rank=5, ...],
        values: OutputTensor[dtype=DType.float32, rank=5, ...],
        x: InputTensor[dtype=DType.float32, rank=3, ...],
        weight: InputTensor[dtype=DType.float16, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("maxwhisper_cross_kv_f16 is a CPU kernel")
        var windows = x.dim_size(0)
        var positions = x.dim_size(1)
        var layers = keys_t.dim_size(0)
        var heads = keys_t.dim_size(2)
        var head_width = keys_t.dim_size(3)
        var n_dim = 2 * layers * heads * head_width
        var panels = weight.dim_size(0)
        if (keys_t.dim_size(1) != windows or keys_t.dim_size(4) != positions
                or values.dim_size(0) != layers or values.dim_size(1) != windows
                or values.dim_size(2) != heads or values.dim_size(3) != positions
                or values.dim_size(4) != head_width or head_width % NR != 0
                or weight.dim_size(1) != x.dim_size(2) or weight.dim_size(2) != PANEL
                or panels * PANEL != n_dim or bias.dim_size(0) != n_dim):
            raise Error("maxwhisper_cross_kv_f16: x (B, A, d), weight (P, d, 64) with 64 P = "
                        + "2 L H hd, bias (64 P), keys^T (L, B, H, hd, A), values "
                        + "(L, B, H, A, hd), hd a multiple of " + String(NR))
        var rows = windows * positions
        var layout = OutputLayout(n_dim, positions, windows, heads, head_width)
        gemm[False](keys_t.unsafe_ptr(), values.unsafe_ptr(), layout, x.unsafe_ptr(),
                    RowsOf(rows, rows, rows, x.dim_size(2), 1, 1), weight.unsafe_ptr(), panels,
                    bias.unsafe_ptr())


@fieldwise_init
struct OutputLayout(TrivialRegisterPassable):
    """Where `gemm` puts a row's sums: a row-major (rows, n_dim) matrix at y (`positions` 0), or
    the cross-attention layouts, keys^T at y and values at v: row b A + a is position a of
    window b, column n is layer n // (2 d)'s key (its first d columns) or value (the next d)
    column of head (n % d) // hd. A value's NR columns lie side by side (`store`); a key's lie
    A apart (K^T), so `gemm` stages an A block's keys and writes each column's positions as
    one run (`store_keys`)."""

    var n_dim: Int
    var positions: Int
    var windows: Int
    var heads: Int
    var head_width: Int

    @staticmethod
    def matrix(n_dim: Int) -> Self:
        return Self(n_dim, 0, 1, 1, 1)

    @always_inline
    def _head(self, row: Int, n: Int) -> Int:
        # the (layer, window, head) block of row `row`, column n
        var d = self.heads * self.head_width
        return ((n // (2 * d)) * self.windows + row // self.positions) * self.heads \
            + (n % d) // self.head_width

    @always_inline
    def is_key(self, n: Int) -> Bool:
        return self.positions != 0 and (n // (self.heads * self.head_width)) % 2 == 0

    @always_inline
    def store(self, y: Pointer[Float32, MutAnyOrigin], v: Pointer[Float32, MutAnyOrigin],
              row: Int, n: Int, sums: SIMD[DType.float32, NR]):
        """Row `row`'s sums of columns n .. n + NR of the matrix, or of a value."""
        if self.positions == 0:
            y.unsafe_store[width=NR](row * self.n_dim + n, sums)
            return
        var a = row % self.positions
        v.unsafe_store[width=NR](
            (self._head(row, n) * self.positions + a) * self.head_width + n % self.head_width,
            sums)

    def store_keys(self, y: Pointer[Float32, MutAnyOrigin], staged: Pointer[Float32, _], n: Int,
                   row0: Int, count: Int):
        """Key columns n .. n + NR of rows row0 .. row0 + count, staged column by column (column
        n + c's rows at staged[c * MC ..]): each column's positions as runs, one per window."""
        for c in range(NR):
            var row = row0
            while row < row0 + count:
                var a = row % self.positions
                var run = min(row0 + count - row, self.positions - a)
                var j = n % self.head_width + c
                var dst = y.unsafe_offset((self._head(row, n) * self.head_width + j)
                                          * self.positions + a)
                memmove(dest=dst, src=staged.unsafe_offset(c * MC + row - row0), count=run)
                row += run


@fieldwise_init
struct RowsOf(TrivialRegisterPassable):
    """Where the rows of the GEMM's left operand lie in x: row j is output position
    r = j % per of window j // per, the `taps` x `channels` values starting at input position
    r * stride - taps // 2 of that window (channels last; zeros outside the window's `length`
    positions). A plain matrix is one window of `rows` rows of one tap."""
    var rows: Int
    var per: Int  # output rows of a window
    var length: Int  # input positions of a window
    var channels: Int
    var taps: Int
    var stride: Int

    def k_dim(self) -> Int:
        return self.taps * self.channels


def gemm[gelu: Bool](
    yp: Pointer[Float32, MutAnyOrigin],
    vp: Pointer[Float32, MutAnyOrigin],
    layout: OutputLayout,
    xp: Pointer[Float32, ImmutAnyOrigin],
    a_rows: RowsOf,
    wp: Pointer[Float16, ImmutAnyOrigin],
    panels: Int,
    bp: Pointer[Float32, ImmutAnyOrigin],
) raises:
    # Blocked like a BLAS GEMM. Each core takes a share of the rows; an A block of MC rows x KC
    # k's is packed six rows interleaved (a micro-panel's six values of one k side by side, so
    # the conv stem's overlapping windows need no im2col copy), and each panel's slice of KC
    # weight rows and NR columns stays in L1 while the block's micro-panels pass over it. The
    # sums are carried between k blocks (`carry`), so each runs over k in order with the same
    # operations as `run_linear`'s blocks: the same bits. The final sums go to yp (and vp) where
    # `layout` places them.
    var rows = a_rows.rows
    var k_dim = a_rows.k_dim()
    var window_values = a_rows.length * a_rows.channels
    var micro_panels = (rows + REG_ROWS - 1) // REG_ROWS
    var workers = min(num_physical_cores(), micro_panels)
    comptime MP = MC // REG_ROWS  # micro-panels of an A block

    @always_inline
    def pack(packed: Pointer[Float32, MutUntrackedOrigin], m0: Int, m1: Int, k0: Int, kc: Int
             ) {imm}:
        for m in range(m0, m1):
            var dst = packed.unsafe_offset((m - m0) * kc * REG_ROWS)
            comptime for i in range(REG_ROWS):
                var row = m * REG_ROWS + i
                var lo = kc  # the k's (of k0 ..) that lie inside the row's window
                var hi = kc
                var src = xp
                if row < rows:
                    var window = row // a_rows.per
                    var start = ((row % a_rows.per) * a_rows.stride - a_rows.taps // 2) \
                        * a_rows.channels + k0
                    lo = min(kc, max(0, -start))
                    hi = max(lo, min(kc, window_values - start))
                    src = xp.unsafe_offset(window * window_values + start)
                for k in range(lo):
                    dst.unsafe_store(k * REG_ROWS + i, 0)
                for k in range(lo, hi):
                    dst.unsafe_store(k * REG_ROWS + i, src.unsafe_load(k))
                for k in range(hi, kc):
                    dst.unsafe_store(k * REG_ROWS + i, 0)

    # Sums between k blocks: in y itself for a plain matrix (an A block's rows lie contiguous
    # there); for the cross-attention layouts in a scratch block of MC rows, so y and v are
    # written once, with the final sums. Keys go through `staged` and out as one run of
    # positions a column (`store_keys`): stored one by one, 16 addresses A apart, they cost
    # ~22 ms a tiny window on a Zen 3 (measured with contiguous stores in their place).
    var in_place = layout.positions == 0 or k_dim <= KC
    var heads = layout.positions != 0

    def work(worker: Int) {imm}:
        var packed = alloc[Float32](MC * KC, alignment=64)
        var staged = alloc[Float32](NR * MC if heads else 1, alignment=64)  # (store_keys)
        var scratch = alloc[Float32](1 if in_place else MC * layout.n_dim, alignment=64)
        var carry: Pointer[Float32, MutAnyOrigin] = yp
        if not in_place:
            carry = scratch.unsafe_origin_cast[MutAnyOrigin]()
        var m_end = micro_panels * (worker + 1) // workers
        var m0 = micro_panels * worker // workers
        while m0 < m_end:
            var m1 = min(m0 + MP, m_end)
            var row0 = m0 * REG_ROWS  # the A block's first row
            var first_row = 0 if in_place else row0  # row 0 of carry
            for k0 in range(0, k_dim, KC):
                var kc = min(KC, k_dim - k0)
                pack(packed, m0, m1, k0, kc)
                var first = k0 == 0
                var last = k0 + kc == k_dim
                for p in range(panels):
                    comptime for c0 in range(0, PANEL, NR):
                        var n = p * PANEL + c0
                        var slice = wp.unsafe_offset((p * k_dim + k0) * PANEL + c0)
                        var b = bp.unsafe_load[width=NR](n)
                        var keys = last and layout.is_key(n)
                        for m in range(m0, m1):
                            var r = m * REG_ROWS
                            var live = min(REG_ROWS, rows - r)
                            var acc = Array[SIMD[DType.float32, NR], REG_ROWS](fill=0)
                            if not first:
                                comptime for i in range(REG_ROWS):
                                    if i < live:
                                        acc[i] = carry.unsafe_load[width=NR](
                                            (r + i - first_row) * layout.n_dim + n)
                            # row i's k-th value at packed[k * REG_ROWS + i] (interleaved)
                            var a = packed.unsafe_offset((m - m0) * kc * REG_ROWS)
                            add_products(acc, slice, a, kc, REG_ROWS, 1)
                            comptime for i in range(REG_ROWS):
                                if i < live:
                                    if keys:
                                        var sums = finish[gelu, NR](acc[i], b)
                                        comptime for c in range(NR):
                                            staged.unsafe_store(c * MC + r + i - row0, sums[c])
                                    elif last:
                                        layout.store(yp, vp, r + i, n, finish[gelu, NR](acc[i], b))
                                    else:
                                        carry.unsafe_store[width=NR](
                                            (r + i - first_row) * layout.n_dim + n, acc[i])
                        if keys:
                            layout.store_keys(yp, staged, n, row0, min(m1 * REG_ROWS, rows) - row0)
            m0 = m1
        packed.unsafe_free()
        staged.unsafe_free()
        scratch.unsafe_free()

    sync_parallelize(work, workers)
