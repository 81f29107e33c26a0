# How wide a kernel's register block is, from the target's vector registers.
#
# The projections' and attentions' kernels keep a block of `rows` rows x `cols` float32 sums in
# vector registers while weights, keys or values stream through, so each loaded vector serves
# every row of the block. The sums may take three quarters of the register file, the rest
# holding the streamed vector and the rows' broadcast inputs: 24 of AVX-512's 32 registers of
# 16 floats, 12 of AVX2's 16 registers of 8. A wider block spills its sums to the stack on every
# step: six rows x 64 sums (48 AVX2 registers) ran the encoder's attention at 78-85 ms a tiny
# block on a Zen 3, six rows x 16 sums at 43-53. A narrower block covers its columns in passes;
# each sum still runs over the same terms in the same order, so the outputs are the same bits
# whatever the block.

from std.sys.info import simd_width_of


comptime LANES = simd_width_of[DType.float32]()  # float32 lanes a register holds: 16 AVX-512, 8 AVX2
comptime SUM_REGISTERS = 24 if LANES >= 16 else 12  # the registers a block's sums may take
# A GEMM micro-kernel's sums, on every target: its inner loop also holds the widened weight
# vectors and the broadcast inputs of every row, and with 24 sums on AVX-512 (six rows x 64)
# the compiled loop ran at half the FMA rate. Measured on an Intel Xeon (AVX-512), the
# encoder's (1500, 384) @ (384, 1536) on `linear_f16`'s GEMM: six rows x 64 sums 130-136
# GFLOP/s, 12 rows x 32 120-132, six rows x 32 212-229, eight rows x 32 215-221, four rows x
# 64 206 (MAX's matmul 240-270, numpy 305). With AVX2 the same budget keeps six rows x 16.
comptime GEMM_SUM_REGISTERS = 12


def block_columns[rows: Int, widest: Int, budget: Int = SUM_REGISTERS]() -> Int:
    """The sums a block row holds: `widest`, halved until `rows` rows of them fit in `budget`
    registers (at least one register a row). AVX-512: 64 for up to six rows. AVX2: 64 for
    one row, 32 for two or three, 16 for four to six. With GEMM_SUM_REGISTERS, six rows: 32
    (AVX-512) or 16 (AVX2)."""
    var cols = widest
    while cols > LANES and rows * (cols // LANES) > budget:
        cols //= 2
    return cols
